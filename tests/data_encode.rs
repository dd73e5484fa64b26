//! Encoding on SmolLM2-135M-Instruct's real tokenizer and chat template, and on the real chat templates
//! of the other families Loft supports (tests/fixtures/templates): the tokens that carry loss are exactly
//! the assistant's replies, each with its end-of-turn token — checked by decoding them.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use loft::engine::chat::{ChatMessage, ChatTemplate};
use loft::engine::data::{
    encode_conversation, encode_dataset, validate_file, Dataset, EncodeOptions, ErrorKind, Format,
    Overlong, TrainOn, ValidateOptions, WarningKind,
};
use tokenizers::Tokenizer;

const END: &str = "<|im_end|>";

fn smollm2() -> (Tokenizer, ChatTemplate) {
    let dir = support::fixtures().join("smollm2");
    let tokenizer = loft::engine::tokenizer::load_tokenizer_json(&dir.join("tokenizer.json"))
        .expect("tokenizer.json");
    let template = ChatTemplate::from_model_files(
        Some(&dir.join("tokenizer_config.json")),
        Some(&dir.join("chat_template.jinja")),
    )
    .expect("chat template");
    (tokenizer, template)
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

/// The decoded runs of consecutive trained tokens.
fn trained_runs(tokenizer: &Tokenizer, ids: &[u32], mask: &[bool]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for (&id, &m) in ids.iter().zip(mask) {
        if m {
            current.push(id);
        } else if !current.is_empty() {
            runs.push(tokenizer.decode(&current, false).expect("decode"));
            current.clear();
        }
    }
    if !current.is_empty() {
        runs.push(tokenizer.decode(&current, false).expect("decode"));
    }
    runs
}

fn assistant_runs(messages: &[ChatMessage]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.role == "assistant")
        .map(|m| format!("{}{END}", m.content))
        .collect()
}

/// Trained runs equal the assistant replies. A reply that starts with whitespace may share its first
/// token with the newline before it (BPE merges "\n  "): such a token overlaps the reply, so it is trained
/// (as TRL's assistant masks do) and its run starts with that extra whitespace.
fn assert_runs(got: Vec<String>, want: Vec<String>) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        let ok = g == w
            || (w.starts_with(char::is_whitespace)
                && g.ends_with(w.as_str())
                && g[..g.len() - w.len()].trim().is_empty());
        assert!(ok, "trained {g:?}, expected {w:?}");
    }
}

/// Encode and check: ids are the tokenized rendering, and the trained runs are the assistant replies.
fn check(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
) -> (Vec<u32>, Vec<bool>) {
    let (ids, mask) =
        encode_conversation(messages, tokenizer, template, TrainOn::Assistant).expect("encode");
    let text = template.render(messages, false).expect("render");
    let plain = tokenizer.encode(text.as_str(), false).expect("tokenize");
    assert_eq!(ids, plain.get_ids(), "ids must be the tokenized rendering");
    assert_eq!(ids.len(), mask.len());
    assert_runs(
        trained_runs(tokenizer, &ids, &mask),
        assistant_runs(messages),
    );
    // Everything else — system, user turns, role headers, the newline after <|im_end|> — is masked.
    let masked: String = ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| !m)
        .map(|(&id, _)| tokenizer.decode(&[id], false).expect("decode"))
        .collect();
    for m in messages.iter().filter(|m| m.role != "assistant") {
        assert!(
            masked.contains(&m.content),
            "{} turn not masked: {masked}",
            m.role
        );
    }
    (ids, mask)
}

#[test]
fn single_turn_chat_trains_on_the_answer_and_its_end_token() {
    let (tokenizer, template) = smollm2();
    let messages = [
        msg("user", "What is the capital of France?"),
        msg("assistant", "The capital of France is Paris."),
    ];
    let (ids, mask) = check(&tokenizer, &template, &messages);
    // transformers' ids for the prompt part (tests/fixtures/smollm2/reference.json).
    let reference = support::smollm2_reference();
    let prompt: Vec<u32> = reference["prompts"][0]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&ids[..prompt.len()], &prompt[..]);
    assert!(
        mask[..prompt.len()].iter().all(|&m| !m),
        "the prompt must be masked"
    );
    // The greedy answer transformers produced is what the answer tokens are.
    let greedy: Vec<u32> = reference["prompts"][0]["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let trained: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| m)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(trained, greedy);
    // The final newline after <|im_end|> is the last token, and it is not trained.
    assert_eq!(
        tokenizer.decode(&ids[ids.len() - 1..], false).unwrap(),
        "\n"
    );
    assert!(!mask[mask.len() - 1]);
}

#[test]
fn multi_turn_with_system_trains_on_every_assistant_turn() {
    let (tokenizer, template) = smollm2();
    let messages = [
        msg("system", "You are a terse support agent."),
        msg("user", "My order is late."),
        msg("assistant", "Sorry! What's your order number?"),
        msg("user", "LC-48213"),
        msg("assistant", "Thanks. It ships tomorrow."),
        msg("user", "Great, thank you!"),
        msg("assistant", "You're welcome.\n\nAnything else?"),
    ];
    check(&tokenizer, &template, &messages);
}

#[test]
fn a_trailing_user_turn_and_unusual_text_are_handled() {
    let (tokenizer, template) = smollm2();
    let messages = [
        msg("user", "Répète: «ça va?» 🙂"),
        msg("assistant", "  «ça va?» 🙂 — with spaces around  "),
        msg("user", "and <|im_start|> inside text"),
    ];
    check(&tokenizer, &template, &messages);
}

#[test]
fn a_conversation_that_starts_with_the_assistant_is_masked_exactly() {
    // SmolLM2's template adds its default system prompt only when the first message is not a system one.
    let (tokenizer, template) = smollm2();
    let messages = [
        msg("assistant", "Hi! How can I help?"),
        msg("user", "Tell me a joke."),
        msg(
            "assistant",
            "Why did the coffee file a police report? It got mugged.",
        ),
    ];
    check(&tokenizer, &template, &messages);
}

#[test]
fn training_on_all_tokens() {
    let (tokenizer, template) = smollm2();
    let messages = [msg("user", "Hi"), msg("assistant", "Hello!")];
    let (ids, mask) = encode_conversation(&messages, &tokenizer, &template, TrainOn::All).unwrap();
    assert_eq!(ids.len(), mask.len());
    assert!(mask.iter().all(|&m| m));
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("samples")
        .join(name)
}

fn load(path: &Path) -> Dataset {
    let cancel = AtomicBool::new(false);
    let v =
        validate_file(path, &ValidateOptions::default(), &mut |_| {}, &cancel).expect("validate");
    assert!(v.report.is_usable(), "{:#?}", v.report.errors);
    v.dataset
}

#[test]
fn chat_and_instruction_samples_encode_with_exact_masks() {
    let (tokenizer, template) = smollm2();
    for name in ["support-chat.jsonl", "support-instruction.json"] {
        let dataset = load(&sample(name));
        let cancel = AtomicBool::new(false);
        let mut stages = Vec::new();
        let encoded = encode_dataset(
            &dataset,
            &tokenizer,
            &template,
            &EncodeOptions::default(),
            &mut |p| stages.push(p),
            &cancel,
        )
        .expect("encode");
        assert!(!stages.is_empty());
        assert_eq!(encoded.examples.len(), dataset.len(), "{name}");
        assert!(
            encoded.errors.is_empty() && encoded.warnings.is_empty(),
            "{name}"
        );
        for (example, conversation) in encoded.examples.iter().zip(&dataset.conversations) {
            assert_eq!(example.row, conversation.row);
            assert_eq!(
                trained_runs(&tokenizer, &example.ids, &example.mask),
                assistant_runs(&conversation.messages),
                "{name} row {}",
                conversation.row
            );
        }
        let s = &encoded.summary;
        assert_eq!(
            (s.over_max_seq_len, s.dropped, s.truncated, s.failed),
            (0, 0, 0, 0)
        );
        assert!(s.trained_tokens > 0 && s.trained_tokens < s.tokens);
        assert!(s.padding_waste.unwrap() <= s.padding_waste_random_order.unwrap());
    }
    // Instruction rows are system + user (instruction, blank line, input) + assistant.
    let dataset = load(&sample("support-instruction.json"));
    assert_eq!(dataset.format, Some(Format::Instruction));
    let with_input = dataset
        .conversations
        .iter()
        .find(|c| c.messages[1].content.contains("\n\nConversation so far:"))
        .expect("a row with input");
    assert_eq!(with_input.messages.len(), 3);
    check(&tokenizer, &template, &with_input.messages);
}

#[test]
fn overlong_rows_are_dropped_or_truncated() {
    let (tokenizer, template) = smollm2();
    let dataset = load(&sample("support-chat.jsonl"));
    let cancel = AtomicBool::new(false);
    let lengths: Vec<usize> = dataset
        .conversations
        .iter()
        .map(|c| {
            encode_conversation(&c.messages, &tokenizer, &template, TrainOn::Assistant)
                .unwrap()
                .0
                .len()
        })
        .collect();
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let max = sorted[sorted.len() / 2];
    let over = lengths.iter().filter(|&&n| n > max).count();
    assert!(over > 0);

    let options = EncodeOptions {
        max_seq_len: max,
        ..EncodeOptions::default()
    };
    let dropped = encode_dataset(
        &dataset,
        &tokenizer,
        &template,
        &options,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert_eq!(dropped.summary.over_max_seq_len, over);
    assert_eq!(dropped.summary.dropped, over);
    assert_eq!(dropped.examples.len(), dataset.len() - over);
    assert!(dropped.examples.iter().all(|e| e.len() <= max));
    let too_long: Vec<_> = dropped
        .warnings
        .iter()
        .filter(|w| w.kind == WarningKind::TooLong)
        .collect();
    assert_eq!(too_long.len(), over);
    assert!(
        too_long[0].message.contains("left out"),
        "{}",
        too_long[0].message
    );

    let options = EncodeOptions {
        max_seq_len: max,
        overlong: Overlong::Truncate,
        ..EncodeOptions::default()
    };
    let cut = encode_dataset(
        &dataset,
        &tokenizer,
        &template,
        &options,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert_eq!(cut.summary.truncated, over);
    assert_eq!(cut.examples.len(), dataset.len());
    for (example, &full) in cut.examples.iter().zip(&lengths) {
        assert_eq!(example.len(), full.min(max));
        assert_eq!(example.truncated, full > max);
    }

    // A limit so small that no answer token is left: those rows are left out, and said so.
    let options = EncodeOptions {
        max_seq_len: 8,
        overlong: Overlong::Truncate,
        ..EncodeOptions::default()
    };
    let none = encode_dataset(
        &dataset,
        &tokenizer,
        &template,
        &options,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert!(none.examples.is_empty());
    assert!(none
        .warnings
        .iter()
        .any(|w| w.kind == WarningKind::NothingToLearn));
}

fn custom_template(source: &str) -> (tempfile::TempDir, ChatTemplate) {
    let dir = tempfile::tempdir().unwrap();
    let config =
        serde_json::json!({"bos_token": "<|im_start|>", "eos_token": END, "chat_template": source});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let template =
        ChatTemplate::from_model_files(Some(&dir.path().join("tokenizer_config.json")), None)
            .unwrap();
    (dir, template)
}

#[test]
fn a_template_that_rewrites_earlier_turns_still_gets_exact_masks() {
    // Like Qwen3: only the last assistant turn gets an (empty) think block, so a conversation cut after an
    // earlier turn does not render as a prefix of the whole one.
    let (tokenizer, _) = smollm2();
    let (_dir, template) = custom_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    );
    let messages = [
        msg("user", "a"),
        msg("assistant", "first answer"),
        msg("user", "b"),
        msg("assistant", "second answer"),
    ];
    check(&tokenizer, &template, &messages);
}

#[test]
fn a_template_that_refuses_a_conversation_is_a_row_error() {
    let (tokenizer, _) = smollm2();
    let (_dir, template) = custom_template(
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let good = serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let bad = serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "hello"}]});
    std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
    let cancel = AtomicBool::new(false);
    let mut v = validate_file(&path, &ValidateOptions::default(), &mut |_| {}, &cancel).unwrap();
    let encoded = encode_dataset(
        &v.dataset,
        &tokenizer,
        &template,
        &EncodeOptions::default(),
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert_eq!(encoded.examples.len(), 1);
    assert_eq!(encoded.errors.len(), 1);
    let e = &encoded.errors[0];
    assert_eq!((e.kind, e.row), (ErrorKind::Template, Some(2)));
    assert!(e.message.contains("must alternate"), "{}", e.message);
    // The good row is trained on its answer and the eos the template writes after it, not on the role
    // header before it (this template has no generation prompt). " hello" is one token, space included.
    assert_eq!(
        trained_runs(
            &tokenizer,
            &encoded.examples[0].ids,
            &encoded.examples[0].mask
        ),
        [" hello<|im_end|>"]
    );
    v.report.add_encoding(&encoded);
    assert!(!v.report.is_usable());
    assert_eq!(v.report.usable_rows, 1);
    assert_eq!(v.report.error_counts[&ErrorKind::Template], 1);
    assert_eq!(v.report.stats.histogram.as_ref().unwrap().unit, "tokens");
}

#[test]
fn the_gguf_tokenizer_and_template_encode_the_same() {
    use loft::engine::source::ModelFiles;
    let files = ModelFiles::from_gguf(&support::smollm2_gguf()).expect("model files");
    let tools =
        loft::engine::data::load_text_tools(&files).expect("tokenizer and template from the GGUF");
    let (tokenizer, template) = smollm2();
    let messages = [
        msg("system", "Be brief."),
        msg("user", "How long does shipping take?"),
        msg("assistant", "Two to five business days."),
    ];
    let from_gguf = encode_conversation(
        &messages,
        &tools.tokenizer,
        &tools.template,
        TrainOn::Assistant,
    )
    .unwrap();
    let from_json =
        encode_conversation(&messages, &tokenizer, &template, TrainOn::Assistant).unwrap();
    assert_eq!(from_gguf, from_json);
    assert_eq!(tools.context_length, Some(8192));
}

/// A model family's real chat template (tests/fixtures/templates/<family>) with SmolLM2's real tokenizer,
/// to which the family's special tokens are added as special tokens — as the family's own tokenizer has
/// them, so markup such as `<|eot_id|>` is one token that an answer can never be found inside.
fn family(name: &str) -> (Tokenizer, ChatTemplate) {
    let (mut tokenizer, _) = smollm2();
    let (special, plain): (&[&str], &[&str]) = match name {
        // Qwen3 shares ChatML's <|im_start|> and <|im_end|> with SmolLM2; its think tags are added tokens.
        "qwen3" => (&[], &["<think>", "</think>"]),
        "llama3" => (
            &[
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            &[],
        ),
        "gemma3" => (&["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], &[]),
        "mistral" => (&["<s>", "</s>", "[INST]", "[/INST]"], &[]),
        other => panic!("no template fixture for {other}"),
    };
    let added = |tokens: &[&str], special: bool| -> Vec<tokenizers::AddedToken> {
        tokens
            .iter()
            .map(|t| tokenizers::AddedToken::from(*t, special))
            .collect()
    };
    tokenizer.add_special_tokens(&added(special, true));
    tokenizer.add_tokens(&added(plain, false));
    let dir = support::fixtures().join("templates").join(name);
    let template = ChatTemplate::from_model_files(
        Some(&dir.join("tokenizer_config.json")),
        Some(&dir.join("chat_template.jinja")),
    )
    .expect("template fixture");
    (tokenizer, template)
}

/// Encode, then check that the ids are the tokenized rendering and that the trained tokens decode to
/// exactly `expected` (one run per assistant turn: its text as the template writes it, and the
/// end-of-turn token). A run may start with whitespace the template writes before the answer when one
/// token holds both (" a" after Mistral's `[/INST]`); nothing else may be added or missing.
fn check_exact(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    expected: &[String],
) {
    let (ids, mask) = encode_conversation(messages, tokenizer, template, TrainOn::Assistant)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    let text = template.render(messages, false).expect("render");
    let plain = tokenizer.encode(text.as_str(), false).expect("tokenize");
    assert_eq!(ids, plain.get_ids(), "ids must be the tokenized rendering");
    let runs = trained_runs(tokenizer, &ids, &mask);
    assert_eq!(
        runs.len(),
        expected.len(),
        "trained {runs:?}, expected {expected:?} in {text:?}"
    );
    for (run, want) in runs.iter().zip(expected) {
        let extra = run.strip_suffix(want.trim_start());
        let ok = extra.is_some_and(|extra| {
            extra.trim().is_empty() && want.len() - want.trim_start().len() <= extra.len()
        });
        assert!(ok, "trained {run:?}, expected {want:?} in {text:?}");
    }
}

fn chat(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(role, content)| msg(role, content))
        .collect()
}

/// Answers that occur inside the markup around them: searching the rendering for them finds
/// `<|im_start|>`, `assistant`, `<|im_end|>` or `<think>` before the answer itself.
const SHORT_ANSWERS: [&str; 9] = ["a", "is", "end", "im", "think", "assistant", "s", "t", "\n"];

/// A conversation of `answers` as assistant turns, each after a user turn, behind a system message.
fn short_answer_chat(answers: &[&str]) -> Vec<ChatMessage> {
    let mut messages = vec![msg("system", "Answer in one word.")];
    for (i, answer) in answers.iter().enumerate() {
        messages.push(msg("user", &format!("Question {i}?")));
        messages.push(msg("assistant", answer));
    }
    messages
}

#[test]
fn qwen3_multi_turn_short_answers_train_exactly_the_answers() {
    let (tokenizer, template) = family("qwen3");
    // Qwen3 writes an empty think block into the last assistant turn only, and strips the newlines that
    // start that turn's answer, so each answer is tried in the middle and at the end.
    for (i, &answer) in SHORT_ANSWERS.iter().enumerate() {
        let last = SHORT_ANSWERS[(i + 1) % SHORT_ANSWERS.len()];
        let messages = short_answer_chat(&["a", answer, last]);
        let expected = [
            format!("a{END}"),
            format!("{answer}{END}"),
            format!("{}{END}", last.trim_start_matches('\n')),
        ];
        check_exact(&tokenizer, &template, &messages, &expected);
    }
    let text = template
        .render(&short_answer_chat(&["a", "is"]), false)
        .unwrap();
    assert!(
        text.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\nis<|im_end|>\n"),
        "the fixture is Qwen3's template: {text:?}"
    );
}

#[test]
fn qwen3_reasoning_is_trained_where_the_template_keeps_it() {
    let (tokenizer, template) = family("qwen3");
    let messages = chat(&[
        ("user", "2 + 2?"),
        ("assistant", "<think>\nTwo and two.\n</think>\n\n4"),
        ("user", "And 3 + 3?"),
        (
            "assistant",
            "<think>\nThree and three make six.\n</think>\n\nIt is 6.",
        ),
    ]);
    // Qwen3 drops the reasoning of turns before the last question, and keeps the last turn's, between
    // think tags it writes itself: the model learns the reasoning, the tags and the answer.
    let expected = [
        format!("4{END}"),
        format!("<think>\nThree and three make six.\n</think>\n\nIt is 6.{END}"),
    ];
    check_exact(&tokenizer, &template, &messages, &expected);
    // A short reasoning and answer, which the old search found inside the think tags.
    let messages = chat(&[("user", "q"), ("assistant", "<think>think</think>a")]);
    check_exact(
        &tokenizer,
        &template,
        &messages,
        &[format!("<think>\nthink\n</think>\n\na{END}")],
    );
}

#[test]
fn llama3_gemma3_and_mistral_templates_train_exactly_the_answers() {
    for (name, end) in [
        ("llama3", "<|eot_id|>"),
        ("gemma3", "<end_of_turn>"),
        ("mistral", "</s>"),
    ] {
        let (tokenizer, template) = family(name);
        let answers: Vec<&str> = SHORT_ANSWERS
            .iter()
            .copied()
            .chain(["  spaced answer  ", "model", "user", "INST", "s>"])
            .filter(|a| !a.trim().is_empty())
            .collect();
        let messages = short_answer_chat(&answers);
        // These templates trim each answer.
        let expected: Vec<String> = answers
            .iter()
            .map(|a| format!("{}{end}", a.trim()))
            .collect();
        check_exact(&tokenizer, &template, &messages, &expected);
    }
}

#[test]
fn a_template_that_rewrites_answers_or_drops_them_is_an_error_not_a_guess() {
    let (tokenizer, _) = smollm2();
    let messages = [msg("user", "hi"), msg("assistant", "hello")];
    let (_dir, shouting) = custom_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{{ m.content | upper }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}",
    );
    let err = encode_conversation(&messages, &tokenizer, &shouting, TrainOn::Assistant)
        .expect_err("the answer cannot be located");
    assert!(
        err.contains("changes the text of message 2 (assistant)")
            && err.contains("train on all tokens"),
        "{err}"
    );
    // Training on every token needs no answer spans.
    let (ids, mask) =
        encode_conversation(&messages, &tokenizer, &shouting, TrainOn::All).expect("all tokens");
    assert!(!ids.is_empty() && mask.iter().all(|&m| m));

    let (_dir, users_only) = custom_template(
        "{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}",
    );
    let err = encode_conversation(&messages, &tokenizer, &users_only, TrainOn::Assistant)
        .expect_err("the answer is not shown");
    assert!(err.contains("leaves out message 2 (assistant)"), "{err}");
}

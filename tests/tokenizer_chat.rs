//! The tokenizer Loft rebuilds from SmolLM2's GGUF metadata and the chat templates it finds, checked
//! against what transformers made of the same GGUF (tests/fixtures/smollm2, by
//! scripts/make_model_fixtures.py) and against SmolLM2's original tokenizer, which splits digits.

mod support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use loft::engine::chat::{ChatMessage, ChatTemplate, TemplateOrigin};
use loft::engine::tokenizer::{self, SpecialTokens};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::Tokenizer;

fn metadata(gguf: &Path) -> HashMap<String, Value> {
    let mut file = std::fs::File::open(gguf).expect("open the GGUF");
    Content::read(&mut file)
        .expect("read GGUF metadata")
        .metadata
}

fn fixture(name: &str) -> std::path::PathBuf {
    support::fixtures().join("smollm2").join(name)
}

fn fixture_tokenizer() -> Tokenizer {
    tokenizer::load_tokenizer_json(&fixture("tokenizer.json")).expect("fixture tokenizer.json")
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, true).expect("encode").get_ids().to_vec()
}

fn prompts() -> Vec<(Vec<ChatMessage>, String, Vec<u32>)> {
    let reference = support::smollm2_reference();
    let prompts = reference["prompts"].as_array().expect("prompts");
    prompts
        .iter()
        .map(|p| {
            let messages = serde_json::from_value(p["messages"].clone()).expect("messages");
            let text = p["text"].as_str().expect("text").to_string();
            let ids = serde_json::from_value(p["input_ids"].clone()).expect("input_ids");
            (messages, text, ids)
        })
        .collect()
}

/// Text that exercises the pre-tokenizer: code, digits, punctuation, accents, CJK, emoji, whitespace runs.
const SAMPLES: &[&str] = &[
    "fn main() {\n    let xs: Vec<u64> = vec![1, 22, 333, 4444];\n    println!(\"{:?}\", xs);\n}\n",
    "def f(a, b=2.5e-3):\n\treturn a ** b  # comment\r\n",
    "Prices: $1,234.56 on 2024-03-01 at 12:30pm; call +1 (555) 010-9999.",
    "héllo wörld — naïve café, Ærøskøbing, İstanbul, straße",
    "日本語のテキストと中文，还有한국어 문장.",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "tabs\t\tand   spaces    \n\n\nend  ",
    "   leading spaces, trailing spaces   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll say it's fine; we've done what you'd do. DON'T SHOUT",
    "https://example.com/path?q=a+b&x=%20#frag <b>bold</b> \\n \\t",
    "",
];

/// SmolLM2's own tokenizer.json splits digits before the byte-level step (as llama.cpp's "smollm"
/// pre-tokenizer does); transformers' GGUF converter drops that step. Only numerals outside 0-9
/// after a space notice the difference, since the vocabulary has no multi-digit tokens.
const NUMERALS: &str = "x² + y³ = z⁴, ½ of Ⅻ;  ٣٤٥ ①② ⅷ";

fn original_smollm2_tokenizer() -> Tokenizer {
    let mut t = fixture_tokenizer();
    let steps = vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ];
    t.with_pre_tokenizer(Some(Sequence::new(steps)));
    t
}

#[test]
fn gguf_tokenizer_matches_transformers_on_smollm2() {
    let gguf = support::smollm2_gguf();
    let md = metadata(&gguf);
    let ours = tokenizer::from_gguf(&gguf, &md).expect("tokenizer from GGUF");
    let reference = fixture_tokenizer();
    assert_eq!(
        ours.get_vocab_size(true),
        reference.get_vocab_size(true),
        "vocabulary size"
    );
    for (_, text, want) in prompts() {
        assert_eq!(ids(&ours, &text), want, "reference prompt {text:?}");
    }
    for text in SAMPLES {
        let got = ids(&ours, text);
        assert_eq!(got, ids(&reference, text), "sample {text:?}");
        let decoded = ours.decode(&got, false).expect("decode");
        assert_eq!(&decoded, text, "round trip");
    }
}

#[test]
fn gguf_tokenizer_splits_numerals_like_the_original_smollm2() {
    let gguf = support::smollm2_gguf();
    let ours = tokenizer::from_gguf(&gguf, &metadata(&gguf)).expect("tokenizer from GGUF");
    let original = original_smollm2_tokenizer();
    assert_eq!(ids(&ours, NUMERALS), ids(&original, NUMERALS));
    for text in SAMPLES {
        assert_eq!(ids(&ours, text), ids(&original, text), "sample {text:?}");
    }
    // The documented difference from transformers' converter: a space then a numeral like "½".
    assert_ne!(ids(&ours, NUMERALS), ids(&fixture_tokenizer(), NUMERALS));
}

#[test]
fn smollm2_special_tokens_and_no_bos() {
    let gguf = support::smollm2_gguf();
    let md = metadata(&gguf);
    let special = SpecialTokens::from_gguf(&md);
    assert_eq!(special.bos, Some(("<|im_start|>".to_string(), 1)));
    assert_eq!(special.eos, Some(("<|im_end|>".to_string(), 2)));
    assert_eq!(special.pad, Some(("<|im_end|>".to_string(), 2)));
    let ours = tokenizer::from_gguf(&gguf, &md).expect("tokenizer from GGUF");
    // tokenizer.ggml.add_bos_token is false for SmolLM2: nothing is added around the text.
    assert_eq!(
        ids(&ours, "Hi"),
        ours.encode("Hi", false).unwrap().get_ids()
    );
    let decoded = ours.decode(&[1, 3, 2], true).expect("decode");
    assert_eq!(decoded, "", "control tokens are special and skipped");
}

#[test]
fn smollm2_templates_render_like_transformers() {
    let gguf = support::smollm2_gguf();
    let md = metadata(&gguf);
    let from_gguf = ChatTemplate::from_gguf(&md, &SpecialTokens::from_gguf(&md));
    let from_folder = ChatTemplate::from_model_files(
        Some(&fixture("tokenizer_config.json")),
        Some(&fixture("chat_template.jinja")),
    )
    .expect("template from the fixture folder");
    for template in [&from_gguf, &from_folder] {
        assert_eq!(template.origin, TemplateOrigin::Model);
        assert_eq!(template.eos_token, "<|im_end|>");
        for (messages, text, _) in prompts() {
            assert_eq!(template.render(&messages, true).expect("render"), text);
        }
    }
    let without_prompt = from_gguf
        .render(&[ChatMessage::new("user", "Hi")], false)
        .expect("render");
    assert!(without_prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n"));
}

//! `loft validate`: exit status 0 (usable), 1 (errors), 2 (cannot be read), and the --json report.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn loft(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run loft");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("--json printed invalid JSON ({e}): {stdout}"))
}

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("samples")
        .join(name)
        .display()
        .to_string()
}

fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn clean_data_exits_0() {
    let (code, out, err) = loft(&["validate", &sample("support-chat.jsonl")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ usable: 105 rows"), "{out}");
    assert!(out.contains("turns per conversation"), "{out}");
    let (code, out, _) = loft(&["validate", &sample("support-instruction.json"), "--json"]);
    assert_eq!(code, 0);
    let report = json(&out);
    assert_eq!(report["format"], "instruction");
    assert_eq!(report["rows"], 105);
    assert_eq!(report["usable_rows"], 105);
    assert_eq!(report["errors"].as_array().unwrap().len(), 0);
    assert_eq!(report["warnings"].as_array().unwrap().len(), 0);
    assert!(report["stats"]["characters"]["median"].as_u64().unwrap() > 100);
    assert!(report["stats"]["tokens"].is_null());
    assert!(report["eval"].is_null());
}

#[test]
fn errors_exit_1_and_are_listed() {
    let body = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"bot\", \"content\": \"hello\"}]}\n{\"instruction\": \"x\", \"output\": \"y\"\n";
    let (_dir, path) = temp_file("data.jsonl", body.as_bytes());
    let (code, out, _) = loft(&["validate", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 1, messages[1].role: unknown role `bot`"),
        "{out}"
    );
    assert!(out.contains("line 2, column 35"), "{out}");
    let (code, out, _) = loft(&["validate", &path, "--json"]);
    assert_eq!(code, 1);
    let report = json(&out);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["row"], 1);
    assert_eq!(errors[0]["field"], "messages[1].role");
    assert!(errors[0]["column"].is_null());
    assert_eq!(errors[1]["line"], 2);
    assert_eq!(errors[1]["column"], 35);
    assert_eq!(report["usable_rows"], 0);
}

#[test]
fn warnings_alone_exit_0() {
    let row = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n";
    let (_dir, path) = temp_file("data.jsonl", row.repeat(3).as_bytes());
    let (code, out, _) = loft(&["validate", &path, "--json"]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    let kinds: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["duplicate", "duplicate", "few_rows"]);
    assert_eq!(report["warnings"][0]["rows"], serde_json::json!([2, 1]));
    assert_eq!(report["stats"]["duplicates_removed"], 2);
    assert_eq!(report["usable_rows"], 1);
}

#[test]
fn empty_data_exits_1() {
    let (_dir, path) = temp_file("data.jsonl", b"");
    let (code, out, _) = loft(&["validate", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("empty"), "{out}");
}

#[test]
fn unreadable_data_exits_2() {
    let (code, out, _) = loft(&["validate", "/no/such/file.jsonl"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be read"), "{out}");
    let (code, out, _) = loft(&["validate", "/no/such/file.jsonl", "--json"]);
    assert_eq!(code, 2);
    let report = json(&out);
    assert!(
        report["fatal"].as_str().unwrap().contains("No such file"),
        "{report}"
    );
    assert_eq!(report["errors"][0]["kind"], "unreadable");
    assert!(report["format"].is_null());
    let (_dir, path) = temp_file("data.jsonl", b"\x00\x01\x02binary");
    let (code, out, _) = loft(&["validate", &path, "--json"]);
    assert_eq!(code, 2);
    assert_eq!(json(&out)["errors"][0]["offset"], 0);
}

#[test]
fn eval_split_is_reported() {
    let (code, out, _) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--eval-split",
        "0.1",
        "--json",
    ]);
    assert_eq!(code, 0);
    let split = &json(&out)["stats"]["split"];
    assert_eq!(split["eval_rows"], 11);
    assert_eq!(split["train_rows"], 94);
    assert_eq!(split["seed"], 42);
    let (code, out, _) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--eval-split",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["stats"]["split"]["eval_rows"], 20);
    let (code, _, err) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--eval-split",
        "1.5",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("fraction"), "{err}");
}

#[test]
fn an_eval_file_that_overlaps_the_training_data_is_flagged() {
    let text = std::fs::read_to_string(sample("support-chat.jsonl")).unwrap();
    let eval: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    let (_dir, path) = temp_file("eval.jsonl", eval.as_bytes());
    let (code, out, _) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--eval-file",
        &path,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["stats"]["split"]["method"], "file");
    assert_eq!(report["stats"]["split"]["eval_rows"], 3);
    let overlap: Vec<&serde_json::Value> = report["eval"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "eval_overlap")
        .collect();
    assert_eq!(overlap.len(), 3);
    assert_eq!(overlap[0]["rows"], serde_json::json!([1, 1]));
}

#[test]
fn with_a_model_tokens_and_overlong_rows_are_reported() {
    let gguf = support::smollm2_gguf().display().to_string();
    let (code, out, err) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--model",
        &gguf,
        "--max-seq-len",
        "160",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    let tokens = &report["stats"]["tokens"];
    assert!(tokens["min"].as_u64().unwrap() > 50, "{tokens}");
    let encoding = &report["stats"]["encoding"];
    let over = encoding["over_max_seq_len"].as_u64().unwrap();
    assert!(over > 0 && over < 105, "{encoding}");
    assert_eq!(encoding["dropped"], over);
    assert_eq!(report["usable_rows"].as_u64().unwrap(), 105 - over);
    assert_eq!(report["stats"]["histogram"]["unit"], "tokens");
    assert_eq!(report["stats"]["histogram"]["limit"], 160);
    let too_long = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "too_long")
        .count();
    assert_eq!(too_long as u64, over);
    // Truncating instead keeps every row; the text report says what happened.
    let (code, out, _) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--model",
        &gguf,
        "--max-seq-len",
        "160",
        "--truncate",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{over} over it ({over} truncated)")),
        "{out}"
    );
    assert!(out.contains("✓ usable: 105 rows"), "{out}");
    // A model that does not exist: cannot validate.
    let (code, _, err) = loft(&[
        "validate",
        &sample("support-chat.jsonl"),
        "--model",
        "/no/such/model.gguf",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot use the model"), "{err}");
}

fn tiny_chat() -> String {
    support::fixtures().join("tiny-chat").display().to_string()
}

fn chat_row(roles: &[&str]) -> String {
    let messages: Vec<serde_json::Value> = roles
        .iter()
        .enumerate()
        .map(|(i, role)| serde_json::json!({"role": role, "content": format!("{role} turn {i}")}))
        .collect();
    serde_json::json!({ "messages": messages }).to_string()
}

/// The run.toml of the one run under `runs`.
fn run_spec(runs: &Path) -> toml::Table {
    let run = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("run.toml").is_file())
        .expect("a run folder");
    toml::from_str(&std::fs::read_to_string(run.join("run.toml")).unwrap()).unwrap()
}

#[test]
fn train_refuses_rows_the_chat_template_refuses_unless_told_to_skip_them() {
    // The tiny chat model with a template that, like Mistral's and Gemma's, refuses conversations whose
    // roles do not alternate. Validation alone only warns about such rows; the template is what fails.
    let model = support::copy_to_temp(&support::fixtures().join("tiny-chat"));
    std::fs::write(
        model.path().join("chat_template.jinja"),
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    )
    .unwrap();
    let good = chat_row(&["user", "assistant"]);
    let bad = chat_row(&["user", "user", "assistant"]);
    let rows = [&good, &good, &bad, &good, &bad, &good, &bad, &bad];
    let body: String = rows
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}\n", r.replace("turn", &format!("row {i} turn"))))
        .collect();
    let (dir, data) = temp_file("data.jsonl", body.as_bytes());
    let runs = dir.path().join("runs");
    let model = model.path().display().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            runs.to_str().unwrap(),
            "--eval-split",
            "0",
            "--max-steps",
            "1",
        ];
        args.extend_from_slice(extra);
        loft(&args)
    };

    let (code, out, err) = train(&[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("4 rows cannot be encoded"), "{err}");
    // The first few, by line, with the template's own words, and what to do.
    for line in ["line 3:", "line 5:", "line 7:"] {
        assert!(err.contains(line), "{line} in {err}");
    }
    assert!(err.contains("and 1 more"), "{err}");
    assert!(!err.contains("line 8:"), "{err}");
    assert!(err.contains("must alternate"), "{err}");
    assert!(err.contains("--skip-error-rows"), "{err}");
    assert!(err.contains("loft validate"), "{err}");

    // `loft validate --model` reports the same rows as errors.
    let (code, out, _) = loft(&["validate", &data, "--model", &model, "--json"]);
    assert_eq!(code, 1, "{out}");
    let report = json(&out);
    let rows: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "template")
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [3, 5, 7, 8]);

    // Skipping them is the user's explicit choice; the other four rows train.
    let (code, out, err) = train(&["--skip-error-rows"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("4 training and 0 evaluation examples"),
        "{err}"
    );
}

#[test]
fn validate_and_train_share_defaults_and_flag_names() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(sample("support-chat.jsonl")).unwrap();
    let eval = dir.path().join("eval.jsonl");
    let eval_rows: String = text.lines().skip(100).map(|l| format!("{l}\n")).collect();
    std::fs::write(&eval, eval_rows).unwrap();
    let eval = eval.display().to_string();
    let model = tiny_chat();
    let data = sample("support-chat.jsonl");

    // The defaults of `loft train` (TrainConfig's), not validate's own.
    let defaults = loft::engine::train::TrainConfig::default();
    let (code, out, err) = loft(&["validate", &data, "--model", &model, "--json"]);
    assert_eq!(code, 0, "{err}");
    let encoding = &json(&out)["stats"]["encoding"];
    assert_eq!(encoding["max_seq_len"], defaults.max_seq_len, "{encoding}");
    assert_eq!(
        encoding["batch_size"], defaults.micro_batch_size,
        "{encoding}"
    );
    assert_eq!(encoding["train_on"], "assistant");

    // Each flag has the name `loft train` uses, and the old spelling still works.
    for (all, eval_flag) in [
        ("--train-on-all-tokens", "--eval-data"),
        ("--train-on-all", "--eval-file"),
    ] {
        let (code, out, err) = loft(&[
            "validate", &data, "--model", &model, all, eval_flag, &eval, "--json",
        ]);
        assert_eq!(code, 0, "{all} {eval_flag}: {err}");
        let report = json(&out);
        assert_eq!(report["stats"]["encoding"]["train_on"], "all");
        assert_eq!(report["stats"]["split"]["method"], "file");
        assert_eq!(report["eval"]["usable_rows"], 5);
    }

    // `loft train` takes the same flags, old spellings included; run.toml records what it used.
    let runs = dir.path().join("runs");
    let (code, out, err) = loft(&[
        "train",
        "--model",
        &model,
        "--data",
        &data,
        "--train-on-all",
        "--eval-file",
        &eval,
        "--max-steps",
        "1",
        "--out",
        runs.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let spec = run_spec(&runs);
    assert_eq!(spec["train_on_all_tokens"].as_bool(), Some(true));
    assert_eq!(spec["eval_data"].as_str(), Some(eval.as_str()));
    assert_eq!(
        spec["train"]["max_seq_len"].as_integer(),
        Some(defaults.max_seq_len as i64)
    );
    assert_eq!(
        spec["train"]["micro_batch_size"].as_integer(),
        Some(defaults.micro_batch_size as i64)
    );
}

//! The `loft` binary as a user runs it: inspect, models, generate, and its answers to bad input.

mod support;

use std::process::{Command, Output};

fn loft(args: &[&str]) -> Output {
    loft_with_cache(args, &support::model_cache().join("empty-hf-cache"))
}

/// Run loft with its Hugging Face cache pointed at `cache`, so no test reads the user's own.
fn loft_with_cache(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME")
        .output()
        .expect("run loft")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_gguf_as_json() {
    let gguf = support::smollm2_gguf();
    let out = loft(&["inspect", "--model", gguf.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["arch"]["family"], "llama");
    assert_eq!(info["parameters"], 134_515_008u64);
    assert_eq!(info["context_length"], 8192);
    assert_eq!(info["vocab_size"], 49152);
    assert_eq!(info["chat_template"], "Model");
}

#[test]
fn inspect_folder_for_people() {
    let folder = support::fixtures().join("tiny/qwen3");
    let out = loft(&["inspect", "--model", folder.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("qwen3") && text.contains("parameters    131520"),
        "{text}"
    );
    assert!(
        text.contains("fallback"),
        "a folder without a template says ChatML is the fallback: {text}"
    );
}

#[test]
fn generate_streams_the_greedy_answer() {
    let gguf = support::smollm2_gguf();
    let out = loft(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "16",
        "--stats",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "The capital of France is Paris.");
    assert!(stderr(&out).contains("tokens/s"), "{}", stderr(&out));
}

#[test]
fn generate_with_sampling_is_reproducible_by_seed() {
    let gguf = support::smollm2_gguf();
    let run = |seed: &str| {
        let out = loft(&[
            "generate",
            "--model",
            gguf.to_str().unwrap(),
            "--prompt",
            "Tell me a fun fact.",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(run("7"), run("7"));
}

#[test]
fn bad_model_arguments_explain_what_to_do() {
    let out = loft(&["inspect", "--model", "/no/such/folder"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a Hugging Face repo id"),
        "{}",
        stderr(&out)
    );

    let tmp = tempfile::tempdir().unwrap();
    let pickle = tmp.path().join("model.pt");
    std::fs::write(&pickle, b"\x80\x02").unwrap();
    let out = loft(&[
        "generate",
        "--model",
        pickle.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pickle"), "{}", stderr(&out));

    let fake = tmp.path().join("broken.gguf");
    std::fs::write(&fake, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let out = loft(&["inspect", "--model", fake.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.gguf"), "{}", stderr(&out));

    let out = loft(&[
        "inspect",
        "--model",
        "someone/not-cached-model",
        "--offline",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in the Hugging Face cache"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn models_lists_the_hf_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-qwen3");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            support::fixtures().join("tiny/qwen3").join(f),
            snapshot.join(f),
        )
        .unwrap();
    }
    let out = loft_with_cache(&["models", "--json"], cache.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["repo_id"], "tiny-org/tiny-qwen3");
    assert_eq!(list[0]["model_type"], "qwen3");
    let out = loft_with_cache(
        &["inspect", "--model", "tiny-org/tiny-qwen3", "--offline"],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("qwen3"));
}

//! `loft estimate` as a user runs it: the memory a run needs by part, from a model's config.json
//! alone (7B/8B fixtures, never downloaded), from a GGUF with a dataset, and its answers to bad input.

#[path = "support/hub_server.rs"]
mod hub_server;
mod support;

use std::process::Command;

use serde_json::Value;

use support::loft;

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = loft(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("estimate --json prints JSON")
}

fn config(name: &str) -> String {
    support::fixtures()
        .join("configs")
        .join(name)
        .join("config.json")
        .to_string_lossy()
        .into_owned()
}

fn part(estimate: &Value, part: &str) -> u64 {
    estimate["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["part"] == part)
        .map(|p| p["bytes"].as_u64().unwrap())
        .sum()
}

const GB: f64 = 1e9;

/// Llama-3-8B on a 24 GB GPU, one row of 512 tokens with checkpointing: LoRA needs its 16 GB of
/// bf16 weights and more; QLoRA's 4-bit base brings it under half of that. The figures are those
/// people quote for these runs (LoRA ~18 GB, QLoRA ~7 GB).
#[test]
fn qlora_needs_far_less_than_lora_for_an_8b_model_on_cuda() {
    let common = [
        "estimate",
        "--model",
        &config("llama-3-8b"),
        "--device",
        "cuda",
        "--gpu-memory",
        "24",
        "--batch-size",
        "1",
        "--max-seq-len",
        "512",
        "--gradient-checkpointing",
    ];
    let with = |method: &str| {
        let mut args = common.to_vec();
        args.extend(["--method", method]);
        json(&args)
    };
    let (lora, qlora) = (with("lora"), with("qlora"));
    let total = |e: &Value| e["total"].as_u64().unwrap() as f64;
    assert!(
        (16.0 * GB..22.0 * GB).contains(&total(&lora)),
        "LoRA 8B: {lora}"
    );
    assert!(
        (5.0 * GB..10.0 * GB).contains(&total(&qlora)),
        "QLoRA 8B: {qlora}"
    );
    // 4.127 bits for each of the 6.98 B quantized weights.
    let nf4 = (part(&qlora, "base_weights") + part(&qlora, "quant_constants")) as f64;
    assert!((3.55 * GB..3.70 * GB).contains(&nf4), "{nf4}");
    assert_eq!(lora["verdict"], "fits");
    assert_eq!(lora["available"], 24_000_000_000u64);
    assert_eq!(
        part(&lora, "embeddings"),
        part(&lora, "lm_head"),
        "Llama 3 has its own lm_head"
    );
    // The total is the sum of the parts on the device.
    let sum: u64 = lora["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, lora["total"].as_u64().unwrap());
}

/// Llama-2-7B at 4 × 1024 without checkpointing does not fit a 24 GB GPU; the advice names the
/// changes that would make it fit, and checkpointing is one of them.
#[test]
fn a_run_that_does_not_fit_says_what_would() {
    let e = json(&[
        "estimate",
        "--model",
        &config("llama-2-7b"),
        "--device",
        "cuda",
        "--gpu-memory",
        "24",
    ]);
    assert_eq!(e["verdict"], "does_not_fit", "{e}");
    let advice = e["advice"].as_array().unwrap();
    let checkpointing = advice
        .iter()
        .find(|a| a["change"]["kind"] == "gradient_checkpointing")
        .expect("gradient checkpointing is advised");
    assert!(
        checkpointing["total"].as_u64().unwrap() < e["total"].as_u64().unwrap() / 2,
        "{checkpointing}"
    );
    let text = String::from_utf8_lossy(
        &loft(&[
            "estimate",
            "--model",
            &config("llama-2-7b"),
            "--device",
            "cuda",
            "--gpu-memory",
            "24",
        ])
        .stdout,
    )
    .into_owned();
    assert!(text.contains("does not fit"), "{text}");
    assert!(text.contains("Turn on gradient checkpointing"), "{text}");
}

/// Optimizer offload moves AdamW's moments out of the GPU's total into host memory.
#[test]
fn offloaded_optimizer_state_leaves_the_gpu() {
    let args = [
        "estimate",
        "--model",
        &config("llama-2-7b"),
        "--device",
        "cuda",
        "--gpu-memory",
        "80",
        "--method",
        "qlora",
    ];
    let plain = json(&args);
    let mut offload_args = args.to_vec();
    offload_args.push("--optimizer-offload");
    let offloaded = json(&offload_args);
    let moments = part(&plain, "optimizer_state");
    assert!(moments > 0);
    assert_eq!(offloaded["host_total"].as_u64().unwrap(), moments);
    let gpu_saved = plain["total"].as_u64().unwrap() - offloaded["total"].as_u64().unwrap();
    // The runtime share of the allocator shrinks with it, so the GPU saves at least the moments.
    assert!(gpu_saved >= moments, "{gpu_saved} < {moments}");
}

/// With a dataset of short conversations, the batch is sized from the data, not from max_seq_len:
/// the activations and logits shrink accordingly.
#[test]
fn data_sizes_the_batch_from_its_longest_example() {
    let gguf = support::smollm2_gguf();
    let data = support::repo_root().join("assets/samples/support-chat.jsonl");
    let base = [
        "estimate",
        "--model",
        gguf.to_str().unwrap(),
        "--max-seq-len",
        "2048",
    ];
    let assumed = json(&base);
    let mut with_data = base.to_vec();
    with_data.extend(["--data", data.to_str().unwrap()]);
    let measured = json(&with_data);
    assert_eq!(assumed["batch"]["longest"], 2048);
    let longest = measured["batch"]["longest"].as_u64().unwrap();
    assert!((50..600).contains(&longest), "{measured}");
    assert_eq!(measured["batch_source"]["kind"], "data");
    let (a, m) = (
        part(&assumed, "activations"),
        part(&measured, "activations"),
    );
    assert!(m * 3 < a, "activations {m} with data vs {a} assumed");
    // The CPU scores 256 positions at a time, so its logits shrink only with the hidden-state
    // gradient; on CUDA they are held for every trained position.
    assert!(part(&measured, "logits") < part(&assumed, "logits"));
    let on_cuda = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--device", "cuda", "--gpu-memory", "24"]);
        part(&json(&args), "logits")
    };
    assert!(on_cuda(&with_data) * 3 < on_cuda(&base));
    // Weights do not depend on the data.
    assert_eq!(
        part(&assumed, "base_weights"),
        part(&measured, "base_weights")
    );
}

/// A config.json alone has no tokenizer: --data is then noted and the settings are used.
#[test]
fn data_without_a_tokenizer_falls_back_to_the_settings() {
    let data = support::repo_root().join("assets/samples/support-chat.jsonl");
    let out = loft(&[
        "estimate",
        "--model",
        &config("llama-2-7b"),
        "--data",
        data.to_str().unwrap(),
        "--max-seq-len",
        "256",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer") && err.contains("4 rows of 256 tokens"),
        "{err}"
    );
}

#[test]
fn bad_input_is_explained() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["estimate", "--model", "no/such-model", "--offline"],
            "not in the Hugging Face cache",
        ),
        (
            &["estimate", "--model", "/nonexistent/folder"],
            "no such file or folder",
        ),
        (
            &[
                "estimate",
                "--model",
                &config("llama-2-7b"),
                "--gpu-memory",
                "8",
            ],
            "--gpu-memory is for --device cuda",
        ),
        (
            &[
                "estimate",
                "--model",
                &config("llama-2-7b"),
                "--device",
                "cuda",
                "--gpu-memory=-3",
            ],
            "give the GPU's memory in GB",
        ),
        (
            &[
                "estimate",
                "--model",
                &config("llama-2-7b"),
                "--targets",
                "qq_proj",
            ],
            "unknown target module `qq_proj`",
        ),
    ];
    for (args, expected) in cases {
        let out = loft(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A config.json that is not a model Loft knows names the field.
#[test]
fn an_unsupported_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "gpt2", "n_embd": 768}"#).unwrap();
    let out = loft(&["estimate", "--model", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gpt2") && err.contains("llama"), "{err}");
}

/// A hub repo id whose weights are not downloaded: only its description files are fetched (never
/// the weights), and the next estimate answers offline from the cache.
#[test]
fn a_hub_model_is_estimated_from_its_config_without_its_weights() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::copy(config("llama-2-7b"), repo.path().join("config.json")).unwrap();
    std::fs::write(repo.path().join("model.safetensors"), vec![7u8; 200_000]).unwrap();
    let server = hub_server::HubServer::start();
    server.add_repo("org/llama-7b", repo.path());
    let cache = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["estimate", "--model", "org/llama-7b", "--json"];
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_loft"))
            .args(&args)
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_ENDPOINT", server.url())
            .env_remove("HF_HOME")
            .env_remove("HF_TOKEN")
            .output()
            .expect("run loft")
    };
    let online = run(&[]);
    assert!(
        online.status.success(),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    let e: Value = serde_json::from_slice(&online.stdout).unwrap();
    assert!(part(&e, "base_weights") > 20_000_000_000, "{e}");
    let fetched: Vec<String> = server.log().into_iter().filter_map(|s| s.file).collect();
    assert!(fetched.iter().any(|f| f == "config.json"), "{fetched:?}");
    assert!(
        !fetched.iter().any(|f| f.ends_with(".safetensors")),
        "weights were downloaded: {fetched:?}"
    );
    let offline = run(&["--offline"]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let again: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(again["total"], e["total"]);
}

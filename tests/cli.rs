//! The `loft` binary as a user runs it: inspect, models, generate, and its answers to bad input.

mod support;

use std::process::{Command, Output};

use support::{loft, loft_with_cache};

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

/// `loft train` on the tiny chat model and the bundled sample data, with Loft's default settings but a
/// few steps, into `out`.
fn train_args(out: &std::path::Path, steps: usize) -> Vec<String> {
    let root = support::repo_root();
    [
        "train",
        "--model",
        root.join("tests/fixtures/tiny-chat").to_str().unwrap(),
        "--data",
        root.join("assets/samples/support-chat.jsonl")
            .to_str()
            .unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        &steps.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The run folder: the last line `loft train` prints.
fn run_folder(o: &Output) -> std::path::PathBuf {
    std::path::PathBuf::from(stdout(o).trim().lines().last().expect("a run folder"))
}

fn loss_curve(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|m| m["loss"].as_f64())
        .collect()
}

/// Ctrl+C during `loft train` (default settings) stops it with a checkpoint and exit status 130, and
/// `--resume` then ends with exactly the adapter of a run never interrupted.
#[test]
fn interrupted_training_resumes_to_the_same_adapter() {
    use std::io::{BufRead, BufReader};
    const STEPS: usize = 10;
    let runs = tempfile::tempdir().unwrap();
    let straight = loft(
        &train_args(&runs.path().join("straight"), STEPS)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(straight.status.success(), "{}", stderr(&straight));
    let straight = run_folder(&straight);

    let mut child = Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(train_args(&runs.path().join("interrupted"), STEPS))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    // Interrupt once the second step is reported.
    while err.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if line.starts_with("step ") && line.contains(&format!("2/{STEPS}")) {
            // SAFETY: a plain kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
            break;
        }
        line.clear();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{log}");
    assert!(log.contains("saving a checkpoint"), "{log}");
    assert!(log.contains("resume with `loft train --resume"), "{log}");
    let run = run_folder(&out);
    assert!(
        !run.join("adapter").exists(),
        "it stopped before the end: {log}"
    );
    let stopped = loss_curve(&run).len();
    assert!((2..STEPS).contains(&stopped), "{log}");

    let resumed = loft(&["train", "--resume", run.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("resuming at step"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(loss_curve(&run), loss_curve(&straight), "one clean curve");
    support::assert_identical_adapters(&run.join("adapter"), &straight.join("adapter"));
}

/// `--resume RUN --lr X` continues with a new peak learning rate, recorded in run.toml; other training
/// flags are refused with --resume instead of being ignored.
#[test]
fn resume_may_lower_the_learning_rate_and_refuses_other_settings() {
    let runs = tempfile::tempdir().unwrap();
    let mut args = train_args(runs.path(), 4);
    args.extend(["--save-every".into(), "2".into()]);
    let first = loft(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(first.status.success(), "{}", stderr(&first));
    let run = run_folder(&first);
    // Make it look interrupted after step 2: the final adapter and checkpoint gone.
    std::fs::remove_dir_all(run.join("adapter")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-4")).unwrap();
    let run_arg = run.to_str().unwrap();

    let refused = loft(&["train", "--resume", run_arg, "--max-steps", "9"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("only --lr may change"),
        "{}",
        stderr(&refused)
    );
    let refused = loft(&["train", "--resume", run_arg, "--lr", "3"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("lr is 3"), "{}", stderr(&refused));

    let out = loft(&["train", "--resume", run_arg, "--lr", "5e-5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("peaks at 5e-5"), "{}", stderr(&out));
    let (_, spec) = loft::engine::train::run::RunDir::open(&run).unwrap();
    assert_eq!(
        spec.train.lr_changes,
        vec![loft::engine::train::config::LrChange { step: 2, lr: 5e-5 }]
    );
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
}

/// Settings that would overflow, stall or train nothing are refused before anything loads, naming the
/// setting.
#[test]
fn train_refuses_settings_out_of_bounds() {
    let runs = tempfile::tempdir().unwrap();
    for (extra, says) in [
        (vec!["--max-steps", "0"], "max_steps is 0"),
        (
            vec!["--batch-size", "9223372036854775807", "--grad-accum", "4"],
            "micro_batch_size × grad_accum",
        ),
        (vec!["--epochs", "inf"], "epochs is inf"),
        (vec!["--save-every-minutes", "NaN"], "save_every_minutes"),
    ] {
        let mut args = train_args(runs.path(), 4);
        if extra[0] == "--max-steps" || extra[0] == "--epochs" {
            args.truncate(args.len() - 2); // the case sets the length of the run itself
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = loft(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{extra:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_dir(runs.path()).unwrap().count(),
        0,
        "no run folder was made"
    );
}

//! LoRA training end to end on the real SmolLM2-135M-Instruct (CPU): the loss falls, the eval loss
//! falls, answers move towards the data; and a run killed mid-way resumes to the same adapter.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use loft::engine::adapter;
use loft::engine::chat::ChatMessage;
use loft::engine::generate::{generate, Sampling};
use loft::engine::model::{BaseFormat, LoadOptions};
use loft::engine::source::{self, ModelFiles};

fn loft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args)
        .output()
        .expect("run loft")
}

fn sample_data() -> PathBuf {
    support::repo_root().join("assets/samples/support-chat.jsonl")
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sample chat rows, with the first `train` written to `dir`/train.jsonl and the last `eval` to
/// `dir`/eval.jsonl (held out entirely).
fn split_sample(dir: &Path, train: usize, eval: usize) -> (Vec<String>, PathBuf, PathBuf) {
    let rows: Vec<String> = std::fs::read_to_string(sample_data())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (train_file, eval_file) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    std::fs::write(&train_file, rows[..train].join("\n")).unwrap();
    std::fs::write(&eval_file, rows[rows.len() - eval..].join("\n")).unwrap();
    (rows, train_file, eval_file)
}

/// The run folder `loft train` printed last.
fn run_folder(out: &std::process::Output) -> PathBuf {
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
}

/// Unigram F1 between two texts (lowercase words): how much an answer says what the reference says.
fn overlap(answer: &str, reference: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (a, r) = (words(answer), words(reference));
    let common = a.iter().filter(|w| r.contains(w)).count() as f64;
    if common == 0.0 {
        return 0.0;
    }
    let (p, rc) = (common / a.len() as f64, common / r.len() as f64);
    2.0 * p * rc / (p + rc)
}

#[test]
fn lora_training_improves_the_real_model() {
    let gguf = support::smollm2_gguf();
    let runs = tempfile::tempdir().unwrap();
    // Two epochs over 24 conversations, so the training loss is measured on rows seen before; the
    // eval rows are held out entirely.
    let (rows, train_file, eval_file) = split_sample(runs.path(), 24, 8);
    let out = loft(&[
        "train",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        train_file.to_str().unwrap(),
        "--eval-data",
        eval_file.to_str().unwrap(),
        "--out",
        runs.path().to_str().unwrap(),
        "--max-steps",
        "24",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--rank",
        "16",
        "--alpha",
        "32",
        "--max-seq-len",
        "256",
        "--eval-every",
        "12",
        "--seed",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = run_folder(&out);
    let m = metrics(&run);
    let losses: Vec<f64> = m.iter().filter_map(|x| x["loss"].as_f64()).collect();
    let evals: Vec<f64> = m.iter().filter_map(|x| x["eval_loss"].as_f64()).collect();
    assert_eq!(losses.len(), 24, "{stderr}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&losses[18..]) < mean(&losses[..6]) * 0.9,
        "training loss should fall clearly: {losses:?}"
    );
    eprintln!("eval losses {evals:?}");
    assert_eq!(
        evals.len(),
        3,
        "base, middle and final evaluations: {evals:?}"
    );
    assert!(
        evals[2] < evals[0] * 0.95,
        "eval loss should fall: {evals:?}"
    );
    assert!(
        stderr.contains("step    24/24"),
        "per-step lines are printed: {stderr}"
    );

    // Held-out prompts: the tuned model answers closer to the data's answers than the base model.
    let files = ModelFiles::from_gguf(&gguf).unwrap();
    let base = source::load(&files, &LoadOptions::default()).unwrap();
    let mut tuned = source::load(&files, &LoadOptions::default()).unwrap();
    adapter::load_peft(&mut tuned.model, &adapter::adapter_dir(&run)).unwrap();
    let held_out: Vec<serde_json::Value> = rows[rows.len() - 4..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (mut base_score, mut tuned_score) = (0.0, 0.0);
    for row in &held_out {
        let messages: Vec<ChatMessage> = serde_json::from_value(row["messages"].clone()).unwrap();
        let (reference, prompt) = messages.split_last().unwrap();
        let answer = |m: &source::LoadedModel| {
            let text = m.template.render(prompt, true).unwrap();
            let ids = m
                .tokenizer
                .encode(text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            let sampling = Sampling {
                max_new_tokens: 48,
                ..Sampling::default()
            };
            let out = generate(
                &m.model,
                &ids,
                &sampling,
                &m.stop_tokens,
                &AtomicBool::new(false),
                &mut |_| {},
            )
            .unwrap();
            m.tokenizer.decode(&out.tokens, true).unwrap()
        };
        let (b, t) = (answer(&base), answer(&tuned));
        base_score += overlap(&b, &reference.content);
        tuned_score += overlap(&t, &reference.content);
        eprintln!(
            "PROMPT {:?}\n  base:  {b:?}\n  tuned: {t:?}",
            prompt.last().unwrap().content
        );
    }
    assert!(
        tuned_score > base_score,
        "tuned answers should move towards the data ({tuned_score:.3} vs base {base_score:.3})"
    );
}

/// QLoRA on the real model: the base is measured dense, quantized to NF4 and measured again before
/// step 1; training through the 4-bit base lowers the eval loss; the adapter is PEFT's format and
/// attaches to a base quantized afresh.
#[test]
fn qlora_training_measures_the_quantization_cost_and_lowers_eval_loss() {
    let gguf = support::smollm2_gguf();
    let runs = tempfile::tempdir().unwrap();
    let (_, train_file, eval_file) = split_sample(runs.path(), 24, 6);
    let out = loft(&[
        "train",
        "--method",
        "qlora",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        train_file.to_str().unwrap(),
        "--eval-data",
        eval_file.to_str().unwrap(),
        "--out",
        runs.path().to_str().unwrap(),
        "--max-steps",
        "12",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--max-seq-len",
        "256",
        "--seed",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = run_folder(&out);
    assert!(
        run.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("qlora"),
        "{run:?}"
    );
    let m = metrics(&run);
    let cost = m
        .iter()
        .find(|x| x.get("dense_eval_loss").is_some())
        .unwrap_or_else(|| panic!("no quantization cost in metrics.jsonl: {m:?}"));
    let (dense, quantized) = (
        cost["dense_eval_loss"].as_f64().unwrap(),
        cost["quantized_eval_loss"].as_f64().unwrap(),
    );
    assert_eq!(cost["quantization"], "nf4");
    // Different weights give a different loss, but 4 bits stay close to the base.
    assert!(
        dense != quantized && (quantized - dense).abs() < 0.5 * dense,
        "dense {dense}, nf4 {quantized}"
    );
    assert!(stderr.contains("quantization: eval loss"), "{stderr}");
    let evals: Vec<f64> = m.iter().filter_map(|x| x["eval_loss"].as_f64()).collect();
    assert_eq!(evals.len(), 2, "base and final evaluations: {evals:?}");
    assert_eq!(evals[0], quantized, "the base evaluation is the NF4 base's");
    assert!(
        evals[1] < evals[0] * 0.95,
        "eval loss should fall: {evals:?}"
    );

    // The saved adapter attaches to a base quantized afresh (no dense linear weight anywhere).
    let files = ModelFiles::from_gguf(&gguf).unwrap();
    let options = LoadOptions {
        base: BaseFormat::Nf4 { double_quant: true },
        ..LoadOptions::default()
    };
    let mut tuned = source::load(&files, &options).unwrap();
    assert!(tuned.model.linears().all(|l| l.weight.is_quantized()));
    adapter::load_peft(&mut tuned.model, &adapter::adapter_dir(&run)).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter::adapter_dir(&run).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
}

/// QLoRA on the GGUF's own Q4_1 blocks (`--method qlora --quant source`): a short run lowers the
/// held-out eval loss, and run.toml records the choice so a resume trains on the same base.
#[test]
fn qlora_on_the_gguf_blocks_lowers_eval_loss() {
    let gguf = support::smollm2_gguf();
    let runs = tempfile::tempdir().unwrap();
    let (_, train_file, eval_file) = split_sample(runs.path(), 16, 6);
    let out = loft(&[
        "train",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        train_file.to_str().unwrap(),
        "--eval-data",
        eval_file.to_str().unwrap(),
        "--out",
        runs.path().to_str().unwrap(),
        "--method",
        "qlora",
        "--quant",
        "source",
        "--max-steps",
        "8",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "2e-3",
        "--rank",
        "8",
        "--alpha",
        "16",
        "--max-seq-len",
        "192",
        "--truncate",
        "--eval-every",
        "8",
        "--seed",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = run_folder(&out);
    let evals: Vec<f64> = metrics(&run)
        .iter()
        .filter_map(|x| x["eval_loss"].as_f64())
        .collect();
    eprintln!("eval losses {evals:?}");
    assert!(
        stderr.contains("note: the base trains on the GGUF's own Q4_1 blocks"),
        "{stderr}"
    );
    assert_eq!(evals.len(), 2, "base and final evaluations: {evals:?}");
    // The base is SmolLM2 itself (a wrong dequantization would start near ln(49152) ≈ 10.8).
    assert!(evals[0] < 4.0, "the base model's eval loss: {evals:?}");
    assert!(
        evals[1] < evals[0] * 0.95,
        "eval loss should fall: {evals:?}"
    );
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(run.join("run.toml")).unwrap()).unwrap();
    let train = &config["train"];
    assert_eq!(
        (train["method"].as_str(), train["quant"].as_str()),
        (Some("qlora"), Some("source")),
        "{config}"
    );
}

#[test]
fn a_killed_run_resumes_to_the_same_adapter() {
    assert_killed_run_resumes_to_the_same_adapter(&[]);
}

/// Resuming a QLoRA run quantizes the base again as its run.toml says: the resumed curve and adapter
/// are the straight QLoRA run's (a dense base would give other losses).
#[test]
fn a_killed_qlora_run_resumes_to_the_same_adapter() {
    let (_runs, run) = assert_killed_run_resumes_to_the_same_adapter(&["--method", "qlora"]);
    let spec = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(spec.contains("method = \"qlora\""), "{spec}");
}

/// Train straight through, then the same run killed after its step-4 checkpoint and resumed; `extra`
/// flags go to both. Returns the runs' temporary folder and the resumed run's folder.
fn assert_killed_run_resumes_to_the_same_adapter(extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let gguf = support::smollm2_gguf();
    let runs = tempfile::tempdir().unwrap();
    let args = |dir: &str| -> Vec<String> {
        [
            "train",
            "--model",
            gguf.to_str().unwrap(),
            "--data",
            sample_data().to_str().unwrap(),
            "--out",
            dir,
            "--max-steps",
            "10",
            "--batch-size",
            "1",
            "--grad-accum",
            "2",
            "--max-seq-len",
            "64",
            "--truncate",
            "--train-on-all-tokens",
            "--save-every",
            "2",
            "--eval-split",
            "0",
            "--dropout",
            "0.1",
            "--rank",
            "4",
            "--seed",
            "3",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let straight_dir = runs.path().join("straight");
    let out = Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args(straight_dir.to_str().unwrap()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let straight = run_folder(&out);

    let killed_dir = runs.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args(killed_dir.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let run = loop {
        let found = std::fs::read_dir(&killed_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        if let Some(run) = found.filter(|r| r.join("checkpoints/step-4").is_dir()) {
            break run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed before it finished");
    assert!(!run.join("adapter").exists());

    let out = loft(&["train", "--resume", run.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at step"), "{stderr}");
    let want = metrics(&straight);
    let got = metrics(&run);
    let losses = |m: &[serde_json::Value]| -> Vec<f64> {
        m.iter().filter_map(|x| x["loss"].as_f64()).collect()
    };
    assert_eq!(
        losses(&got).len(),
        10,
        "one clean curve after resume: {got:?}"
    );
    for (a, b) in losses(&got).iter().zip(losses(&want)) {
        assert!(
            (a - b).abs() < 1e-4,
            "resumed curve {:?} vs {:?}",
            losses(&got),
            losses(&want)
        );
    }
    support::assert_same_adapters(&run.join("adapter"), &straight.join("adapter"), 1e-5);
    (runs, run)
}

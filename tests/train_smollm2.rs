//! LoRA training end to end on the real SmolLM2-135M-Instruct (CPU): the loss falls, the eval loss
//! falls, answers move towards the data; and a run killed mid-way resumes to the same adapter.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loft::engine::adapter;
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

#[test]
fn lora_training_improves_the_real_model() {
    let gguf = support::smollm2_gguf();
    let runs = tempfile::tempdir().unwrap();
    // Two epochs over 24 conversations, so the training loss is measured on rows seen before; the
    // eval rows are held out entirely.
    let (_, train_file, eval_file) = split_sample(runs.path(), 24, 8);
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

    // `loft eval --run`: base vs the run on the examples it held out (its --eval-data file).
    let cache = runs.path().join("cache");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--max-new-tokens",
            "48",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_loft"))
            .args(&args)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .expect("run loft eval");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (table, stderr) = eval(&["--check", "absent:as an AI"]);
    let folder = PathBuf::from(table.lines().last().unwrap());
    assert!(folder.starts_with(run.join("eval")), "{table}");
    eprintln!("{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["eval_set"]["rows"], 8, "{stderr}");
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "base");
    let loss = |m: &serde_json::Value| m["eval_loss"].as_f64().unwrap();
    assert!(
        loss(&models[1]) < loss(&models[0]),
        "the tuned eval loss is below the base's: {} vs {}",
        loss(&models[1]),
        loss(&models[0])
    );
    // The report's eval loss is the one training measured on the same held-out file.
    assert!(
        (loss(&models[1]) - evals[2]).abs() < 1e-3,
        "{} vs {evals:?}",
        loss(&models[1])
    );
    for key in [
        "exact_match",
        "token_f1",
        "rouge_l",
        "length_ratio",
        "refusal",
        "check_1",
    ] {
        for m in models {
            let a = &m["aggregates"][key];
            assert!(
                a["low"].as_f64().unwrap() <= a["mean"].as_f64().unwrap(),
                "{key}: {a}"
            );
            assert!(
                a["mean"].as_f64().unwrap() <= a["high"].as_f64().unwrap(),
                "{key}: {a}"
            );
        }
        assert!(models[1]["change_vs_base"][key].is_object(), "{key}");
    }
    let mean = |m: &serde_json::Value, key: &str| m["aggregates"][key]["mean"].as_f64().unwrap();
    assert!(
        mean(&models[1], "rouge_l") > mean(&models[0], "rouge_l"),
        "tuned answers move towards the data: ROUGE-L {} vs base {}",
        mean(&models[1], "rouge_l"),
        mean(&models[0], "rouge_l")
    );
    for m in models {
        let latency = &m["latency"];
        for key in [
            "tokens_in",
            "tokens_out",
            "time_to_first_token_ms",
            "ms_per_token",
            "tokens_per_second",
        ] {
            assert!(latency[key].as_f64().unwrap() > 0.0, "{key}: {latency}");
        }
    }
    let rows = std::fs::read_to_string(folder.join("rows.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 8);
    for line in rows.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(!row["reference"].as_str().unwrap().is_empty());
        assert_eq!(row["answers"].as_array().unwrap().len(), 2);
        for a in row["answers"].as_array().unwrap() {
            assert!(
                a["tokens_out"].as_u64().unwrap() >= 1 && a["tokens_out"].as_u64().unwrap() <= 48
            );
            assert!(a["scores"]["rouge_l"].is_number(), "{a}");
        }
    }
    let html = std::fs::read_to_string(folder.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"), "charts are inline SVG");
    for external in ["http://", "https://", "src=", "<link", "@import"] {
        assert!(
            !html.contains(external),
            "report.html must be self-contained: {external}"
        );
    }
    // A second evaluation against the same base reuses the base answers, and gives the same figures.
    let (json, stderr) = eval(&["--check", "absent:as an AI", "--json"]);
    assert!(stderr.contains("answers from the cache"), "{stderr}");
    let again: serde_json::Value = serde_json::from_str(&json).unwrap();
    let base_then = &report["models"][0]["aggregates"]["rouge_l"]["mean"];
    assert_eq!(&again["models"]["base"]["rouge_l"]["mean"], base_then);
    assert!(again["models"][run.file_name().unwrap().to_str().unwrap()]["eval_loss"].is_number());
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

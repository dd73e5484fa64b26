//! LoRA against PEFT (fixtures by scripts/make_lora_fixtures.py): with PEFT's A and B, Loft's logits,
//! loss and the gradient of every A and B match; Loft's saved adapters load in PEFT and back.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loft::engine::adapter;
use loft::engine::model::{BaseFormat, LoadOptions, Model};
use loft::engine::source::{self, ModelFiles};
use loft::engine::train::loss::{causal_lm_loss, masked_lm_loss};

const CASES: [(&str, &str); 3] = [
    ("llama-all-linear", "llama"),
    ("qwen2-attention-rslora", "qwen2"),
    ("gemma3-all-linear", "gemma3"),
];

fn tiny(name: &str) -> Model {
    support::tiny_model(name)
}

fn case_dir(case: &str) -> PathBuf {
    support::fixtures().join("lora").join(case)
}

fn expected(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(case_dir(case).join("expected.safetensors"), &Device::Cpu)
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    support::max_abs_diff(a, b)
}

/// Loft's loss inputs from transformers' labels: ids, and a mask that is 0 where the label is -100.
fn ids_and_mask(exp: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let labels = exp["labels"].to_dtype(DType::F32).unwrap();
    let mask = labels.ge(0f64).unwrap().to_dtype(DType::F32).unwrap();
    (ids, mask)
}

#[test]
fn peft_adapters_give_peft_logits_loss_and_gradients() {
    for (case, base) in CASES {
        let mut model = tiny(base);
        let config = adapter::load_peft(&mut model, &case_dir(case).join("adapter")).unwrap();
        let exp = expected(case);
        let (ids, mask) = ids_and_mask(&exp);
        let logits = model.forward(&ids, 0, None).unwrap();
        let diff = max_abs(&logits, &exp["logits"]);
        assert!(diff < 1e-4, "{case}: logits differ from PEFT by {diff}");
        let (loss, _) = causal_lm_loss(&logits, &ids, &mask).unwrap();
        let want_loss = exp["loss"].to_vec1::<f32>().unwrap()[0];
        let got_loss = loss.to_scalar::<f32>().unwrap();
        assert!(
            (got_loss - want_loss).abs() < 1e-5,
            "{case}: loss {got_loss} vs PEFT {want_loss}"
        );
        // The trainer's loss projects only trained positions onto the vocabulary: same number.
        let (masked, _) = masked_lm_loss(&model, &ids, &mask).unwrap();
        let masked = masked.to_scalar::<f32>().unwrap();
        assert!(
            (masked - want_loss).abs() < 1e-5,
            "{case}: masked loss {masked} vs PEFT {want_loss}"
        );
        let grads = loss.backward().unwrap();
        let gaps = support::adapter_gradient_gaps(&model, &grads, &exp);
        for g in &gaps {
            assert!(
                g.diff <= 1e-4 * g.scale.max(1e-3) + 1e-7,
                "{case}: gradient of {} differs by {} (max {})",
                g.key,
                g.diff,
                g.scale
            );
        }
        let checked = gaps.len();
        let want_grads = exp.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            checked, want_grads,
            "{case}: every PEFT gradient has a Loft twin"
        );
        assert!(config.r > 0);
    }
}

#[test]
fn base_weights_get_no_gradient() {
    let mut model = tiny("llama");
    adapter::load_peft(&mut model, &case_dir("llama-all-linear").join("adapter")).unwrap();
    let exp = expected("llama-all-linear");
    let (ids, mask) = ids_and_mask(&exp);
    let (loss, _) = causal_lm_loss(&model.forward(&ids, 0, None).unwrap(), &ids, &mask).unwrap();
    let grads = loss.backward().unwrap();
    for linear in model.linears() {
        let loft::engine::model::Frozen::Dense(weight) = &linear.weight else {
            panic!("{}: the tiny model loads dense", linear.path);
        };
        assert!(
            grads.get(weight).is_none(),
            "{} base weight got a gradient",
            linear.path
        );
    }
}

#[test]
fn saved_adapter_round_trips_and_matches_peft() {
    // Loft saves PEFT's own adapter again; PEFT-format keys and config must survive the round trip.
    let mut model = tiny("llama");
    let config =
        adapter::load_peft(&mut model, &case_dir("llama-all-linear").join("adapter")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    adapter::save_peft(&model, &config, "tests/fixtures/tiny/llama", tmp.path()).unwrap();
    let mut again = tiny("llama");
    let config2 = adapter::load_peft(&mut again, tmp.path()).unwrap();
    assert_eq!(config, config2);
    let exp = expected("llama-all-linear");
    let (ids, _) = ids_and_mask(&exp);
    let diff = max_abs(&again.forward(&ids, 0, None).unwrap(), &exp["logits"]);
    assert!(diff < 1e-4, "reloaded adapter differs by {diff}");
    let saved =
        candle_core::safetensors::load(tmp.path().join(adapter::WEIGHTS_FILE), &Device::Cpu)
            .unwrap();
    let original = candle_core::safetensors::load(
        case_dir("llama-all-linear")
            .join("adapter")
            .join(adapter::WEIGHTS_FILE),
        &Device::Cpu,
    )
    .unwrap();
    let mut a: Vec<_> = saved.keys().collect();
    let mut b: Vec<_> = original.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "Loft writes exactly PEFT's keys");
}

#[test]
fn mismatched_adapters_are_refused_with_reasons() {
    // A llama adapter on gemma3: same module names but other shapes.
    let mut model = tiny("qwen3");
    let msg = adapter::load_peft(&mut model, &case_dir("llama-all-linear").join("adapter"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("different base model"), "{msg}");
    let tmp = support::copy_to_temp(&case_dir("llama-all-linear").join("adapter"));
    let cfg_path = tmp.path().join(adapter::CONFIG_FILE);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["use_dora"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = adapter::load_peft(&mut tiny("llama"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("use_dora") && msg.contains("DoRA"), "{msg}");
    let msg = adapter::load_peft(&mut tiny("llama"), Path::new("/no/adapter"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("adapter_config.json"), "{msg}");
}

/// An adapter trained by Loft, committed under tests/fixtures/lora/loft-saved/, was loaded by PEFT
/// (scripts/make_lora_fixtures.py fails on any missing or unexpected key) and its logits recorded; Loft
/// must give the same logits from the same files. `LOFT_WRITE_FIXTURES=1` first retrains and rewrites the
/// adapter: when the files change, PEFT's logits beside them are stale, so the test fails and says to
/// run the script; otherwise it goes on to check, as without the variable.
#[test]
fn loft_trained_adapter_matches_peft_on_the_same_files() {
    let saved = support::fixtures().join("lora/loft-saved/tiny-llama");
    if std::env::var("LOFT_WRITE_FIXTURES").is_ok_and(|v| v == "1") {
        let changed = retrain_fixture_adapter(&saved, "tests/fixtures/tiny/llama", tiny("llama"));
        assert!(
            changed.is_empty(),
            "LOFT_WRITE_FIXTURES=1 rewrote {changed:?} in {}: run scripts/make_lora_fixtures.py to record PEFT's logits for it, commit both, and run this test again",
            saved.display()
        );
    }
    let mut model = tiny("llama");
    adapter::load_peft(&mut model, &saved).unwrap();
    let peft = candle_core::safetensors::load(saved.join("peft_logits.safetensors"), &Device::Cpu)
        .expect("peft_logits.safetensors: run scripts/make_lora_fixtures.py");
    let ids = peft["input_ids"].to_dtype(DType::U32).unwrap();
    let diff = max_abs(&model.forward(&ids, 0, None).unwrap(), &peft["logits"]);
    assert!(
        diff < 1e-4,
        "PEFT's logits for Loft's adapter differ from Loft's by {diff}"
    );
    // The adapter really changes the model: B is not zero after training.
    let base = tiny("llama").forward(&ids, 0, None).unwrap();
    assert!(max_abs(&base, &peft["logits"]) > 1e-3);
}

/// The tiny bitsandbytes 4-bit llama (tests/fixtures/qlora/tiny-llama-bnb4), with its linear layers
/// held as `base` asks (NF4 as stored, or dequantized to dense f32).
fn tiny_bnb(base: BaseFormat) -> Model {
    let files =
        ModelFiles::from_folder(&support::fixtures().join("qlora/tiny-llama-bnb4")).unwrap();
    let options = LoadOptions {
        base,
        ..LoadOptions::default()
    };
    source::load(&files, &options).unwrap().model
}

/// A QLoRA adapter Loft trained on a bitsandbytes 4-bit base loads in PEFT on that 4-bit base and on
/// the same base dequantized to f32 (scripts/make_lora_fixtures.py fails on any missing or unexpected
/// key), and Loft gives PEFT's logits both ways. `LOFT_WRITE_FIXTURES=1` retrains it first, as above.
#[test]
fn loft_trained_qlora_adapter_matches_peft_on_the_4bit_and_the_dequantized_base() {
    let saved = support::fixtures().join("lora/loft-saved/tiny-llama-qlora");
    let nf4 = || tiny_bnb(BaseFormat::Nf4 { double_quant: true });
    if std::env::var("LOFT_WRITE_FIXTURES").is_ok_and(|v| v == "1") {
        let changed =
            retrain_fixture_adapter(&saved, "tests/fixtures/qlora/tiny-llama-bnb4", nf4());
        assert!(
            changed.is_empty(),
            "LOFT_WRITE_FIXTURES=1 rewrote {changed:?} in {}: run scripts/make_lora_fixtures.py to record PEFT's logits for it, commit both, and run this test again",
            saved.display()
        );
    }
    let peft = candle_core::safetensors::load(saved.join("peft_logits.safetensors"), &Device::Cpu)
        .expect("peft_logits.safetensors: run scripts/make_lora_fixtures.py");
    let ids = peft["input_ids"].to_dtype(DType::U32).unwrap();
    for (mut model, key) in [
        (nf4(), "logits"),
        (tiny_bnb(BaseFormat::Dense), "logits_dequantized"),
    ] {
        adapter::load_peft(&mut model, &saved).unwrap();
        let diff = max_abs(&model.forward(&ids, 0, None).unwrap(), &peft[key]);
        assert!(
            diff < 1e-4,
            "{key}: PEFT's logits for Loft's QLoRA adapter differ from Loft's by {diff}"
        );
    }
    let base = nf4().forward(&ids, 0, None).unwrap();
    assert!(
        max_abs(&base, &peft["logits"]) > 1e-3,
        "the adapter changes the model"
    );
}

/// Train a fixture adapter again (5 steps on `model`, the model at `model_path`) and write it into
/// `saved`; returns the files whose bytes changed.
fn retrain_fixture_adapter(saved: &Path, model_path: &str, model: Model) -> Vec<&'static str> {
    use loft::engine::data::Example;
    use loft::engine::train::run::{RunDir, RunSpec};
    use loft::engine::train::{TrainConfig, TrainJob};
    let runs = tempfile::tempdir().unwrap();
    let quantized = model.linears().any(|l| l.weight.is_quantized());
    let config = TrainConfig {
        method: match quantized {
            true => loft::engine::train::Method::Qlora,
            false => loft::engine::train::Method::Lora,
        },
        lora: loft::engine::model::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            ..Default::default()
        },
        max_steps: Some(5),
        micro_batch_size: 2,
        grad_accum: 1,
        lr: 1e-2,
        ..TrainConfig::default()
    };
    let spec = RunSpec {
        name: "fixture".into(),
        model: model_path.into(),
        data: "toy".into(),
        data_sha256: String::new(),
        eval_data: None,
        eval_data_sha256: None,
        eval_split: 0.0,
        train_on_all_tokens: true,
        truncate_overlong: false,
        skip_error_rows: false,
        created: String::new(),
        loft_version: String::new(),
        train: config.clone(),
    };
    let run = RunDir::create(runs.path(), &spec).unwrap();
    let adapter_dir = run.adapter_dir();
    let train: Vec<Example> = (0..8)
        .map(|row| Example {
            row,
            ids: vec![1, 5 + row as u32, 7, 100, 101, 102],
            mask: vec![true; 6],
            truncated: false,
        })
        .collect();
    let job = TrainJob {
        model,
        train,
        eval: vec![],
        config,
        run,
        base_model: model_path.into(),
        resume: false,
        pad_id: 0,
        quantization: Default::default(),
    };
    let (tx, _rx) = std::sync::mpsc::channel();
    let (_ctx, crx) = std::sync::mpsc::channel();
    loft::engine::train::trainer::run_blocking(job, tx, crx).unwrap();
    std::fs::create_dir_all(saved).unwrap();
    let mut changed = Vec::new();
    for f in [adapter::WEIGHTS_FILE, adapter::CONFIG_FILE] {
        let before = std::fs::read(saved.join(f)).ok();
        std::fs::copy(adapter_dir.join(f), saved.join(f)).unwrap();
        if before != Some(std::fs::read(saved.join(f)).unwrap()) {
            changed.push(f);
        }
    }
    changed
}

#[test]
fn parameter_count_from_config_equals_the_attached_adapters() {
    use loft::engine::model::lora::{LoraConfig, ALL_LINEAR_TARGETS, ATTENTION_TARGETS};
    for name in ["llama", "qwen2", "gemma3"] {
        for targets in [&ALL_LINEAR_TARGETS[..], &ATTENTION_TARGETS[..]] {
            let mut model = tiny(name);
            let config = LoraConfig {
                r: 3,
                targets: targets.iter().map(|s| s.to_string()).collect(),
                ..LoraConfig::default()
            };
            model.attach_lora(&config, 0).unwrap();
            let attached: usize = model.adapters().map(|(_, a)| a.parameter_count()).sum();
            let predicted = model.arch.lora_parameter_count(&config.targets, config.r);
            assert!(attached > 0);
            assert_eq!(predicted, attached as u64, "{name} {targets:?}");
        }
    }
}

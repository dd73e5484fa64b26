//! Checkpoints that transformers + bitsandbytes saved in 4 bits, and QLoRA against PEFT + bitsandbytes
//! (fixtures by scripts/make_qlora_fixtures.py, bitsandbytes' exact CPU path):
//! - a tiny random Llama (rows of 72 and 100 values, not multiples of 64) loads straight into NF4 and
//!   gives transformers' logits; its damaged variants are refused with the file and tensor named;
//! - PEFT's LoRA on it: logits, loss and every A/B gradient;
//! - the real SmolLM2, quantized by Loft from the GGUF: every byte of every layer equals what
//!   bitsandbytes stored, and the greedy answer is transformers + bitsandbytes' 32 tokens.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use loft::engine::adapter;
use loft::engine::arch::Arch;
use loft::engine::generate::{generate, Sampling};
use loft::engine::gguf::GgufModel;
use loft::engine::model::{BaseFormat, Frozen, LoadOptions, Model};
use loft::engine::quant::nf4::Absmax;
use loft::engine::train::loss::causal_lm_loss;
use loft::engine::weights::Weights;
use sha2::{Digest, Sha256};
use support::loft;

fn qlora_dir() -> PathBuf {
    support::fixtures().join("qlora")
}

fn tiny_dir() -> PathBuf {
    qlora_dir().join("tiny-llama-bnb4")
}

fn load_folder(folder: &Path, base: BaseFormat) -> loft::engine::error::Result<Model> {
    let arch = Arch::from_config_file(&folder.join("config.json"))?;
    let weights = Weights::open_safetensors(&[folder.join("model.safetensors")])?;
    Model::load(
        &arch,
        &weights,
        &LoadOptions {
            base,
            ..LoadOptions::default()
        },
    )
}

fn load_tiny(base: BaseFormat) -> Model {
    load_folder(&tiny_dir(), base).unwrap()
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

const NF4_DQ: BaseFormat = BaseFormat::Nf4 { double_quant: true };

#[test]
fn bnb_checkpoint_loads_as_nf4_and_gives_transformers_logits() {
    let expected = load(&tiny_dir().join("expected.safetensors"));
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    for base in [
        NF4_DQ,
        BaseFormat::Nf4 {
            double_quant: false,
        },
        BaseFormat::Dense,
    ] {
        let model = load_tiny(base);
        let mut linears = 0;
        for linear in model.linears() {
            let quantized = matches!(&linear.weight, Frozen::Nf4(_));
            assert_eq!(
                quantized,
                base != BaseFormat::Dense,
                "{base:?}: {} is held {}",
                linear.path,
                if quantized { "in NF4" } else { "dense" }
            );
            if let Frozen::Nf4(q) = &linear.weight {
                // Kept exactly as stored: double-quantized, whatever double_quant asked for.
                assert!(matches!(q.absmax, Absmax::Double(_)), "{}", linear.path);
                assert_eq!(q.source_dtype, "float32");
            }
            linears += 1;
        }
        assert_eq!(linears, 14);
        let logits = model.forward(&ids, 0, None).unwrap();
        let diff = support::max_abs_diff(&logits, &expected["logits"]);
        println!("{base:?}: max |Δlogit| against transformers + bitsandbytes {diff:e}");
        assert!(
            diff < 1e-4,
            "{base:?}: logits differ from transformers + bitsandbytes by {diff}"
        );
    }
}

/// `lm_head` stays in the compute dtype under QLoRA, as transformers + bitsandbytes leave it.
#[test]
fn lm_head_is_not_quantized() {
    let folder = support::fixtures().join("tiny/qwen3");
    let dense = load_folder(&folder, BaseFormat::Dense).unwrap();
    let nf4 = load_folder(&folder, NF4_DQ).unwrap();
    assert!(!nf4.arch.tie_word_embeddings);
    assert!(nf4.linears().all(|l| matches!(l.weight, Frozen::Nf4(_))));
    let ids = Tensor::new(&[[1u32, 17, 200, 45]], &Device::Cpu).unwrap();
    let (a, b) = (&dense.lm_head().weight, &nf4.lm_head().weight);
    assert!(matches!(b, Frozen::Dense(_)), "lm_head was quantized");
    let (Frozen::Dense(a), Frozen::Dense(b)) = (a, b) else {
        unreachable!()
    };
    assert_eq!(support::max_abs_diff(a, b), 0.0);
    nf4.forward(&ids, 0, None).unwrap();
}

fn expected_lora() -> HashMap<String, Tensor> {
    load(&qlora_dir().join("tiny-llama-bnb4-lora/expected.safetensors"))
}

/// QLoRA against PEFT + bitsandbytes: the adapter PEFT made on the bitsandbytes model, attached to
/// the same checkpoint loaded as NF4. Tolerances: logits 2e-5 absolute, loss 1e-5, each gradient
/// 2e-5 of its largest entry (measured: 3.1e-6, 1e-6, 1.7e-6: f32 sums in another order, while the
/// dequantized weights are bitsandbytes' to the bit).
#[test]
fn qlora_on_the_bnb_checkpoint_gives_peft_logits_loss_and_gradients() {
    let mut model = load_tiny(NF4_DQ);
    adapter::load_peft(
        &mut model,
        &qlora_dir().join("tiny-llama-bnb4-lora/adapter"),
    )
    .unwrap();
    let exp = expected_lora();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = exp["labels"]
        .to_dtype(DType::F32)
        .unwrap()
        .ge(0f64)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let logits = model.forward(&ids, 0, None).unwrap();
    let diff = support::max_abs_diff(&logits, &exp["logits"]);
    println!("max |Δlogit| against PEFT {diff:e}");
    assert!(diff < 2e-5, "logits differ from PEFT's by {diff}");
    let (loss, _) = causal_lm_loss(&logits, &ids, &mask).unwrap();
    let (got, want) = (
        loss.to_scalar::<f32>().unwrap(),
        exp["loss"].to_vec1::<f32>().unwrap()[0],
    );
    assert!((got - want).abs() < 1e-5, "loss {got} vs PEFT's {want}");
    println!("loss {got} vs PEFT's {want}");
    let grads = loss.backward().unwrap();
    let gaps = support::adapter_gradient_gaps(&model, &grads, &exp);
    let mut worst = 0f32;
    for g in &gaps {
        worst = worst.max(g.diff / g.scale);
        assert!(
            g.diff <= 2e-5 * g.scale,
            "gradient of {} differs by {} (largest {})",
            g.key,
            g.diff,
            g.scale
        );
    }
    let checked = gaps.len();
    assert_eq!(checked, 28, "every PEFT gradient has a Loft twin");
    println!("largest gradient difference relative to the gradient's largest entry: {worst:e}");
    for linear in model.linears() {
        let Frozen::Nf4(_) = &linear.weight else {
            panic!("{} is not NF4", linear.path)
        };
    }
}

// ------------------------------------------------------------------------------ damaged checkpoints

type RawTensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn raw_tensors(path: &Path) -> RawTensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect()
}

fn write_raw(path: &Path, tensors: &RawTensors) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Load a copy of the tiny checkpoint after `change` edited its tensors; the error message.
fn load_damaged(change: impl FnOnce(&mut RawTensors)) -> String {
    let tmp = support::copy_to_temp(&tiny_dir());
    let file = tmp.path().join("model.safetensors");
    let mut tensors = raw_tensors(&file);
    change(&mut tensors);
    write_raw(&file, &tensors);
    let err = load_folder(tmp.path(), NF4_DQ).map(|_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors"), "names the file: {msg}");
    msg
}

const Q_PROJ: &str = "model.layers.0.self_attn.q_proj.weight";

/// `bnb_4bit_quant_storage=bfloat16` stores the same packed bytes viewed as bf16: read as bytes.
#[test]
fn packed_codes_stored_as_another_dtype_read_the_same() {
    let tmp = support::copy_to_temp(&tiny_dir());
    let file = tmp.path().join("model.safetensors");
    let mut tensors = raw_tensors(&file);
    for t in tensors.iter_mut().filter(|t| t.0.ends_with("_proj.weight")) {
        t.1 = safetensors::Dtype::BF16;
        t.2 = vec![t.3.len() / 2, 1];
    }
    write_raw(&file, &tensors);
    let ids = Tensor::new(&[[1u32, 17, 200, 45, 99]], &Device::Cpu).unwrap();
    let stored_as_bf16 = load_folder(tmp.path(), NF4_DQ).unwrap();
    let diff = support::max_abs_diff(
        &stored_as_bf16.forward(&ids, 0, None).unwrap(),
        &load_tiny(NF4_DQ).forward(&ids, 0, None).unwrap(),
    );
    assert_eq!(diff, 0.0);
}

fn find<'a>(
    t: &'a mut RawTensors,
    name: &str,
) -> &'a mut (String, safetensors::Dtype, Vec<usize>, Vec<u8>) {
    t.iter_mut().find(|x| x.0 == name).unwrap()
}

#[test]
fn damaged_or_unsupported_bnb_checkpoints_are_refused_with_reasons() {
    let msg = load_damaged(|t| t.retain(|x| x.0 != format!("{Q_PROJ}.nested_absmax")));
    assert!(
        msg.contains(&format!("{Q_PROJ}.nested_absmax")) && msg.contains("missing"),
        "{msg}"
    );

    let msg = load_damaged(|t| {
        let w = find(t, Q_PROJ);
        w.3.pop();
        w.2 = vec![w.3.len(), 1];
    });
    assert!(
        msg.contains(Q_PROJ) && msg.contains("packed 4-bit codes"),
        "{msg}"
    );

    let state = format!("{Q_PROJ}.quant_state.bitsandbytes__nf4");
    let msg = load_damaged(|t| {
        let s = find(t, &state);
        s.3 = b"{\"quant_type\": \"nf4\", \"blocksize\": 64,".to_vec();
        s.2 = vec![s.3.len()];
    });
    assert!(msg.contains(&state) && msg.contains("not JSON"), "{msg}");

    let msg = load_damaged(|t| {
        let s = find(t, &state);
        let text = String::from_utf8(s.3.clone())
            .unwrap()
            .replace("[72, 72]", "[72, 64]");
        s.3 = text.into_bytes();
        s.2 = vec![s.3.len()];
    });
    assert!(
        msg.contains(Q_PROJ) && msg.contains("config.json implies"),
        "{msg}"
    );

    let msg = load_damaged(|t| {
        let s = find(t, &state);
        s.0 = format!("{Q_PROJ}.quant_state.bitsandbytes__fp4");
    });
    assert!(msg.contains(Q_PROJ) && msg.contains("FP4"), "{msg}");

    // LLM.int8: an int8 weight with its scales and no 4-bit state.
    let msg = load_damaged(|t| {
        t.retain(|x| !x.0.starts_with(&format!("{Q_PROJ}.")));
        let w = find(t, Q_PROJ);
        *w = (
            Q_PROJ.into(),
            safetensors::Dtype::I8,
            vec![72, 72],
            vec![1; 72 * 72],
        );
        t.push((
            "model.layers.0.self_attn.q_proj.SCB".into(),
            safetensors::Dtype::F32,
            vec![72],
            vec![0; 4 * 72],
        ));
    });
    assert!(msg.contains(Q_PROJ) && msg.contains("LLM.int8"), "{msg}");
}

// ------------------------------------------------------------------------------------- real SmolLM2

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex(h)
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn smollm2_bnb() -> serde_json::Value {
    let text = std::fs::read_to_string(qlora_dir().join("smollm2-bnb4.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Loft quantizes the f32 weights it reads from the GGUF; bitsandbytes quantized the f32 weights
/// transformers read from it (gguf-py). First the inputs: every weight tensor, as f32, is the same to the
/// bit; then the outputs: every layer's packed codes, absmax codes, nested absmax and offset; then the
/// greedy answer.
#[test]
fn smollm2_quantized_by_loft_is_bitsandbytes_and_answers_the_same() {
    let reference = smollm2_bnb();
    let gguf_path = support::smollm2_gguf();
    let gguf = GgufModel::open(&gguf_path).unwrap();
    let weights = reference["weights_sha256"].as_object().unwrap();
    let mut differ = Vec::new();
    for (name, want) in weights {
        if !gguf.contains(name) {
            assert_eq!(
                name, "lm_head.weight",
                "only the tied lm_head is not stored"
            );
            continue;
        }
        let t = gguf.tensor(name).unwrap().to_dtype(DType::F32).unwrap();
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        if sha256_f32(&values) != want.as_str().unwrap() {
            differ.push(name.clone());
        }
    }
    assert!(
        differ.is_empty(),
        "Loft's GGUF dequantization differs from gguf-py's in {} tensors: {differ:?}",
        differ.len()
    );

    let arch = gguf.arch().clone();
    let model = Model::load(
        &arch,
        &Weights::from_gguf(gguf),
        &LoadOptions {
            base: NF4_DQ,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let quantized = reference["quantized_sha256"].as_object().unwrap();
    let mut checked = 0;
    for linear in model.linears() {
        let Frozen::Nf4(q) = &linear.weight else {
            panic!("{} is not NF4", linear.path)
        };
        let Absmax::Double(dq) = &q.absmax else {
            panic!("{} has no double quantization", linear.path)
        };
        let mut h = Sha256::new();
        h.update(&q.packed);
        h.update(&dq.codes);
        for s in &dq.scales {
            h.update(s.to_le_bytes());
        }
        h.update(dq.offset.to_le_bytes());
        assert_eq!(
            hex(h),
            quantized[&linear.path].as_str().unwrap(),
            "{}: Loft's NF4 bytes differ from bitsandbytes'",
            linear.path
        );
        checked += 1;
    }
    assert_eq!(checked, quantized.len());
    assert_eq!(checked, 210);

    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let sampling = Sampling {
        max_new_tokens: 32,
        ..Sampling::default()
    };
    let out = generate(
        &model,
        &ids(&reference["input_ids"]),
        &sampling,
        &[],
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let want = ids(&reference["greedy_ids"]);
    let same = out.tokens.iter().zip(&want).filter(|(a, b)| a == b).count();
    assert_eq!(
        out.tokens, want,
        "greedy answer differs from transformers + bitsandbytes ({same}/32 equal)"
    );
}

// ------------------------------------------------------------------------------------------ the CLI

/// `loft generate` on the bitsandbytes folder answers what transformers + bitsandbytes answered.
#[test]
fn generate_on_a_bnb_folder_gives_transformers_greedy_answer() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("generate.json")).unwrap())
            .unwrap();
    let prompt = expected["messages"][0]["content"].as_str().unwrap();
    let out = loft(&[
        "generate",
        "--model",
        tiny_dir().to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "16",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected["greedy_text"].as_str().unwrap().trim()
    );
}

/// `loft inspect` names the quantization, its cost per weight and the size on disk.
#[test]
fn inspect_names_the_bnb_quantization() {
    let out = loft(&["inspect", "--model", tiny_dir().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quantization  bitsandbytes 4-bit NF4 with double quantization: 14 linear layers, 74304 weights at"),
        "{text}"
    );
    assert!(text.contains("size on disk  354.0 KiB"), "{text}");
    let out = loft(&["inspect", "--model", tiny_dir().to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &info["stored_quantization"];
    assert_eq!(q["quant_type"], "nf4");
    assert_eq!(q["double_quant"], true);
    assert_eq!(q["quantized_weights"], 74304);
    // Everything stored for the 4-bit layers: packed codes, absmax, maps, state (a layer's 1 KiB
    // dynamic map weighs a lot in layers this small: 6 bits per weight, 4.147 for SmolLM2).
    let linear_bytes: usize = raw_tensors(&tiny_dir().join("model.safetensors"))
        .iter()
        .filter(|(name, ..)| name.contains("_proj.weight"))
        .map(|(.., data)| data.len())
        .sum();
    assert_eq!(q["quantized_bytes"], linear_bytes as u64);
    assert_eq!(info["arch"]["quantization"]["bits"], 4);
}

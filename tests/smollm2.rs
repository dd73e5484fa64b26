//! The real SmolLM2-135M-Instruct, from its GGUF and from a Hugging Face folder: Loft's tokens,
//! last-token logits, greedy answers and dequantized weights match transformers (fixtures by
//! scripts/make_model_fixtures.py).

mod support;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use loft::engine::chat::{ChatMessage, TemplateOrigin};
use loft::engine::generate::{generate, Sampling};
use loft::engine::gguf::GgufModel;
use loft::engine::model::{BaseFormat, Frozen, LoadOptions};
use loft::engine::source::{self, LoadedModel, ModelFiles, ModelSource};
use loft::engine::ModelError;

fn messages(prompt: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(prompt["messages"].clone()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Everything transformers recorded, checked against one loaded model.
fn check_against_transformers(loaded: &LoadedModel, label: &str) {
    let reference = support::smollm2_reference();
    let logits = candle_core::safetensors::load(
        support::fixtures().join("smollm2/logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (i, prompt) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let text = loaded.template.render(&messages(prompt), true).unwrap();
        assert_eq!(
            text,
            prompt["text"].as_str().unwrap(),
            "{label}: prompt {i} renders differently"
        );
        let encoding = loaded.tokenizer.encode(text.as_str(), false).unwrap();
        let prompt_ids = ids(&prompt["input_ids"]);
        assert_eq!(
            encoding.get_ids(),
            prompt_ids.as_slice(),
            "{label}: prompt {i} tokenizes differently"
        );

        let input = Tensor::new(prompt_ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = loaded
            .model
            .forward_last(&input, 0, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let want = &logits[&format!("prompt{i}")];
        let diff: f32 = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            diff < 1e-3,
            "{label}: prompt {i} last-token logits differ by {diff}"
        );

        let sampling = Sampling {
            max_new_tokens: 32,
            ..Sampling::default()
        };
        let out = generate(
            &loaded.model,
            &prompt_ids,
            &sampling,
            &loaded.stop_tokens,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            out.tokens,
            ids(&prompt["greedy_ids"]),
            "{label}: prompt {i} greedy answer differs"
        );
    }
}

#[test]
fn gguf_matches_transformers() {
    let gguf = support::smollm2_gguf();
    let files = source::resolve(
        &ModelSource::parse(gguf.to_str().unwrap()).unwrap(),
        &mut offline_resolve(),
    )
    .unwrap();
    let info = source::inspect(&files).unwrap();
    assert_eq!(info.arch.model_type, "llama");
    assert_eq!(info.parameters, 134_515_008);
    assert_eq!((info.vocab_size, info.context_length), (49152, 8192));
    assert_eq!(info.chat_template, TemplateOrigin::Model);
    assert_eq!(info.dtype.as_deref(), Some("Q4_1"));
    let model = GgufModel::open(&gguf).unwrap();
    assert_weights_match_transformers("gguf", |name| {
        model.contains(name).then(|| model.tensor(name).unwrap())
    });
    let loaded = source::load(&files, &LoadOptions::default()).unwrap();
    assert!(
        loaded.stop_tokens.contains(&2),
        "<|im_end|> (2) must stop answers: {:?}",
        loaded.stop_tokens
    );
    check_against_transformers(&loaded, "gguf");
}

#[test]
fn hf_folder_matches_transformers() {
    let folder = support::smollm2_hf_folder();
    // The folder's weights are Loft's dequantisation of the GGUF: check them against transformers' own.
    let weights =
        candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_weights_match_transformers("hf folder", |name| weights.get(name).cloned());
    let files = ModelFiles::from_folder(&folder).unwrap();
    let loaded = source::load(&files, &LoadOptions::default()).unwrap();
    check_against_transformers(&loaded, "hf folder");
}

/// `--quant source`: every decoder projection keeps the GGUF's own Q4_1 blocks (a fifth of its f32
/// size, never a dense copy), their values are exactly those of the dense load (q/k rows back in
/// Hugging Face's order), and the logits are the dense load's. Safetensors have no such blocks.
#[test]
fn gguf_source_blocks_give_the_dense_model() {
    let gguf = support::smollm2_gguf();
    let files = ModelFiles::from_gguf(&gguf).unwrap();
    let dense = source::load(&files, &LoadOptions::default()).unwrap();
    let blocks = source::load(
        &files,
        &LoadOptions {
            base: BaseFormat::Source,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let (mut dense_bytes, mut block_bytes, mut count) = (0, 0, 0);
    for (d, q) in dense.model.linears().zip(blocks.model.linears()) {
        assert_eq!(d.path, q.path);
        let Frozen::Ggml(m) = &q.weight else {
            panic!("{} is not held in its GGUF blocks", q.path);
        };
        assert_eq!(m.dtype(), candle_core::quantized::GgmlDType::Q4_1);
        let Frozen::Dense(w) = &d.weight else {
            panic!("{} is not dense in the dense load", d.path);
        };
        let values = q.weight.to_dense(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            support::max_abs_diff(&values, w),
            0.0,
            "{}: dequantized blocks differ from the dense load",
            q.path
        );
        dense_bytes += d.weight.bytes();
        block_bytes += q.weight.bytes();
        count += 1;
    }
    assert_eq!(count, 30 * 7);
    // Q4_1: 20 bytes per 32 weights, against 128 in f32.
    assert_eq!(block_bytes * 128, dense_bytes * 20);

    let prompt = dense
        .template
        .render(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let ids = dense.tokenizer.encode(prompt.as_str(), false).unwrap();
    let input = Tensor::new(ids.get_ids(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = dense.model.forward(&input, 0, None).unwrap();
    let got = blocks.model.forward(&input, 0, None).unwrap();
    let diff = support::max_abs_diff(&got, &want);
    assert!(diff <= 1e-4, "logits differ by {diff}");

    let folder = ModelFiles::from_folder(&support::smollm2_hf_folder()).unwrap();
    let refused = source::load(
        &folder,
        &LoadOptions {
            base: BaseFormat::Source,
            ..LoadOptions::default()
        },
    );
    match refused {
        Err(e @ ModelError::InvalidInput { what: "quant", .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("not a GGUF file") && message.contains("--quant nf4"),
                "{message}"
            );
        }
        Err(other) => panic!("wrong refusal: {other}"),
        Ok(_) => panic!("safetensors weights loaded with --quant source"),
    }
}

/// Every tensor `get` returns (`None`: not stored, allowed only for the tied lm_head) matches the
/// checksums transformers recorded: sum, sum of squares, first values, and for q/k the first values of
/// rows that llama.cpp's permutation moves, which sums and first values cannot see.
fn assert_weights_match_transformers(label: &str, get: impl Fn(&str) -> Option<Tensor>) {
    let reference = support::smollm2_reference();
    let to_f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let mut rows_checked = 0;
    for (name, sums) in reference["weights"].as_object().unwrap() {
        let Some(t) = get(name) else {
            assert_eq!(name, "lm_head.weight", "{label}: tensor {name} missing");
            continue;
        };
        let flat = t
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let sum: f64 = flat.sum_all().unwrap().to_scalar().unwrap();
        let sumsq: f64 = flat.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        let want_sumsq = sums["sumsq"].as_f64().unwrap();
        assert!(
            (sumsq - want_sumsq).abs() <= 1e-6 * want_sumsq.max(1.0),
            "{label}: {name}: sum of squares {sumsq} vs {want_sumsq}"
        );
        assert!(
            (sum - sums["sum"].as_f64().unwrap()).abs() <= 1e-6 * want_sumsq.max(1.0),
            "{label}: {name}: sum {sum}"
        );
        let head = first_values(&flat, 4);
        assert_eq!(
            head,
            to_f32s(&sums["head"]),
            "{label}: {name}: first values differ"
        );
        let Some(rows) = sums.get("rows").and_then(|r| r.as_object()) else {
            continue;
        };
        for (row, want) in rows {
            let got = first_values(&t.get(row.parse::<usize>().unwrap()).unwrap(), 8);
            assert_eq!(
                got,
                to_f32s(want),
                "{label}: {name}: row {row} differs from transformers' (q/k rows not unpermuted?)"
            );
            rows_checked += 1;
        }
    }
    // SmolLM2 has 30 layers: two rows each of q_proj and k_proj.
    assert_eq!(
        rows_checked,
        30 * 2 * 2,
        "{label}: reference.json lacks q/k rows"
    );
}

fn offline_resolve() -> source::Resolve<'static> {
    static CANCEL: AtomicBool = AtomicBool::new(false);
    source::Resolve {
        hub: Default::default(),
        offline: true,
        on_download: Box::leak(Box::new(|_| {})),
        cancel: &CANCEL,
    }
}

/// The first `n` values of a 1-d tensor, as f32.
fn first_values(t: &candle_core::Tensor, n: usize) -> Vec<f32> {
    t.narrow(0, 0, n)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

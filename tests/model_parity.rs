//! Forward parity with transformers on tiny random models of every supported architecture
//! (fixtures made by scripts/make_model_fixtures.py), and the loader's answers to broken folders.

mod support;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use loft::engine::arch::Arch;
use loft::engine::model::{KvCache, LoadOptions, Model};
use loft::engine::source::{ModelFiles, ModelSource, WeightFiles};
use loft::engine::weights::Weights;

const ARCHS: [&str; 5] = ["llama", "mistral", "qwen2", "qwen3", "gemma3"];

fn load_folder(folder: &Path) -> loft::engine::Result<Model> {
    let files = ModelFiles::from_folder(folder)?;
    let arch = Arch::from_config_file(files.config.as_deref().unwrap())?;
    let WeightFiles::Safetensors(paths) = &files.weights else {
        panic!("expected safetensors")
    };
    Model::load(
        &arch,
        &Weights::open_safetensors(paths)?,
        &LoadOptions::default(),
    )
}

fn expected(folder: &Path) -> (Tensor, Tensor) {
    let t =
        candle_core::safetensors::load(folder.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = t["input_ids"].to_dtype(DType::U32).unwrap();
    (ids, t["logits"].clone())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    support::max_abs_diff(a, b)
}

#[test]
fn tiny_models_match_transformers_logits() {
    for arch in ARCHS {
        let folder = support::fixtures().join("tiny").join(arch);
        let model = load_folder(&folder).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let (ids, want) = expected(&folder);
        let got = model.forward(&ids, 0, None).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff < 1e-4,
            "{arch}: logits differ from transformers by {diff}"
        );
    }
}

#[test]
fn transformers4_config_style_gives_the_same_model() {
    let folder = support::fixtures().join("tiny").join("llama");
    let tmp = support::copy_to_temp(&folder);
    std::fs::copy(
        folder.join("config.tf4.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let tf4 = Arch::from_config_file(&tmp.path().join("config.json")).unwrap();
    let tf5 = Arch::from_config_file(&folder.join("config.json")).unwrap();
    assert_eq!(tf4.rope, tf5.rope);
    let model = load_folder(tmp.path()).unwrap();
    let (ids, want) = expected(&folder);
    assert!(max_abs_diff(&model.forward(&ids, 0, None).unwrap(), &want) < 1e-4);
}

#[test]
fn sharded_folder_is_found_through_its_index() {
    let folder = support::fixtures().join("tiny").join("qwen2");
    let files = ModelFiles::from_folder(&folder).unwrap();
    let WeightFiles::Safetensors(paths) = files.weights else {
        panic!()
    };
    assert_eq!(paths.len(), 3, "{paths:?}");
}

#[test]
fn incremental_decoding_with_cache_matches_full_forward() {
    // gemma3 has a 4-token sliding window: the cache path must mask old keys exactly like the full pass.
    for arch in ["llama", "gemma3"] {
        let folder = support::fixtures().join("tiny").join(arch);
        let model = load_folder(&folder).unwrap();
        let (ids, _) = expected(&folder);
        let full = model.forward(&ids, 0, None).unwrap();
        let mut cache = KvCache::new(&model);
        let n = ids.dim(1).unwrap();
        let prefix = model
            .forward(&ids.narrow(1, 0, 5).unwrap(), 0, Some(&mut cache))
            .unwrap();
        let mut steps = vec![prefix];
        for pos in 5..n {
            steps.push(
                model
                    .forward(&ids.narrow(1, pos, 1).unwrap(), pos, Some(&mut cache))
                    .unwrap(),
            );
        }
        let stepped = Tensor::cat(&steps, 1).unwrap();
        let diff = max_abs_diff(&stepped, &full);
        assert!(diff < 1e-4, "{arch}: cached decoding differs by {diff}");
        assert_eq!(cache.len(), n);
        let last = model.forward_last(&ids, 0, None).unwrap();
        let want_last = full.narrow(1, n - 1, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&last, &want_last) < 1e-5);
        assert_eq!(
            last.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
            want_last
                .argmax(D::Minus1)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
        );
    }
}

#[test]
fn pickle_weights_are_refused_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        support::fixtures().join("tiny/llama/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"not really a pickle").unwrap();
    let msg = ModelFiles::from_folder(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("safetensors"),
        "{msg}"
    );
    let msg = ModelSource::parse(tmp.path().join("pytorch_model.bin").to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pickle"), "{msg}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let tmp = support::copy_to_temp(&support::fixtures().join("tiny/llama"));
    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&weights, &bytes[..cut]).unwrap();
        let msg = match load_folder(tmp.path()) {
            Ok(_) => panic!("a file cut to {cut} bytes loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("model.safetensors") && msg.contains("download it again"),
            "{cut}: {msg}"
        );
    }
}

#[test]
fn config_problems_name_the_file_and_field() {
    let tmp = support::copy_to_temp(&support::fixtures().join("tiny/llama"));
    let config = tmp.path().join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["vocab_size"] = serde_json::json!(300);
    std::fs::write(&config, value.to_string()).unwrap();
    let msg = load_folder(tmp.path()).err().unwrap().to_string();
    assert!(
        msg.contains("embed_tokens") && msg.contains("shape"),
        "{msg}"
    );
    std::fs::write(&config, "{\"model_type\": \"llama\",\n  \"hidden_size\": }").unwrap();
    let msg = load_folder(tmp.path()).err().unwrap().to_string();
    assert!(msg.contains("config.json:2:"), "{msg}");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(support::fixtures().join("tiny/llama/config.json"), &config).unwrap();
    let msg = ModelFiles::from_folder(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("no model.safetensors"), "{msg}");
}

#[test]
fn missing_shard_is_named() {
    let tmp = support::copy_to_temp(&support::fixtures().join("tiny/qwen2"));
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    let msg = ModelFiles::from_folder(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("model-00002-of-00003.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}

/// Sequences of different lengths decoded together (each with its own cache, at its own position)
/// give the logits a full forward pass gives each of them alone, on every architecture; Gemma 3's
/// sliding window (4 positions in the fixture) is passed by the longer sequences.
#[test]
fn batched_decoding_matches_full_forward_passes() {
    let last_logits = |model: &Model, ids: &[u32]| {
        let ids = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model
            .forward_last(&ids, 0, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    for name in ARCHS {
        let model = support::tiny_model(name);
        assert!(model.decodes_in_batches());
        let prompts: [&[u32]; 3] = [&[1, 5, 9, 2], &[3], &[7, 7, 4, 11, 12, 6, 8]];
        let next: [[u32; 3]; 3] = [[4, 8, 1], [2, 2, 9], [10, 3, 5]];
        let mut caches = Vec::new();
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for p in prompts {
            let (logits, cache) = model.prefill(p).unwrap();
            assert_eq!(cache.len(), p.len());
            let gap = support::max_abs_diff(&logits, &last_logits(&model, p));
            assert!(gap < 1e-4, "{name}: prefill differs by {gap}");
            caches.push(cache);
            seqs.push(p.to_vec());
        }
        for step in 0..3 {
            let tokens: Vec<u32> = next.iter().map(|n| n[step]).collect();
            let logits = model.decode_step(&tokens, &mut caches).unwrap();
            for (i, seq) in seqs.iter_mut().enumerate() {
                seq.push(tokens[i]);
                let gap = support::max_abs_diff(&logits.get(i).unwrap(), &last_logits(&model, seq));
                assert!(gap < 1e-4, "{name}: sequence {i}, step {step}: {gap}");
                assert_eq!(caches[i].len(), seq.len());
            }
        }
    }
    let model = support::tiny_model("llama");
    let (_, cache) = model.prefill(&[1, 2]).unwrap();
    let err = model.decode_step(&[1, 2], &mut [cache]).unwrap_err();
    assert!(
        err.to_string().contains("2 tokens for 1 sequences"),
        "{err}"
    );
}

/// Answering many prompts together gives each the answer it gets alone, whichever prompts share a
/// batch and whatever order they finish in (continuous batching: 5 prompts through 2 slots).
#[test]
fn batched_generation_gives_the_answers_of_one_at_a_time() {
    use loft::engine::generate::{generate, generate_many, Sampling};
    use std::sync::atomic::AtomicBool;
    let model = support::tiny_model("qwen3");
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 2],
        vec![3],
        vec![7, 7, 4, 11, 12, 6, 8],
        vec![20, 21],
        vec![9, 9, 9],
    ];
    let cancel = AtomicBool::new(false);
    for sampling in [
        Sampling {
            max_new_tokens: 12,
            ..Sampling::default()
        },
        Sampling {
            max_new_tokens: 12,
            temperature: Some(0.9),
            top_p: 0.95,
            seed: 5,
        },
    ] {
        // Token 0 stops some answers early, so sequences leave the batch at different steps.
        let stops = [0u32, 17];
        let mut batched = vec![None; prompts.len()];
        generate_many(
            &model,
            &prompts,
            &sampling,
            &stops,
            2,
            &cancel,
            &mut |i, g| batched[i] = Some(g.tokens),
        )
        .unwrap();
        let mut alone = vec![None; prompts.len()];
        generate_many(
            &model,
            &prompts,
            &sampling,
            &stops,
            1,
            &cancel,
            &mut |i, g| alone[i] = Some(g.tokens),
        )
        .unwrap();
        assert_eq!(batched, alone, "{sampling:?}");
        if sampling.temperature.is_none() {
            let first =
                generate(&model, &prompts[0], &sampling, &stops, &cancel, &mut |_| {}).unwrap();
            assert_eq!(batched[0].as_ref(), Some(&first.tokens));
        }
    }
    let err = generate_many(
        &model,
        &[vec![1], vec![]],
        &Sampling::default(),
        &[],
        4,
        &cancel,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("prompt 2"), "{err}");
}

/// An adapter merged into the weights gives the logits of the adapter applied beside them, and the
/// base comes back exactly when the merge is undone.
#[test]
fn merged_adapters_give_the_unmerged_logits_and_restore_the_base() {
    use loft::engine::model::LoraConfig;
    let mut model = support::tiny_model("llama");
    let ids = Tensor::new(&[[1u32, 8, 3, 12, 4]], &Device::Cpu).unwrap();
    let base = model.forward(&ids, 0, None).unwrap();
    let config = LoraConfig::default();
    // q_proj and o_proj are 64 × 64 in the tiny model; the other modules keep no adapter.
    let attached = model
        .attach_lora_weights(&config, |path| {
            let square = path.ends_with("q_proj") || path.ends_with("o_proj");
            let (r, dim) = (config.r, 64);
            let a = Tensor::randn(0f32, 0.2, (r, dim), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 0.2, (dim, r), &Device::Cpu).unwrap();
            square.then_some((a, b))
        })
        .unwrap();
    assert_eq!(attached, 4);
    let unmerged = model.forward(&ids, 0, None).unwrap();
    assert!(
        support::max_abs_diff(&unmerged, &base) > 1e-3,
        "the adapter changes the logits"
    );
    let merged_base = model.merge_adapters().unwrap();
    assert_eq!(model.adapters().count(), 0);
    let merged = model.forward(&ids, 0, None).unwrap();
    let gap = support::max_abs_diff(&merged, &unmerged);
    assert!(gap < 1e-4, "merged logits differ by {gap}");
    model.restore_base(merged_base).unwrap();
    let again = model.forward(&ids, 0, None).unwrap();
    assert_eq!(support::max_abs_diff(&again, &unmerged), 0.0);
    model.remove_adapters().unwrap();
    assert_eq!(
        support::max_abs_diff(&model.forward(&ids, 0, None).unwrap(), &base),
        0.0
    );
}

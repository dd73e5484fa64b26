//! LoRA adapters in PEFT's format, so that `PeftModel.from_pretrained` loads what Loft saves and Loft
//! loads what PEFT saved: `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight`
//! (r×in) and `.lora_B.weight` (out×r), and `adapter_config.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::error::{read_json, ModelError, Result};
use super::fsutil::{produce_atomic, write_atomic};
use super::model::lora::ALL_LINEAR_TARGETS;
use super::model::{LoraConfig, Model};

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

pub fn peft_key(module_path: &str, matrix: &str) -> String {
    format!("base_model.model.{module_path}.lora_{matrix}.weight")
}

/// Write the model's adapters to `dir` (created if needed), each file atomically.
pub fn save_peft(model: &Model, config: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (path, adapter) in model.adapters() {
        let to_cpu = |v: &candle_core::Var| v.as_tensor().to_device(&Device::Cpu);
        tensors.insert(peft_key(path, "A"), to_cpu(&adapter.a)?);
        tensors.insert(peft_key(path, "B"), to_cpu(&adapter.b)?);
    }
    let weights = dir.join(WEIGHTS_FILE);
    produce_atomic(
        &weights,
        |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| ModelError::Safetensors {
                path: weights.clone(),
                message: e.to_string(),
            })
        },
        |e| ModelError::io(&weights, e),
    )?;
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&peft_config_json(config, base_model))
        .map_err(|e| ModelError::json(&config_path, &e))?;
    write_atomic(&config_path, text.as_bytes()).map_err(|e| ModelError::io(&config_path, e))
}

/// adapter_config.json with the fields PEFT writes for a plain LoRA adapter.
pub fn peft_config_json(config: &LoraConfig, base_model: &str) -> Value {
    let mut targets = config.targets.clone();
    targets.sort();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
    })
}

/// A PEFT adapter folder's config; `base_model_name_or_path` comes back beside it.
pub fn read_peft_config(dir: &Path) -> Result<(LoraConfig, Option<String>)> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(ModelError::NotFound(format!(
            "{}: no {CONFIG_FILE}; pick a LoRA adapter folder (it holds {CONFIG_FILE} and {WEIGHTS_FILE})",
            dir.display()
        )));
    }
    let v = read_json(&path)?;
    let field = |name: &str, problem: &str| ModelError::field(&path, name, problem);
    let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(field(
            "peft_type",
            &format!("is `{peft_type}`; Loft loads LoRA adapters only"),
        ));
    }
    let unsupported = |name: &str, ok: &dyn Fn(&Value) -> bool, what: &str| match v.get(name) {
        Some(x) if !x.is_null() && !ok(x) => Err(field(
            name,
            &format!("{what}, which Loft does not support yet"),
        )),
        _ => Ok(()),
    };
    unsupported("use_dora", &|x| x == &json!(false), "asks for DoRA")?;
    unsupported(
        "fan_in_fan_out",
        &|x| x == &json!(false),
        "is set (GPT-2 style Conv1D layers)",
    )?;
    unsupported("bias", &|x| x == &json!("none"), "trains biases")?;
    unsupported(
        "modules_to_save",
        &|x| x.as_array().is_some_and(|a| a.is_empty()),
        "saves whole modules",
    )?;
    unsupported(
        "rank_pattern",
        &|x| x.as_object().is_some_and(|o| o.is_empty()),
        "sets per-module ranks",
    )?;
    unsupported(
        "alpha_pattern",
        &|x| x.as_object().is_some_and(|o| o.is_empty()),
        "sets per-module alphas",
    )?;
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| field("r", "is missing or not a whole number"))?;
    let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let mut targets: Vec<String> = match v.get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) if s == "all-linear" => {
            ALL_LINEAR_TARGETS.iter().map(|s| s.to_string()).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        _ => return Err(field("target_modules", "is missing")),
    };
    targets.sort();
    let config = LoraConfig {
        r: r as usize,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets,
        use_rslora: v
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let base = v
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((config, base))
}

/// Load a PEFT adapter into the model. Every tensor in the file must find its module and every
/// adapted module must get both matrices, with the right shapes.
pub fn load_peft(model: &mut Model, dir: &Path) -> Result<LoraConfig> {
    let (config, _) = read_peft_config(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let file_err = |message: String| ModelError::Safetensors {
        path: weights_path.clone(),
        message,
    };
    if !weights_path.is_file() {
        return Err(ModelError::NotFound(format!(
            "{}: the adapter's weights are missing (Loft does not read adapter_model.bin: convert it to safetensors)",
            weights_path.display()
        )));
    }
    let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| file_err(format!("not a readable safetensors file: {e}")))?;
    let mut problems: Vec<String> = Vec::new();
    let attached = model.attach_lora_weights(&config, |path| {
        let a = tensors.remove(&peft_key(path, "A"));
        let b = tensors.remove(&peft_key(path, "B"));
        match (a, b) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            _ => {
                problems.push(format!("{path}: has only one of lora_A / lora_B"));
                None
            }
        }
    });
    let count = match attached {
        Ok(count) => count,
        Err(e) => {
            problems.push(super::weights::root_message(&e));
            0
        }
    };
    let mut unexpected: Vec<&String> = tensors.keys().collect();
    unexpected.sort();
    if !unexpected.is_empty() {
        problems.push(format!(
            "no module in this model for: {}",
            join_some(&unexpected)
        ));
    }
    if count == 0 && problems.is_empty() {
        problems.push("it adapts no module of this model".into());
    }
    if !problems.is_empty() {
        return Err(file_err(format!(
            "this adapter does not fit the model ({}); was it trained on a different base model?",
            problems.join("; ")
        )));
    }
    Ok(config)
}

fn join_some(items: &[&String]) -> String {
    let shown: Vec<&str> = items.iter().take(5).map(|s| s.as_str()).collect();
    match items.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

/// Accept an adapter folder or a run folder (whose final adapter is in `adapter/`).
pub fn adapter_dir(path: &Path) -> PathBuf {
    if path.join(CONFIG_FILE).is_file() {
        return path.to_path_buf();
    }
    let inner = path.join("adapter");
    if inner.join(CONFIG_FILE).is_file() {
        return inner;
    }
    path.to_path_buf()
}

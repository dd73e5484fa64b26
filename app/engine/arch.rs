//! What a model is, read from its config (config.json or GGUF metadata) without loading any weight:
//! enough to build the decoder, count parameters and estimate memory.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

pub const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, gemma3 (gemma3_text)";

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Some(match model_type {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma3" | "gemma3_text" => Family::Gemma3,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' "linear").
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama 3 scaling in GGUF (`rope_freqs.weight`).
    Factors {
        factors: Vec<f32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// The inverse frequencies for a head of `head_dim`, as transformers' rope init computes them (in f32).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::Factors { factors } => base
                .iter()
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, d)| f / d)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *old as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Everything the decoder needs to know about a model's shape and numerics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arch {
    pub family: Family,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    /// Rope of the sliding-window layers where it differs (Gemma 3's local base frequency).
    pub local_rope: Option<Rope>,
    /// Bias on q/k/v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` only).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of each query and key head before rope (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norm weights stored as an offset from one: `x * (1 + w)` (Gemma).
    pub norm_plus_one: bool,
    /// Extra norms after attention and around the MLP (Gemma 3).
    pub sandwich_norms: bool,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden_size)).
    pub embedding_scale: Option<f64>,
    /// Multiplier of q·k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar^-1/2).
    pub attention_scale: f64,
    pub attn_logit_softcap: Option<f64>,
    pub final_logit_softcap: Option<f64>,
    pub sliding_window: Option<usize>,
    /// Per layer: whether it attends only within `sliding_window`.
    pub layer_is_sliding: Vec<bool>,
    /// The dtype the weights were saved in (`torch_dtype`/`dtype` in config.json, or the GGUF's quantisation).
    pub stored_dtype: Option<String>,
    /// How the checkpoint's weights were published quantized (config.json's `quantization_config`).
    pub quantization: Option<Quantization>,
}

/// SmolLM2-135M's architecture, for unit tests that size runs.
#[cfg(test)]
pub(crate) fn smollm2_for_tests() -> Arch {
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": true
    });
    Arch::from_config(&config, Path::new("config.json")).expect("a valid config")
}

/// A checkpoint published quantized, as config.json's `quantization_config` describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quantization {
    /// `quant_method`, e.g. "bitsandbytes".
    pub method: String,
    /// 4 or 8 (bitsandbytes' `load_in_4bit` / `load_in_8bit`); 0 when the config does not say.
    pub bits: u8,
    /// bitsandbytes 4-bit: "nf4" or "fp4".
    pub quant_type: Option<String>,
    /// bitsandbytes 4-bit: `bnb_4bit_use_double_quant`.
    pub double_quant: bool,
}

impl Quantization {
    fn from_config(value: &Value) -> Option<Quantization> {
        let q = value.get("quantization_config")?;
        let flag = |k: &str| q.get(k).and_then(Value::as_bool).unwrap_or(false);
        let text = |k: &str| q.get(k).and_then(Value::as_str).map(str::to_string);
        let bits = match (
            flag("load_in_4bit") || flag("_load_in_4bit"),
            flag("load_in_8bit") || flag("_load_in_8bit"),
        ) {
            (true, _) => 4,
            (_, true) => 8,
            _ => q.get("bits").and_then(Value::as_u64).unwrap_or(0).min(255) as u8,
        };
        Some(Quantization {
            method: text("quant_method").unwrap_or_else(|| "unknown".into()),
            bits,
            quant_type: text("bnb_4bit_quant_type"),
            double_quant: flag("bnb_4bit_use_double_quant"),
        })
    }
}

impl Arch {
    /// Parameters in the model as transformers counts them (tied embeddings counted once).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let hd = self.head_dim as u64;
        let q = self.num_heads as u64 * hd;
        let kv = self.num_kv_heads as u64 * hd;
        let inter = self.intermediate_size as u64;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * hd;
        }
        let mut mlp = 3 * h * inter;
        if self.mlp_bias {
            mlp += 2 * inter + h;
        }
        let norms = if self.sandwich_norms { 4 * h } else { 2 * h };
        let per_layer = attn + mlp + norms;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + per_layer * self.num_layers as u64 + h + head
    }

    /// (in, out) features of a projection named as in Hugging Face (`q_proj` … `down_proj`).
    pub fn projection_shape(&self, module: &str) -> Option<(usize, usize)> {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let inter = self.intermediate_size;
        Some(match module {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, inter),
            "down_proj" => (inter, h),
            _ => return None,
        })
    }

    /// Trainable LoRA parameters for rank `r` on `targets`, without loading weights: r·(in + out) per
    /// targeted projection in every layer.
    pub fn lora_parameter_count(&self, targets: &[String], r: usize) -> u64 {
        let per_layer: usize = targets
            .iter()
            .filter_map(|t| self.projection_shape(t))
            .map(|(i, o)| r * (i + o))
            .sum();
        (per_layer * self.num_layers) as u64
    }

    /// Read config.json (transformers 4 or 5 style).
    pub fn from_config_file(path: &Path) -> Result<Arch> {
        let value = super::error::read_json(path)?;
        Arch::from_config(&value, path)
    }

    pub fn from_config(value: &Value, path: &Path) -> Result<Arch> {
        let top = Fields {
            value,
            path,
            prefix: "",
        };
        let model_type = top.req_str("model_type")?.to_string();
        let family =
            Family::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArch {
                model_type: model_type.clone(),
                supported: SUPPORTED.into(),
            })?;
        // Multimodal Gemma 3 keeps the language model's settings under text_config.
        let cfg = match (model_type.as_str(), value.get("text_config")) {
            ("gemma3", Some(text)) => Fields {
                value: text,
                path,
                prefix: "text_config.",
            },
            _ => top,
        };
        let hidden_size = cfg.req_usize("hidden_size")?;
        let num_heads = cfg.req_usize("num_attention_heads")?;
        let num_layers = cfg.req_usize("num_hidden_layers")?;
        let head_dim = cfg
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_heads.max(1));
        let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(cfg.err(
                "num_key_value_heads",
                format!("must divide num_attention_heads ({num_heads}) and be at least 1"),
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(cfg.err(
                "head_dim",
                format!("must be even and positive, is {head_dim}"),
            ));
        }
        let gemma = family == Family::Gemma3;
        let (rope, local_rope) = parse_rope(&cfg, gemma)?;
        let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
        let sliding_window = match family {
            Family::Mistral | Family::Gemma3 => cfg.opt_usize("sliding_window")?,
            // Qwen2 ships a sliding_window value but only uses it when use_sliding_window is set,
            // which no released checkpoint does; Loft attends fully, as transformers does then.
            _ => None,
        };
        let layer_is_sliding = layer_types(&cfg, family, num_layers, sliding_window)?;
        let activation_name = cfg
            .opt_str("hidden_activation")?
            .or(cfg.opt_str("hidden_act")?)
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let activation = match activation_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            other => {
                return Err(cfg.err(
                    "hidden_act",
                    format!("`{other}` is not supported (silu, gelu_pytorch_tanh)"),
                ))
            }
        };
        let attention_scale = match cfg.opt_f64("query_pre_attn_scalar")? {
            Some(s) if gemma => s.powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        };
        let tie_default = gemma;
        let tie_word_embeddings = top
            .opt_bool("tie_word_embeddings")?
            .or(cfg.opt_bool("tie_word_embeddings")?)
            .unwrap_or(tie_default);
        let stored_dtype = top
            .opt_str("torch_dtype")?
            .or(top.opt_str("dtype")?)
            .or(cfg.opt_str("torch_dtype")?)
            .or(cfg.opt_str("dtype")?)
            .map(str::to_string);
        Ok(Arch {
            family,
            model_type,
            vocab_size: cfg.req_usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.req_usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope,
            local_rope,
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: matches!(family, Family::Llama) && attention_bias,
            mlp_bias: cfg.opt_bool("mlp_bias")?.unwrap_or(false),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            norm_plus_one: gemma,
            sandwich_norms: gemma,
            activation,
            tie_word_embeddings,
            embedding_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            attention_scale,
            attn_logit_softcap: cfg.opt_f64("attn_logit_softcapping")?,
            final_logit_softcap: cfg.opt_f64("final_logit_softcapping")?,
            sliding_window,
            layer_is_sliding,
            stored_dtype,
            quantization: Quantization::from_config(value),
        })
    }
}

/// Which layers use the sliding window: `layer_types` (newer configs), Gemma 3's
/// `sliding_window_pattern` (every Nth layer is global), or all layers when a window is set.
fn layer_types(
    cfg: &Fields,
    family: Family,
    num_layers: usize,
    window: Option<usize>,
) -> Result<Vec<bool>> {
    if window.is_none() {
        return Ok(vec![false; num_layers]);
    }
    if let Some(types) = cfg.value.get("layer_types").and_then(Value::as_array) {
        if types.len() != num_layers {
            return Err(cfg.err(
                "layer_types",
                format!("has {} entries for {num_layers} layers", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(cfg.err(
                    "layer_types",
                    format!("unknown layer type {t}; expected sliding_attention or full_attention"),
                )),
            })
            .collect();
    }
    if family == Family::Gemma3 {
        let pattern = cfg.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
        return Ok((0..num_layers).map(|i| (i + 1) % pattern != 0).collect());
    }
    Ok(vec![true; num_layers])
}

/// Rope settings from either style: transformers 4 (`rope_theta` + `rope_scaling`) or
/// transformers 5 (`rope_parameters`, per layer type for Gemma 3).
fn parse_rope(cfg: &Fields, gemma: bool) -> Result<(Rope, Option<Rope>)> {
    let default_theta = 10_000.0;
    if let Some(params) = cfg.value.get("rope_parameters").filter(|v| v.is_object()) {
        let sub = |key: &str| Fields {
            value: &params[key],
            path: cfg.path,
            prefix: "rope_parameters.",
        };
        if params.get("full_attention").is_some() {
            let global = rope_from(&sub("full_attention"), default_theta)?;
            let local = match params.get("sliding_attention") {
                Some(_) => Some(rope_from(&sub("sliding_attention"), default_theta)?),
                None => None,
            };
            return Ok((global, local));
        }
        let whole = Fields {
            value: params,
            path: cfg.path,
            prefix: "rope_parameters.",
        };
        let rope = rope_from(&whole, default_theta)?;
        return Ok((rope, gemma_local(cfg, gemma)?));
    }
    let theta = cfg.opt_f64("rope_theta")?.unwrap_or(default_theta);
    let scaling = match cfg.value.get("rope_scaling").filter(|v| v.is_object()) {
        Some(s) => scaling_from(&Fields {
            value: s,
            path: cfg.path,
            prefix: "rope_scaling.",
        })?,
        None => RopeScaling::None,
    };
    Ok((Rope { theta, scaling }, gemma_local(cfg, gemma)?))
}

fn gemma_local(cfg: &Fields, gemma: bool) -> Result<Option<Rope>> {
    if !gemma {
        return Ok(None);
    }
    let theta = cfg.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0);
    Ok(Some(Rope {
        theta,
        scaling: RopeScaling::None,
    }))
}

fn rope_from(f: &Fields, default_theta: f64) -> Result<Rope> {
    Ok(Rope {
        theta: f.opt_f64("rope_theta")?.unwrap_or(default_theta),
        scaling: scaling_from(f)?,
    })
}

fn scaling_from(f: &Fields) -> Result<RopeScaling> {
    let kind = f
        .opt_str("rope_type")?
        .or(f.opt_str("type")?)
        .unwrap_or("default");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f.req_f64("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f.req_f64("factor")?,
            low_freq_factor: f.req_f64("low_freq_factor")?,
            high_freq_factor: f.req_f64("high_freq_factor")?,
            original_max_position_embeddings: f.req_f64("original_max_position_embeddings")?,
        },
        other => {
            return Err(f.err(
                "rope_type",
                format!("`{other}` is not supported yet (default, linear, llama3)"),
            ))
        }
    })
}

/// Typed access to a JSON object, with errors that name the file and the field.
#[derive(Clone, Copy)]
struct Fields<'a> {
    value: &'a Value,
    path: &'a Path,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, problem: impl Into<String>) -> ModelError {
        ModelError::field(self.path, format!("{}{field}", self.prefix), problem)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(field, format!("must be a string, found {v}"))),
        }
    }

    fn req_str(&self, field: &str) -> Result<&'a str> {
        self.opt_str(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(field, format!("must be a whole number, found {v}"))),
        }
    }

    fn req_usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be a number, found {v}"))),
        }
    }

    fn req_f64(&self, field: &str) -> Result<f64> {
        self.opt_f64(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(field, format!("must be true or false, found {v}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Arch> {
        Arch::from_config(&v, Path::new("config.json"))
    }

    fn llama() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256})
    }

    #[test]
    fn both_rope_styles_give_the_same_arch() {
        let mut tf4 = llama();
        tf4["rope_theta"] = json!(500000.0);
        tf4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut tf5 = llama();
        tf5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let (a, b) = (parse(tf4).unwrap(), parse(tf5).unwrap());
        assert_eq!(a, b);
        assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(a.rope.theta, 500000.0);
    }

    #[test]
    fn unsupported_model_type_names_it_and_lists_supported() {
        let mut v = llama();
        v["model_type"] = json!("bert");
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("`bert`") && msg.contains("qwen3"), "{msg}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        let msg = parse(v).unwrap_err().to_string();
        assert!(
            msg.contains("config.json") && msg.contains("`hidden_size` is missing"),
            "{msg}"
        );
        let mut v = llama();
        v["num_attention_heads"] = json!("four");
        let msg = parse(v).unwrap_err().to_string();
        assert!(
            msg.contains("`num_attention_heads` must be a whole number"),
            "{msg}"
        );
        let mut v = llama();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(v).unwrap_err().to_string().contains("must divide"));
    }

    #[test]
    fn unknown_rope_type_is_refused_clearly() {
        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let msg = parse(v).unwrap_err().to_string();
        assert!(
            msg.contains("rope_scaling.rope_type") && msg.contains("yarn"),
            "{msg}"
        );
    }

    #[test]
    fn parameter_count_matches_a_known_model() {
        // SmolLM2-135M: 134,515,008 parameters with tied embeddings.
        let v = json!({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "tie_word_embeddings": true});
        assert_eq!(parse(v).unwrap().parameter_count(), 134_515_008);
    }

    #[test]
    fn gemma3_layer_pattern_and_local_rope() {
        let v = json!({"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
            "vocab_size": 256, "sliding_window": 512, "sliding_window_pattern": 6,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256});
        let a = parse(v).unwrap();
        assert_eq!(a.layer_is_sliding.iter().filter(|s| !**s).count(), 2);
        assert!(!a.layer_is_sliding[5] && !a.layer_is_sliding[11] && a.layer_is_sliding[0]);
        assert_eq!(a.local_rope.unwrap().theta, 10000.0);
        assert!((a.attention_scale - 1.0 / 16.0).abs() < 1e-12);
        assert!(a.tie_word_embeddings && a.norm_plus_one);
    }
}

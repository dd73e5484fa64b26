//! A single .gguf file (what Ollama and LM Studio users already have): its architecture from the
//! metadata, and its tensors dequantized and renamed to Hugging Face's layout, so that the rest of
//! Loft (LoRA names, PEFT export) sees the same model a safetensors folder would give; or, for a
//! QLoRA base, a matrix's own quantized blocks.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use super::arch::{Arch, Family, RopeScaling, SUPPORTED};
use super::error::{ModelError, Result};
use super::quant::ggml::{is_block_type, GgmlMatrix};
use super::weights::root_message;

pub struct GgufModel {
    path: PathBuf,
    content: Content,
    file: Mutex<BufReader<File>>,
    arch: Arch,
    gguf_arch: String,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<GgufModel> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| ModelError::Gguf {
            path: path.to_path_buf(),
            message: format!(
                "not a readable GGUF file ({}); it may be truncated or from a newer llama.cpp: download it again",
                root_message(&e)
            ),
        })?;
        let gguf_arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ModelError::Gguf {
                    path: path.to_path_buf(),
                    message: "metadata `general.architecture` is missing".into(),
                })
            }
        };
        let arch = arch_from_metadata(path, &gguf_arch, &content)?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(reader),
            arch,
            gguf_arch,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        self.gguf_name(hf_name)
            .is_some_and(|n| self.content.tensor_infos.contains_key(&n))
    }

    /// The tensor stored for `hf_name`, dequantized to f32 on the CPU, in Hugging Face's layout.
    pub fn tensor(&self, hf_name: &str) -> Result<Tensor> {
        let name = self.stored_name(hf_name)?;
        let raw = self.read_dequantized(&name)?;
        self.to_hf_layout(hf_name, raw)
    }

    /// The blocks stored for the matrix `hf_name`, as llama.cpp runs them, without dequantizing; `None`
    /// when it is stored as floats (f32/f16/bf16), which load dense.
    pub fn blocks(&self, hf_name: &str) -> Result<Option<GgmlMatrix>> {
        let name = self.stored_name(hf_name)?;
        if !is_block_type(self.content.tensor_infos[&name].ggml_dtype) {
            return Ok(None);
        }
        let q = self.read_quantized(&name)?;
        GgmlMatrix::new(q, self.permuted_heads(hf_name))
            .map(Some)
            .map_err(|e| self.tensor_error(&name, e))
    }

    fn stored_name(&self, hf_name: &str) -> Result<String> {
        self.gguf_name(hf_name)
            .filter(|n| self.content.tensor_infos.contains_key(n))
            .ok_or_else(|| ModelError::Gguf {
                path: self.path.clone(),
                message: format!("no tensor for `{hf_name}` in this {} GGUF", self.gguf_arch),
            })
    }

    fn read_dequantized(&self, name: &str) -> Result<Tensor> {
        self.read_quantized(name)?
            .dequantize(&Device::Cpu)
            .map_err(|e| self.tensor_error(name, e))
    }

    /// The stored tensor `name` (GGUF naming) as it is in the file, blocks and all.
    fn read_quantized(&self, name: &str) -> Result<candle_core::quantized::QTensor> {
        let mut reader = self.file.lock().unwrap_or_else(|e| e.into_inner());
        self.content
            .tensor(&mut *reader, name, &Device::Cpu)
            .map_err(|e| self.tensor_error(name, e))
    }

    fn tensor_error(&self, name: &str, e: candle_core::Error) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            message: format!("tensor `{name}`: {}", root_message(&e)),
        }
    }

    /// Undo llama.cpp's conversion changes: q/k rows permuted for its interleaved rope (llama), and
    /// Gemma's norm weights stored as 1 + w.
    fn to_hf_layout(&self, hf_name: &str, t: Tensor) -> Result<Tensor> {
        let a = &self.arch;
        if let Some(heads) = self.permuted_heads(hf_name) {
            return unpermute(&t, heads);
        }
        if a.norm_plus_one && hf_name.ends_with("norm.weight") {
            return Ok((t - 1.0)?);
        }
        Ok(t)
    }

    /// The head count llama.cpp permuted this tensor's rows with for its interleaved rope (a Llama's
    /// q/k projections), if it did.
    fn permuted_heads(&self, hf_name: &str) -> Option<usize> {
        if self.gguf_arch != "llama" {
            return None;
        }
        if hf_name.contains("self_attn.q_proj.") {
            Some(self.arch.num_heads)
        } else if hf_name.contains("self_attn.k_proj.") {
            Some(self.arch.num_kv_heads)
        } else {
            None
        }
    }

    fn gguf_name(&self, hf_name: &str) -> Option<String> {
        hf_to_gguf_name(hf_name, self.arch.family)
    }
}

/// Hugging Face tensor name → llama.cpp tensor name.
pub fn hf_to_gguf_name(hf: &str, family: Family) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (module, kind) = module.rsplit_once('.')?;
    let gemma = family == Family::Gemma3;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Inverse of the row permutation llama.cpp applies to q/k projections (and their biases).
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let half = out / heads / 2;
    let rest: usize = dims[1..].iter().product();
    let t = t
        .reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(t)
}

/// Build the architecture by translating GGUF metadata into config.json fields, so that one parser
/// (`Arch::from_config`) interprets both sources.
fn arch_from_metadata(path: &Path, gguf_arch: &str, content: &Content) -> Result<Arch> {
    let md = &content.metadata;
    let model_type = match gguf_arch {
        "llama" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "gemma3" => "gemma3_text",
        other => {
            return Err(ModelError::UnsupportedArch {
                model_type: format!("{other} (GGUF)"),
                supported: SUPPORTED.into(),
            })
        }
    };
    let key = |k: &str| format!("{gguf_arch}.{k}");
    let missing = |k: &str| ModelError::Gguf {
        path: path.to_path_buf(),
        message: format!("metadata `{k}` is missing or not a number"),
    };
    let value = |k: &str| md.get(&key(k)).and_then(first_of_per_layer);
    let int = |k: &str| -> Option<u64> {
        value(k)
            .and_then(metadata_integer)
            .and_then(|n| u64::try_from(n).ok())
    };
    let req = |k: &str| int(k).ok_or_else(|| missing(&key(k)));
    let float = |k: &str| value(k).and_then(metadata_float);
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let vocab = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens.len() as u64,
        _ => req("vocab_size")?,
    };
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let mut cfg = json!({
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": req("feed_forward_length")?,
        "num_hidden_layers": req("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
        "head_dim": int("attention.key_length").unwrap_or(hidden / heads.max(1)),
        "vocab_size": vocab,
        "max_position_embeddings": int("context_length").unwrap_or(2048),
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "rope_theta": float("rope.freq_base").unwrap_or(10_000.0),
        "tie_word_embeddings": !has("output.weight"),
        "attention_bias": has("blk.0.attn_q.bias"),
    });
    if let Some(Value::String(kind)) = md.get(&key("rope.scaling.type")) {
        if kind == "linear" {
            cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": float("rope.scaling.factor").unwrap_or(1.0)});
        }
    }
    if model_type == "gemma3_text" {
        cfg["sliding_window"] = json!(int("attention.sliding_window").unwrap_or(512));
        cfg["sliding_window_pattern"] = json!(6);
        cfg["rope_local_base_freq"] = json!(10_000.0);
    }
    let mut arch = Arch::from_config(&cfg, path)?;
    if has("rope_freqs.weight") {
        let mut reader = BufReader::new(File::open(path).map_err(|e| ModelError::io(path, e))?);
        let factors = content
            .tensor(&mut reader, "rope_freqs.weight", &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!("tensor `rope_freqs.weight`: {}", root_message(&e)),
            })?;
        arch.rope.scaling = RopeScaling::Factors { factors };
    }
    arch.stored_dtype = content
        .tensor_infos
        .get("blk.0.attn_q.weight")
        .map(|t| format!("{:?}", t.ggml_dtype));
    Ok(arch)
}

/// A metadata integer of any width, when it fits an i64: GGUF writers pick the width freely, so the
/// same key is a u32 in one file and an i32 or u64 in another. The one reader of GGUF integers.
pub fn metadata_integer(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// A metadata number: a float of either width, or an integer of any width.
pub fn metadata_float(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(f64::from(*x)),
        Value::F64(x) => Some(*x),
        other => metadata_integer(other).map(|i| i as f64),
    }
}

/// Some converters store per-layer values (e.g. head_count_kv); they are equal in the models Loft
/// supports, so the first stands for all.
fn first_of_per_layer(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(items) => items.first(),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, out/heads/2, in).swapaxes(1, 2).reshape(out, in)
        let (heads, out, inp) = (2, 8, 3);
        let hf = Tensor::arange(0f32, (out * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((out, inp))
            .unwrap();
        let permuted = hf
            .reshape((heads, 2, out / heads / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, inp))
            .unwrap();
        let back = unpermute(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    /// Integers of every width and sign, floats of both widths, and nothing else, read as numbers.
    #[test]
    fn metadata_numbers_of_every_width() {
        let ints = [
            Value::U8(7),
            Value::I8(7),
            Value::U16(7),
            Value::I16(7),
            Value::U32(7),
            Value::I32(7),
            Value::U64(7),
            Value::I64(7),
        ];
        for v in &ints {
            assert_eq!(metadata_integer(v), Some(7), "{v:?}");
            assert_eq!(metadata_float(v), Some(7.0), "{v:?}");
        }
        assert_eq!(metadata_integer(&Value::I32(-3)), Some(-3));
        assert_eq!(metadata_integer(&Value::U64(u64::MAX)), None);
        assert_eq!(metadata_float(&Value::F32(0.5)), Some(0.5));
        assert_eq!(metadata_float(&Value::F64(1e-6)), Some(1e-6));
        for v in [
            Value::F32(0.5),
            Value::String("7".into()),
            Value::Bool(true),
        ] {
            assert_eq!(metadata_integer(&v), None, "{v:?}");
        }
        assert_eq!(metadata_float(&Value::String("7".into())), None);
        let per_layer = Value::Array(vec![Value::I32(4), Value::I32(4)]);
        assert_eq!(
            first_of_per_layer(&per_layer).and_then(metadata_integer),
            Some(4)
        );
        assert!(first_of_per_layer(&Value::Array(vec![])).is_none());
    }

    #[test]
    fn names_map_to_llama_cpp() {
        let n = |s| hf_to_gguf_name(s, Family::Llama);
        assert_eq!(
            n("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            n("model.layers.0.post_attention_layernorm.weight").unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            hf_to_gguf_name(
                "model.layers.0.post_attention_layernorm.weight",
                Family::Gemma3
            )
            .unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(n("lm_head.weight").unwrap(), "output.weight");
        assert!(n("model.layers.0.something_else.weight").is_none());
    }
}

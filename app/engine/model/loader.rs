//! The weight loader: builds the decoder from Hugging Face tensor names (safetensors or GGUF, through
//! `Weights`), checking each tensor's shape against `Arch`, in the dtype and on the device asked for.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::blocks::{Attention, AttentionCore, Layer, Mlp, RmsNorm};
use super::{DropoutKey, Frozen, LoraLinear, Model};
use crate::engine::arch::{Arch, Family, Rope};
use crate::engine::error::Result;
use crate::engine::quant::{bnb, Nf4Matrix};
use crate::engine::weights::Weights;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// The dtype the frozen weights are held and computed in (f32 on CPU; bf16 on CUDA).
    pub dtype: DType,
    /// How the decoder's linear layers are held (embeddings, `lm_head` and norms always stay dense).
    pub base: BaseFormat,
}

/// How the frozen linear weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseFormat {
    /// Dense in the compute dtype (LoRA, inference).
    #[default]
    Dense,
    /// NF4 as bitsandbytes makes it, with or without double quantization (QLoRA). A dense source is
    /// quantized one matrix at a time as it is read, so no dense copy of the model is ever held.
    Nf4 { double_quant: bool },
    /// A GGUF model's own quantized blocks, dequantized for each product (QLoRA against exactly what
    /// llama.cpp runs).
    Source,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            base: BaseFormat::Dense,
        }
    }
}

impl Model {
    pub fn load(arch: &Arch, weights: &Weights, options: &LoadOptions) -> Result<Model> {
        let loader = Loader {
            weights,
            options,
            arch,
            prefix: module_prefix(weights),
        };
        let layers = (0..arch.num_layers)
            .map(|i| loader.layer(i).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let (h, vocab) = (arch.hidden_size, arch.vocab_size);
        let embed = loader.tensor(
            &format!("{}embed_tokens.weight", loader.prefix),
            &[vocab, h],
        )?;
        let lm_head = if arch.tie_word_embeddings {
            LoraLinear::new("lm_head".into(), embed.clone(), None)
        } else {
            // Only decoder linears are quantized: transformers + bitsandbytes keep `lm_head` in the
            // compute dtype, and so does QLoRA here.
            let dense = LoadOptions {
                base: BaseFormat::Dense,
                ..options.clone()
            };
            let head = Loader {
                options: &dense,
                prefix: loader.prefix.clone(),
                ..loader
            };
            head.linear(&head.lm_head_path(), h, vocab, false)?
        };
        let inv = |rope: &Rope| Tensor::new(rope.inv_freq(arch.head_dim), &options.device);
        Ok(Model {
            arch: arch.clone(),
            norm: loader.norm(&format!("{}norm", loader.prefix), h)?,
            embed,
            layers,
            lm_head,
            inv_freq: inv(&arch.rope)?,
            local_inv_freq: arch.local_rope.as_ref().map(inv).transpose()?,
            options: options.clone(),
            dropout_key: DropoutKey::default(),
            checkpoint: None,
        })
    }
}

/// Where the decoder's modules live: `model.` normally; multimodal Gemma 3 checkpoints nest the
/// language model (`model.language_model.` in transformers 5, `language_model.model.` before).
fn module_prefix(weights: &Weights) -> String {
    ["model.", "model.language_model.", "language_model.model."]
        .into_iter()
        .find(|p| weights.contains(&format!("{p}embed_tokens.weight")))
        .unwrap_or("model.")
        .to_string()
}

struct Loader<'a> {
    weights: &'a Weights,
    options: &'a LoadOptions,
    arch: &'a Arch,
    prefix: String,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights
            .get(name, shape, &self.options.device, self.options.dtype)
    }

    fn lm_head_path(&self) -> String {
        match self.prefix.as_str() {
            "language_model.model." => "language_model.lm_head".into(),
            _ => "lm_head".into(),
        }
    }

    fn linear(&self, path: &str, inp: usize, out: usize, bias: bool) -> Result<LoraLinear> {
        let weight = self.frozen(&format!("{path}.weight"), out, inp)?;
        let bias = match bias {
            true => Some(self.tensor(&format!("{path}.bias"), &[out])?),
            false => None,
        };
        Ok(LoraLinear::frozen(path.to_string(), weight, bias))
    }

    /// A decoder linear layer's frozen weight, held as `options.base` asks.
    fn frozen(&self, name: &str, out: usize, inp: usize) -> Result<Frozen> {
        // Saved already quantized by bitsandbytes: kept as its own NF4 blocks to train on (the
        // base is quantized already, whatever `Nf4`/`Source` asked), or dequantized once, into the
        // compute dtype, for a dense base.
        if let Some(stored) = bnb::read_nf4(self.weights, name, (out, inp))? {
            return match self.options.base {
                BaseFormat::Dense => Frozen::Nf4(Arc::new(stored))
                    .to_dense(&self.options.device, self.options.dtype)
                    .map(Frozen::Dense)
                    .map_err(Into::into),
                BaseFormat::Nf4 { .. } | BaseFormat::Source => Ok(Frozen::Nf4(Arc::new(stored))),
            };
        }
        match self.options.base {
            BaseFormat::Dense => Ok(Frozen::Dense(self.tensor(name, &[out, inp])?)),
            BaseFormat::Nf4 { double_quant } => {
                // Quantized from its stored values widened to f32, as bitsandbytes quantizes a
                // bf16 checkpoint from bf16.
                let dense = self
                    .weights
                    .get(name, &[out, inp], &Device::Cpu, DType::F32)?;
                let values = dense.flatten_all()?.to_vec1::<f32>()?;
                drop(dense);
                let dtype = self.weights.source_dtype(name);
                Ok(Frozen::Nf4(Arc::new(Nf4Matrix::quantize(
                    &values,
                    (out, inp),
                    dtype,
                    double_quant,
                ))))
            }
            // A GGUF's own blocks; its float-stored matrices stay dense.
            BaseFormat::Source => match self.weights.gguf_blocks(name, (out, inp))? {
                Some(blocks) => Ok(Frozen::Ggml(Arc::new(blocks))),
                None => Ok(Frozen::Dense(self.tensor(name, &[out, inp])?)),
            },
        }
    }

    fn norm(&self, path: &str, size: usize) -> Result<RmsNorm> {
        let mut weight = self.tensor(&format!("{path}.weight"), &[size])?;
        if self.arch.norm_plus_one {
            weight = (weight + 1.0)?;
        }
        Ok(RmsNorm {
            weight,
            eps: self.arch.rms_norm_eps,
        })
    }

    fn layer(&self, i: usize) -> Result<Layer> {
        let a = self.arch;
        let p = format!("{}layers.{i}", self.prefix);
        let (h, hd) = (a.hidden_size, a.head_dim);
        let (q_out, kv_out) = (a.num_heads * hd, a.num_kv_heads * hd);
        let attn = Attention {
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), h, q_out, a.qkv_bias)?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), h, kv_out, a.qkv_bias)?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), h, kv_out, a.qkv_bias)?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), q_out, h, a.o_bias)?,
            q_norm: self.optional_norm(a.qk_norm, &format!("{p}.self_attn.q_norm"), hd)?,
            k_norm: self.optional_norm(a.qk_norm, &format!("{p}.self_attn.k_norm"), hd)?,
            core: AttentionCore {
                num_heads: a.num_heads,
                num_kv_heads: a.num_kv_heads,
                head_dim: hd,
                scale: a.attention_scale,
                softcap: a.attn_logit_softcap,
            },
        };
        let inter = a.intermediate_size;
        let mlp = Mlp {
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), h, inter, a.mlp_bias)?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"), h, inter, a.mlp_bias)?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"), inter, h, a.mlp_bias)?,
            activation: a.activation,
        };
        let gemma = a.family == Family::Gemma3;
        let pre_mlp = if gemma {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        Ok(Layer {
            input_norm: self.norm(&format!("{p}.input_layernorm"), h)?,
            attn,
            post_attn_norm: self.optional_norm(
                gemma,
                &format!("{p}.post_attention_layernorm"),
                h,
            )?,
            pre_mlp_norm: self.norm(&format!("{p}.{pre_mlp}"), h)?,
            mlp,
            post_mlp_norm: self.optional_norm(
                gemma,
                &format!("{p}.post_feedforward_layernorm"),
                h,
            )?,
            sliding: a.layer_is_sliding.get(i).copied().unwrap_or(false),
        })
    }

    fn optional_norm(&self, present: bool, path: &str, size: usize) -> Result<Option<RmsNorm>> {
        present.then(|| self.norm(path, size)).transpose()
    }
}

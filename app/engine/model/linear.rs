//! The one linear layer of the decoder. Every projection is a `LoraLinear` named by its Hugging Face
//! module path (`model.layers.3.self_attn.q_proj`), so that adapters attach by name and PEFT keys
//! (`base_model.model.<path>.lora_A.weight`) fall out directly.

use candle_core::{Module, Result, Tensor};

use super::frozen::{frozen_product, Frozen};
use super::lora::LoraAdapter;
use super::lora_op;

#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// Hugging Face module path, e.g. `model.layers.0.mlp.down_proj`.
    pub path: String,
    /// Frozen base weight, `out × in`: dense or 4-bit, never a `Var`, so it gets no gradient.
    pub weight: Frozen,
    pub bias: Option<Tensor>,
    /// The trainable low-rank update, when this module is a LoRA target.
    pub adapter: Option<LoraAdapter>,
}

impl LoraLinear {
    pub fn new(path: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::frozen(path, Frozen::Dense(weight), bias)
    }

    pub fn frozen(path: String, weight: Frozen, bias: Option<Tensor>) -> Self {
        LoraLinear {
            path,
            weight,
            bias,
            adapter: None,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims().1
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims().0
    }
}

impl Module for LoraLinear {
    /// `x · Wᵀ (+ b) (+ LoRA)` over the last dimension of `x` (any number of leading dimensions).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 2 {
            return self.forward_rows(x);
        }
        // Any other rank goes through the rows form and back; each reshape is a graph node, which is
        // why the decoder hands over its hidden states as rows already.
        let dims = x.dims().to_vec();
        let (lead, features) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let y = self.forward_rows(&x.reshape((rows, features[0]))?)?;
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_features());
        y.reshape(out_dims)
    }
}

impl LoraLinear {
    /// `x · Wᵀ (+ b) (+ LoRA)` for `x` of shape `(rows, in)`.
    fn forward_rows(&self, flat: &Tensor) -> Result<Tensor> {
        let mut y = match &self.adapter {
            Some(adapter) if lora_op::applies(flat, &self.weight) => {
                lora_op::lora_linear(flat, &self.weight, adapter)?
            }
            Some(adapter) => {
                let base = frozen_product(flat, &self.weight)?;
                let update = adapter.forward(flat)?.to_dtype(base.dtype())?;
                (base + update)?
            }
            None => frozen_product(flat, &self.weight)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

//! LoRA attachment: which of the decoder's projections carry an adapter, freshly initialised for
//! training or with given weights (a saved adapter or checkpoint).

use std::sync::Arc;

use candle_core::Tensor;

use super::{Frozen, LoraAdapter, LoraConfig, LoraLinear, Model};

/// Base weights set aside while their adapters are merged in (see [`Model::merge_adapters`]).
pub struct MergedBase(Vec<(usize, Frozen, Option<LoraAdapter>)>);
use crate::engine::quant::Nf4Matrix;

impl Model {
    /// Mutable access to the projections; fails while a layer is still shared with a computation
    /// graph of a checkpointed forward pass (drop the loss and its gradients first).
    fn linears_mut(&mut self) -> candle_core::Result<Vec<&mut LoraLinear>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in self.layers.iter_mut() {
            match Arc::get_mut(layer) {
                Some(l) => layers.push(l),
                None => candle_core::bail!("the model is still in use by a computation graph"),
            }
        }
        Ok(layers
            .into_iter()
            .flat_map(|l| {
                [
                    &mut l.attn.q_proj,
                    &mut l.attn.k_proj,
                    &mut l.attn.v_proj,
                    &mut l.attn.o_proj,
                    &mut l.mlp.gate_proj,
                    &mut l.mlp.up_proj,
                    &mut l.mlp.down_proj,
                ]
            })
            .collect())
    }

    /// Attach fresh adapters (A random, B zero) to every targeted module; returns how many.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> candle_core::Result<usize> {
        let key = self.dropout_key.clone();
        let device = self.options.device.clone();
        let mut count = 0;
        for (index, linear) in self.linears_mut()?.into_iter().enumerate() {
            linear.adapter = None;
            if config.targets_path(&linear.path) {
                let (inp, out) = (linear.in_features(), linear.out_features());
                linear.adapter = Some(LoraAdapter::init(
                    config,
                    inp,
                    out,
                    index as u64,
                    seed,
                    key.clone(),
                    &device,
                )?);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Attach adapters with given weights: `weights(path)` returns (A, B) for a module path, or None
    /// when that module has no adapter. A must be `r × in` and B `out × r`.
    pub fn attach_lora_weights(
        &mut self,
        config: &LoraConfig,
        mut weights: impl FnMut(&str) -> Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<usize> {
        let key = self.dropout_key.clone();
        let device = self.options.device.clone();
        let mut count = 0;
        for (index, linear) in self.linears_mut()?.into_iter().enumerate() {
            linear.adapter = match weights(&linear.path) {
                Some((a, b)) => {
                    let (inp, out, r) = (linear.in_features(), linear.out_features(), config.r);
                    if a.dims() != [r, inp] || b.dims() != [out, r] {
                        candle_core::bail!(
                            "{}: lora_A is {:?} and lora_B is {:?}, but this layer needs {:?} and {:?}",
                            linear.path, a.dims(), b.dims(), [r, inp], [out, r]
                        );
                    }
                    count += 1;
                    let (a, b) = (a.to_device(&device)?, b.to_device(&device)?);
                    Some(LoraAdapter::from_weights(
                        config,
                        &a,
                        &b,
                        index as u64,
                        key.clone(),
                    )?)
                }
                None => None,
            };
        }
        Ok(count)
    }

    /// Quantize every dense decoder projection to NF4 in place, one at a time, so the dense copy of
    /// each is freed as its quantized one is made (QLoRA after measuring the full-precision base).
    /// Returns how many were quantized.
    pub fn quantize_base(&mut self, double_quant: bool) -> candle_core::Result<usize> {
        let mut count = 0;
        for linear in self.linears_mut()? {
            let Frozen::Dense(w) = &linear.weight else {
                continue;
            };
            let (out, inp) = w.dims2()?;
            let source = match w.dtype() {
                candle_core::DType::BF16 => "bfloat16",
                candle_core::DType::F16 => "float16",
                _ => "float32",
            };
            let values = w
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let q = Nf4Matrix::quantize(&values, (out, inp), source, double_quant);
            linear.weight = Frozen::Nf4(Arc::new(q));
            count += 1;
        }
        self.options.base = super::BaseFormat::Nf4 { double_quant };
        Ok(count)
    }

    /// Fold every adapter into a new copy of its weight, `W + s·B·A`, for inference: each product then
    /// costs what the base's does. The base weights are handed back, to [`Model::restore_base`] when
    /// done; modules whose base is quantized keep their adapter unmerged (merging would hold a dense
    /// copy of a weight that was quantized to save memory).
    pub fn merge_adapters(&mut self) -> candle_core::Result<MergedBase> {
        let mut replaced = Vec::new();
        for (index, linear) in self.linears_mut()?.into_iter().enumerate() {
            let (Some(adapter), Frozen::Dense(w)) = (&linear.adapter, &linear.weight) else {
                continue;
            };
            let update = (adapter.b.as_tensor().matmul(adapter.a.as_tensor())? * adapter.scale)?;
            let merged = (w.to_dtype(candle_core::DType::F32)? + update)?.to_dtype(w.dtype())?;
            let base = std::mem::replace(&mut linear.weight, Frozen::Dense(merged));
            let adapter = linear.adapter.take();
            replaced.push((index, base, adapter));
        }
        Ok(MergedBase(replaced))
    }

    /// Undo [`Model::merge_adapters`]: the base weights and their adapters, as they were.
    pub fn restore_base(&mut self, merged: MergedBase) -> candle_core::Result<()> {
        let mut linears = self.linears_mut()?;
        for (index, base, adapter) in merged.0 {
            let linear = &mut linears[index];
            linear.weight = base;
            linear.adapter = adapter;
        }
        Ok(())
    }

    /// Drop every adapter: the base model alone.
    pub fn remove_adapters(&mut self) -> candle_core::Result<()> {
        for linear in self.linears_mut()? {
            linear.adapter = None;
        }
        Ok(())
    }

    /// The modules that carry adapters, with their module paths.
    pub fn adapters(&self) -> impl Iterator<Item = (&str, &LoraAdapter)> {
        self.linears()
            .filter_map(|l| l.adapter.as_ref().map(|a| (l.path.as_str(), a)))
    }
}

//! AdamW over the LoRA matrices, with PyTorch's semantics (decoupled weight decay, bias-corrected
//! moments), and a state that is saved with each checkpoint so that a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

pub struct AdamW {
    params: Vec<(String, Var)>,
    /// First and second moments, by parameter name.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(
        params: Vec<(String, Var)>,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            m,
            v,
            step: 0,
            betas,
            eps,
            weight_decay,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr` from gradients `grads` (same order as the parameters).
    pub fn apply(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, ((_, param), g)) in self.params.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mut p = param.as_tensor().clone();
            if self.weight_decay > 0.0 {
                p = (&p * (1.0 - lr * self.weight_decay))?;
            }
            // p -= lr · m̂ / (√v̂ + ε), with m̂ = m / c1 and v̂ = v / c2, as torch.optim.AdamW.
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            param.set(&(p - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The optimizer state as named tensors (for a checkpoint file).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].to_device(&Device::Cpu)?);
            out.insert(format!("v.{name}"), self.v[i].to_device(&Device::Cpu)?);
        }
        out.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restore a state written by [`AdamW::state`]; every parameter must have its moments.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (name, param)) in self.params.iter().enumerate() {
            let get = |kind: &str| -> Result<Tensor> {
                let t = state.get(&format!("{kind}.{name}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no {kind}.{name}"))
                })?;
                if t.dims() != param.dims() {
                    candle_core::bail!(
                        "optimizer state {kind}.{name} has shape {:?}, expected {:?}",
                        t.dims(),
                        param.dims()
                    );
                }
                t.to_dtype(DType::F32)?.to_device(param.device())
            };
            self.m[i] = get("m")?;
            self.v[i] = get("v")?;
        }
        let step = state
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg("optimizer state has no step".into()))?;
        self.step = step.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping
/// (as torch.nn.utils.clip_grad_norm_ does). `max_norm` 0 only measures. The squares are summed in
/// f64: in f32 a large but finite gradient squares to inf, and clipping by an infinite norm would
/// silently zero the update. A norm that is not finite is returned as is and nothing is scaled.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for g in grads.iter() {
        total += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_adamw_on_a_known_sequence() {
        // torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), p = [1.0, -2.0],
        // gradients [0.5, 0.5] then [-1.0, 2.0]: p after two steps = [0.8990000, -2.0960000] (computed by hand
        // from the update rule below, which is torch's).
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], (0.9, 0.999), 1e-8, 0.01).unwrap();
        opt.apply(&[Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap()], 0.1)
            .unwrap();
        let after1 = p.as_tensor().to_vec1::<f32>().unwrap();
        // step 1: m̂ = g, v̂ = g², update = sign(g) · 1 → p·(1 - 0.001) - 0.1
        assert!((after1[0] - (1.0 * 0.999 - 0.1)).abs() < 1e-6, "{after1:?}");
        assert!(
            (after1[1] - (-2.0 * 0.999 - 0.1)).abs() < 1e-6,
            "{after1:?}"
        );
        opt.apply(&[Tensor::new(&[-1.0f32, 2.0], &Device::Cpu).unwrap()], 0.1)
            .unwrap();
        let after2 = p.as_tensor().to_vec1::<f32>().unwrap();
        let by_hand = |p0: f64, g1: f64, g2: f64| {
            let m = 0.9 * (0.1 * g1) + 0.1 * g2;
            let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
            let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
            p0 * (1.0 - 0.001) - 0.1 * mh / (vh.sqrt() + 1e-8)
        };
        assert!((after2[0] as f64 - by_hand(after1[0] as f64, 0.5, -1.0)).abs() < 1e-5);
        assert!((after2[1] as f64 - by_hand(after1[1] as f64, 0.5, 2.0)).abs() < 1e-5);
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn state_round_trips() {
        let p = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], (0.9, 0.999), 1e-8, 0.0).unwrap();
        opt.apply(&[Tensor::new(&[0.3f32, -0.1], &Device::Cpu).unwrap()], 0.01)
            .unwrap();
        let state = opt.state().unwrap();
        let mut other = AdamW::new(vec![("p".into(), p)], (0.9, 0.999), 1e-8, 0.0).unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(other.step, 1);
        assert_eq!(
            other.m[0].to_vec1::<f32>().unwrap(),
            opt.m[0].to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn a_gradient_too_large_to_square_in_f32_still_clips() {
        let mut g = vec![Tensor::new(&[3e20f32, 4e20], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm / 5e20 - 1.0).abs() < 1e-6, "{norm}");
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}

//! AdamW over the LoRA matrices, with PyTorch's semantics (decoupled weight decay, bias-corrected
//! moments), and a state that is saved with each checkpoint so that a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

pub struct AdamW {
    params: Vec<(String, Var)>,
    /// First and second moments, by parameter name, on `state_device`.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Where the moments live and the update is computed: the parameters' device, or host memory
    /// when GPU memory is short (each step then copies the gradients over and the updates back).
    state_device: Option<Device>,
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
            state_device: None,
            step: 0,
            betas,
            eps,
            weight_decay,
        })
    }

    /// Keep the moments in host memory (`TrainConfig::optimizer_offload`): 8 bytes per trainable
    /// parameter leave the GPU. On the CPU nothing changes.
    pub fn offload_state(mut self) -> Result<Self> {
        let host = Device::Cpu;
        for t in self.m.iter_mut().chain(self.v.iter_mut()) {
            *t = t.to_device(&host)?;
        }
        self.state_device = Some(host);
        Ok(self)
    }

    /// The device the moments of `param` live on.
    fn state_device(&self, param: &Var) -> Device {
        self.state_device.clone().unwrap_or(param.device().clone())
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
            let g = g.to_device(&self.state_device(param))?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mut p = param.as_tensor().clone();
            if self.weight_decay > 0.0 {
                p = (&p * (1.0 - lr * self.weight_decay))?;
            }
            // p -= lr · m̂ / (√v̂ + ε), with m̂ = m / c1 and v̂ = v / c2, as torch.optim.AdamW.
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = (((&m / c1)? / denom)? * lr)?.to_device(param.device())?;
            param.set(&(p - update)?)?;
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
        let devices: Vec<Device> = self
            .params
            .iter()
            .map(|(_, p)| self.state_device(p))
            .collect();
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
                t.to_dtype(DType::F32)?.to_device(&devices[i])
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

    /// Six steps of `torch.optim.AdamW` on two parameters, printed by scripts/make_adamw_reference.py:
    /// weight decay, bias correction, a learning rate that warms up from 0 and decays by cosine as the
    /// trainer's schedule does, and gradients near 1e-9 where eps dominates the denominator.
    #[test]
    fn matches_torch_adamw_on_a_known_sequence() {
        // torch 2.15.0: AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01), f32, lr set each
        // step by LambdaLR with transformers' cosine-with-warm-up (2 warm-up steps of 6).
        const LRS: [f64; 6] = [
            0.0,
            0.005,
            0.01,
            0.008535533905932738,
            0.005,
            0.0014644660940672626,
        ];
        const P1_AFTER: [[f32; 6]; 6] = [
            [0.5, -1.25, 2.0, -0.75, 0.125, 1.5],
            [
                0.5018055,
                -1.251768,
                1.995747,
                -0.7536832,
                0.124547124,
                1.5012567,
            ],
            [
                0.5031222, -1.2568352, 1.9982878, -0.7548485, 0.12151947, 1.4955075,
            ],
            [
                0.4992487, -1.2543912, 1.9989108, -0.7563252, 0.11940093, 1.4940062,
            ],
            [
                0.49794894,
                -1.2557657,
                1.9983395,
                -0.758819,
                0.118867554,
                1.4911222,
            ],
            [
                0.49759966,
                -1.2554433,
                1.9983485,
                -0.7587575,
                0.118663564,
                1.4901301,
            ],
        ];
        const P2_AFTER: [[f32; 2]; 6] = [
            [0.25, -0.5],
            [0.24932854, -0.49938878],
            [0.24878313, -0.49978837],
            [0.24750997, -0.4998274],
            [0.24693024, -0.50003505],
            [0.24687138, -0.5000311],
        ];
        // The inputs the script feeds torch (all exact in f32).
        const G1: [[f32; 6]; 6] = [
            [0.5, -0.25, 1.0, 0.0, 2.0, -0.125],
            [-1.0, 0.5, 0.25, 0.75, -1.5, 0.0625],
            [0.25, 0.25, -2.0, -0.5, 1.0, 0.5],
            [2.0, -1.0, 0.5, 0.125, 0.0, -0.25],
            [-0.5, 1.5, 0.75, 1.0, -0.5, 2.0],
            [0.0625, -2.0, -0.5, -1.25, 0.25, 1.0],
        ];
        const G2: [[f32; 2]; 6] = [
            [1e-9, -3e-9],
            [2e-9, 0.0],
            [-1e-9, 4e-9],
            [5e-9, -1e-9],
            [0.0, 2e-9],
            [-3e-9, -2e-9],
        ];
        let schedule = crate::engine::train::TrainConfig {
            lr: 1e-2,
            warmup_steps: Some(2),
            schedule: crate::engine::train::Schedule::Cosine,
            ..Default::default()
        };
        let dev = Device::Cpu;
        // With the moments offloaded to host memory the arithmetic is the same.
        for offload in [false, true] {
            let p1 = Var::from_tensor(
                &Tensor::new(&[[0.5f32, -1.25, 2.0], [-0.75, 0.125, 1.5]], &dev).unwrap(),
            )
            .unwrap();
            let p2 = Var::new(&[0.25f32, -0.5], &dev).unwrap();
            let params = vec![("p1".into(), p1.clone()), ("p2".into(), p2.clone())];
            let mut opt = AdamW::new(params, (0.9, 0.999), 1e-8, 0.01).unwrap();
            if offload {
                opt = opt.offload_state().unwrap();
            }
            for step in 0..6 {
                let lr = schedule.lr_at(step, 6);
                assert!((lr - LRS[step]).abs() < 1e-15, "step {step}: lr {lr}");
                let g1 = Tensor::from_slice(&G1[step], (2, 3), &dev).unwrap();
                let g2 = Tensor::new(&G2[step], &dev).unwrap();
                opt.apply(&[g1, g2], lr).unwrap();
                let got1 = p1
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let got2 = p2.as_tensor().to_vec1::<f32>().unwrap();
                for (got, want) in [
                    (&got1[..], &P1_AFTER[step][..]),
                    (&got2[..], &P2_AFTER[step][..]),
                ] {
                    for (g, w) in got.iter().zip(want) {
                        assert!(
                            (g - w).abs() < 1e-6,
                            "after step {}: {got:?}, torch {want:?}",
                            step + 1
                        );
                    }
                }
            }
            assert_eq!(opt.step, 6);
        }
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

//! LoRA: a frozen base W₀ plus a trainable low-rank update, `h = W₀x + (α/r)·B·A·dropout(x)`.
//! A (r×in) starts Kaiming-uniform and B (out×r) at zero, as PEFT initialises them, so training
//! starts from exactly the base model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::rng::SplitMix64;

/// The attention preset: what the LoRA paper adapted.
pub const ATTENTION_TARGETS: [&str; 2] = ["q_proj", "v_proj"];
/// Every linear layer of the decoder blocks (PEFT's "all-linear" for these models: lm_head excluded).
pub const ALL_LINEAR_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update: how many directions each adapted layer may change in.
    pub r: usize,
    /// lora_alpha: the update is scaled by α/r (or α/√r with rsLoRA).
    pub alpha: f64,
    /// Probability of zeroing each input feature of the LoRA path during training.
    pub dropout: f64,
    /// Module names to adapt (`q_proj`, …, `down_proj`).
    pub targets: Vec<String>,
    /// Rank-stabilised LoRA: scale by α/√r so higher ranks keep learning.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: ALL_LINEAR_TARGETS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether the module at this Hugging Face path is adapted (matched on its last name, as PEFT does).
    pub fn targets_path(&self, path: &str) -> bool {
        let name = path.rsplit('.').next().unwrap_or(path);
        self.targets.iter().any(|t| t == name)
    }
}

/// Which dropout mask a forward pass draws. The trainer sets the key before each micro-batch, so that
/// masks depend only on (seed, micro-batch, module): a resumed run draws the same masks.
#[derive(Debug, Clone, Default)]
pub struct DropoutKey(Arc<AtomicU64>);

impl DropoutKey {
    /// `None` switches dropout off (evaluation); `Some(k)` draws masks from key k.
    pub fn set(&self, key: Option<u64>) {
        self.0
            .store(key.map_or(0, |k| k | 1 << 63), Ordering::Relaxed);
    }

    fn get(&self) -> Option<u64> {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 63 == 1).then_some(v & !(1 << 63))
    }
}

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// r × in
    pub a: Var,
    /// out × r
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Distinguishes this module's masks from every other module's.
    pub index: u64,
    pub key: DropoutKey,
}

impl LoraAdapter {
    /// A fresh adapter for an `out × in` layer: A ~ U(-1/√in, 1/√in) (PEFT's kaiming_uniform_ with
    /// a=√5), B = 0.
    pub fn init(
        config: &LoraConfig,
        in_features: usize,
        out_features: usize,
        index: u64,
        seed: u64,
        key: DropoutKey,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut rng = SplitMix64::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a: Vec<f32> = (0..config.r * in_features)
            .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (config.r, in_features), device)?;
        let b = Tensor::zeros((out_features, config.r), DType::F32, device)?;
        Self::from_weights(config, &a, &b, index, key)
    }

    pub fn from_weights(
        config: &LoraConfig,
        a: &Tensor,
        b: &Tensor,
        index: u64,
        key: DropoutKey,
    ) -> Result<Self> {
        Ok(LoraAdapter {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale: config.scale(),
            dropout: config.dropout,
            index,
            key,
        })
    }

    /// `scale · dropout(x)·Aᵀ·Bᵀ` for `x` of shape `(rows, in)`, computed in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.to_dtype(DType::F32)?;
        if let Some(key) = self.dropout_key() {
            x = x.broadcast_mul(&self.dropout_mask(x.dims(), key, x.device())?)?;
        }
        // Scale the rank-r intermediate, not the full-width output: same result, far less work.
        let down = (x.matmul(&self.a.as_tensor().t()?)? * self.scale)?;
        down.matmul(&self.b.as_tensor().t()?)
    }

    /// The key of this forward pass's dropout mask; `None` when nothing is dropped (p = 0, or evaluation).
    pub fn dropout_key(&self) -> Option<u64> {
        self.key.get().filter(|_| self.dropout > 0.0)
    }

    /// Inverted dropout: kept features are scaled by 1/(1-p) so the expected input is unchanged.
    fn dropout_mask(&self, dims: &[usize], key: u64, device: &Device) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        Tensor::from_vec(self.mask(key).values(n), dims, device)
    }

    /// The mask key `key` draws for this module.
    pub fn mask(&self, key: u64) -> DropoutMask {
        let keep = 1.0 - self.dropout;
        DropoutMask {
            stream: key ^ self.index.wrapping_mul(0xD1B5_4A32_D192_ED03),
            keep,
            scale: (1.0 / keep) as f32,
        }
    }

    pub fn parameter_count(&self) -> usize {
        self.a.elem_count() + self.b.elem_count()
    }
}

/// The dropout mask one key draws for one module, over the input in row-major order. Element `i` is
/// kept (scaled by 1/(1-p)) or zeroed by the `i`-th number of a counter-based stream seeded by (key,
/// module), so each element is a pure function of (key, module, i): the mask is drawn in parallel, never
/// serially per module. (The numbers are those the serial SplitMix64 stream of earlier versions drew,
/// so runs keep their masks.)
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    stream: u64,
    keep: f64,
    scale: f32,
}

/// Elements per parallel task (a multiple of 64): large enough that scheduling costs nothing, small
/// enough to share.
const MASK_CHUNK: usize = 1 << 14;

impl DropoutMask {
    /// Element `i`: 0 or 1/(1-p).
    pub fn value(&self, i: usize) -> f32 {
        if kept(self.stream, self.threshold(), i as u64) {
            self.scale
        } else {
            0.0
        }
    }

    /// Element `i` is kept when the top 53 bits of its draw, as a fraction, are below `keep`:
    /// unit < keep ⟺ (u >> 11) / 2⁵³ < keep ⟺ (u >> 11) < ⌈keep · 2⁵³⌉, decided in integers.
    fn threshold(&self) -> u64 {
        (self.keep * (1u64 << 53) as f64).ceil() as u64
    }

    /// Elements `0..n`.
    pub fn values(&self, n: usize) -> Vec<f32> {
        let kept = self.draw(n);
        (0..n)
            .map(|i| if kept.is_kept(i) { self.scale } else { 0.0 })
            .collect()
    }

    /// Which of elements `0..n` are kept, one bit each: what the LoRA op draws once in its forward
    /// pass and reads again in its backward pass (an eighth of a byte per input value, where the
    /// dropped input itself would cost four bytes, and drawing it again would cost the time).
    pub fn draw(&self, n: usize) -> KeptBits {
        let threshold = self.threshold();
        let mut words = vec![0u64; n.div_ceil(64)];
        words
            .par_chunks_mut(MASK_CHUNK / 64)
            .enumerate()
            .for_each(|(c, chunk)| {
                fill_kept_words(self.stream, threshold, c * MASK_CHUNK, chunk, n)
            });
        KeptBits {
            words,
            len: n,
            scale: self.scale,
        }
    }
}

super::vector::vector_fn! {
    /// `words[w]` bit `j` = whether element `first + 64·w + j` (below `n`) is kept. (The generator's
    /// mixing is 64-bit multiplies, which only AVX-512 has as vector instructions.)
    fn fill_kept_words(stream: u64, threshold: u64, first: usize, words: &mut [u64], n: usize) {
        for (w, word) in words.iter_mut().enumerate() {
            let base = (first + w * 64) as u64;
            let mut draws = [0u64; 64];
            for (j, d) in draws.iter_mut().enumerate() {
                *d = kept(stream, threshold, base + j as u64) as u64;
            }
            let mut bits = 0u64;
            for (j, d) in draws.iter().enumerate() {
                bits |= d << j;
            }
            let valid = n.saturating_sub(first + w * 64).min(64);
            *word = if valid == 64 {
                bits
            } else {
                bits & ((1u64 << valid) - 1)
            };
        }
    }
}

/// Whether element `i` of `stream` is kept under [`DropoutMask::threshold`].
#[inline(always)]
fn kept(stream: u64, threshold: u64, i: u64) -> bool {
    SplitMix64::u64_at(stream, i) >> 11 < threshold
}

/// A drawn dropout mask: which elements are kept, and the scale kept ones get.
pub struct KeptBits {
    words: Vec<u64>,
    len: usize,
    scale: f32,
}

impl KeptBits {
    pub fn is_kept(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// `x ⊙ mask`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        self.combine(&mut out, x, false);
        out
    }

    /// `out += x ⊙ mask`.
    pub fn add_applied(&self, out: &mut [f32], x: &[f32]) {
        self.combine(out, x, true);
    }

    /// `out = x ⊙ mask`, or `out += x ⊙ mask` when `accumulate`, in parallel.
    fn combine(&self, out: &mut [f32], x: &[f32], accumulate: bool) {
        assert!(
            out.len() == self.len && x.len() == self.len,
            "dropout mask of {} values applied to {} and {}",
            self.len,
            out.len(),
            x.len()
        );
        let scale = self.scale;
        out.par_chunks_mut(MASK_CHUNK)
            .zip(x.par_chunks(MASK_CHUNK))
            .zip(self.words.par_chunks(MASK_CHUNK / 64))
            .for_each(|((out, x), words)| masked(out, x, words, scale, accumulate));
    }
}

super::vector::vector_fn! {
    /// `out (+)= x ⊙ mask` for the mask whose kept elements are the set bits of `words`.
    fn masked(out: &mut [f32], x: &[f32], words: &[u64], scale: f32, accumulate: bool) {
        for ((out, x), word) in out.chunks_mut(64).zip(x.chunks(64)).zip(words) {
            for (j, (o, v)) in out.iter_mut().zip(x).enumerate() {
                let value = v * ((word >> j & 1) as f32 * scale);
                *o = if accumulate { *o + value } else { value };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_matches_peft_shapes_bounds_and_zero_b() {
        let config = LoraConfig {
            r: 4,
            ..LoraConfig::default()
        };
        let ad =
            LoraAdapter::init(&config, 64, 32, 0, 7, DropoutKey::default(), &Device::Cpu).unwrap();
        assert_eq!(ad.a.dims(), &[4, 64]);
        assert_eq!(ad.b.dims(), &[32, 4]);
        let a =
            ad.a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 8.0));
        assert!(
            a.iter().any(|v| v.abs() > 0.1),
            "A must spread over its bound"
        );
        let b =
            ad.b.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        assert!(b.iter().all(|v| *v == 0.0));
        assert_eq!(config.scale(), 8.0);
        assert_eq!(
            LoraConfig {
                use_rslora: true,
                ..config
            }
            .scale(),
            16.0
        );
    }

    #[test]
    fn dropout_masks_are_seeded_and_scaled() {
        let config = LoraConfig {
            r: 2,
            dropout: 0.5,
            ..LoraConfig::default()
        };
        let ad =
            LoraAdapter::init(&config, 1000, 1, 0, 1, DropoutKey::default(), &Device::Cpu).unwrap();
        let m1 = ad
            .dropout_mask(&[1, 1000], 5, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let m2 = ad
            .dropout_mask(&[1, 1000], 5, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m1, m2);
        let kept = m1[0].iter().filter(|v| **v == 2.0).count();
        assert!((400..600).contains(&kept), "{kept} of 1000 kept at p=0.5");
        assert!(m1[0].iter().all(|v| *v == 0.0 || *v == 2.0));
    }

    /// With a non-zero B, evaluation gives exactly `scale·x·Aᵀ·Bᵀ` (no mask, every time), while a
    /// training pass drops and rescales inputs.
    #[test]
    fn dropout_is_off_in_eval_and_on_in_training() {
        let config = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.5,
            ..LoraConfig::default()
        };
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f32, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 2.0]], &dev).unwrap();
        let a = Tensor::new(&[[1.0f32, 0.0, 2.0, -1.0], [0.0, 1.0, -1.0, 0.5]], &dev).unwrap();
        let b = Tensor::new(&[[1.0f32, -1.0], [0.5, 2.0], [-2.0, 0.0]], &dev).unwrap();
        let key = DropoutKey::default();
        let ad = LoraAdapter::from_weights(&config, &a, &b, 3, key.clone()).unwrap();
        // scale 2: x·Aᵀ = [[2, 1.5], [4.5, -3]] → ·2 → ·Bᵀ, worked by hand.
        let no_dropout = [[1.0f32, 8.0, -8.0], [15.0, -7.5, -18.0]];
        key.set(None);
        let eval = ad.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(eval, no_dropout);
        assert_eq!(ad.forward(&x).unwrap().to_vec2::<f32>().unwrap(), eval);

        key.set(Some(5));
        let train = ad.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(train, eval, "training must drop inputs");
        let mask = ad.mask(5).values(8);
        let (xs, a_rows, b_rows) = (
            x.to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap(),
            b.to_vec2::<f32>().unwrap(),
        );
        for (row, got) in train.iter().enumerate() {
            let dropped: Vec<f32> = (0..4).map(|i| xs[row][i] * mask[row * 4 + i]).collect();
            let down: Vec<f32> = a_rows
                .iter()
                .map(|a| 2.0 * a.iter().zip(&dropped).map(|(a, x)| a * x).sum::<f32>())
                .collect();
            for (out, b) in b_rows.iter().enumerate() {
                let want: f32 = b.iter().zip(&down).map(|(b, d)| b * d).sum();
                assert!((got[out] - want).abs() < 1e-5, "{train:?} vs mask {mask:?}");
            }
        }
        key.set(None);
        assert_eq!(ad.forward(&x).unwrap().to_vec2::<f32>().unwrap(), eval);
    }

    #[test]
    fn dropout_masks_are_counter_based() {
        let config = LoraConfig {
            r: 2,
            dropout: 0.3,
            ..LoraConfig::default()
        };
        let ad =
            LoraAdapter::init(&config, 8, 4, 5, 1, DropoutKey::default(), &Device::Cpu).unwrap();
        let mask = ad.mask(77);
        let n = 3 * MASK_CHUNK + 123;
        let all = mask.values(n);
        // Drawn in parallel pieces, the mask is still the serial stream earlier versions drew, so a run
        // checkpointed by them resumes with the same masks.
        let mut serial = SplitMix64::new(77 ^ 5u64.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let scale = (1.0 / 0.7f64) as f32;
        for (i, v) in all.iter().enumerate() {
            let want = if serial.unit() < 0.7 { scale } else { 0.0 };
            assert_eq!(*v, want, "element {i}");
        }
        assert_eq!(
            mask.value(n - 1),
            all[n - 1],
            "any element can be drawn alone"
        );
        let kept = all.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.01, "{kept}");
        let other = LoraAdapter {
            index: 6,
            ..ad.clone()
        }
        .mask(77)
        .values(n);
        assert_ne!(other, all, "each module draws its own mask");

        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let kept = mask.draw(n);
        let applied = kept.apply(&x);
        let mut added = vec![1f32; n];
        kept.add_applied(&mut added, &x);
        for i in 0..n {
            assert_eq!(applied[i], x[i] * all[i]);
            assert_eq!(added[i], 1.0 + x[i] * all[i]);
        }
    }
}

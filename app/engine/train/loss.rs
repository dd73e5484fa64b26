//! The causal language-modelling loss: predict token t+1 from tokens ..=t, averaged over the
//! positions the loss mask keeps (by default the assistant's tokens).

use candle_core::{DType, Result, Tensor};

use crate::engine::model::ops::cross_entropy_rows;

/// Mean cross-entropy of `logits (b, t, vocab)` against the next tokens of `ids (b, t)`, counting only
/// target positions where `mask (b, t)` is 1 (a mask on the *target* token, as transformers' labels).
/// Returns the loss and the number of tokens it averaged over.
pub fn causal_lm_loss(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let (b, t, vocab) = logits.dims3()?;
    if t < 2 {
        candle_core::bail!("a sequence needs at least 2 tokens to train on");
    }
    let logits = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), vocab))?;
    let targets = ids.narrow(1, 1, t - 1)?.reshape(b * (t - 1))?;
    let weights = mask
        .narrow(1, 1, t - 1)?
        .reshape(b * (t - 1))?
        .to_dtype(DType::F32)?;
    let nll = cross_entropy_rows(&logits, &targets.contiguous()?)?;
    let count = weights.sum_all()?.to_scalar::<f32>()? as f64;
    let total = (nll * &weights)?.sum_all()?;
    Ok(((total / count.max(1.0))?, count))
}

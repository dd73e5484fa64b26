//! The causal language-modelling loss: predict token t+1 from tokens ..=t, averaged over the
//! positions the loss mask keeps (by default the assistant's tokens).

use candle_core::{DType, Result, Tensor};

use crate::engine::data::Example;
use crate::engine::model::ops::cross_entropy_rows;
use crate::engine::model::Model;

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

/// The same loss as [`causal_lm_loss`], computed from the model without projecting every position onto
/// the vocabulary: only positions whose next token is trained go through `lm_head`. With completion-only
/// masks that skips the prompt's share of the largest matmul of the step, and of the logits' memory.
pub fn masked_lm_loss(model: &Model, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let (b, t) = ids.dims2()?;
    if t < 2 {
        candle_core::bail!("a sequence needs at least 2 tokens to train on");
    }
    let hidden = model.forward_hidden(ids, 0, None)?;
    let h = hidden.dim(2)?;
    let keep: Vec<u32> = mask
        .narrow(1, 1, t - 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .iter()
        .enumerate()
        .filter(|(_, m)| **m > 0.0)
        .map(|(i, _)| i as u32)
        .collect();
    if keep.is_empty() {
        candle_core::bail!("this batch has no trained token");
    }
    let count = keep.len();
    let keep = Tensor::from_vec(keep, count, ids.device())?;
    let rows = hidden
        .narrow(1, 0, t - 1)?
        .reshape((b * (t - 1), h))?
        .index_select(&keep, 0)?;
    let targets = ids
        .narrow(1, 1, t - 1)?
        .flatten_all()?
        .index_select(&keep, 0)?;
    let nll = model.next_token_nll(&rows, &targets)?;
    Ok(((nll.sum_all()? / count as f64)?, count as f64))
}

/// The mean loss per trained token over `examples`, in batches of `batch_size` padded with `pad_id`,
/// without dropout: the eval loss of training and of evaluation; its exponential is the perplexity.
pub fn mean_loss(
    model: &Model,
    examples: &[Example],
    batch_size: usize,
    max_seq_len: usize,
    pad_id: u32,
) -> crate::engine::Result<f64> {
    model.dropout_key().set(None);
    let (mut total, mut count) = (0.0, 0.0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let rows: Vec<&Example> = chunk.iter().collect();
        let batch = super::step::pack(&rows, max_seq_len, pad_id, model.device())?;
        if batch.targets == 0 {
            continue;
        }
        let (loss, n) = masked_lm_loss(model, &batch.ids, &batch.mask)?;
        total += loss.to_scalar::<f32>()? as f64 * n;
        count += n;
    }
    Ok(total / count.max(1.0))
}

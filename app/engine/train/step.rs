//! One optimizer step, the only one in the code: the trainer runs it, and `loft bench-train` times it,
//! so the published figures are the product's. Micro-batches → masked loss → gradients of A and B only,
//! accumulated → global-norm clipping → AdamW.

use candle_core::{Device, Tensor};

use super::loss::masked_lm_loss;
use super::optim::{clip_grad_norm, AdamW};
use crate::engine::data::Example;
use crate::engine::error::Result;
use crate::engine::model::Model;

/// One micro-batch: ids and loss mask `(b, t)`, and how many tokens it holds and trains on.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    /// Tokens that are not padding.
    pub real_tokens: usize,
    /// Tokens the loss is computed on (each predicted from the ones before it).
    pub targets: usize,
}

/// Right-pad rows to the longest (each cut at `max_seq_len`); padding is masked out of the loss.
pub fn pack(rows: &[&Example], max_seq_len: usize, pad_id: u32, device: &Device) -> Result<Batch> {
    let width = rows
        .iter()
        .map(|r| r.ids.len().min(max_seq_len))
        .max()
        .unwrap_or(0)
        .max(2);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    let (mut real_tokens, mut targets) = (0, 0);
    for row in rows {
        let len = row.ids.len().min(max_seq_len);
        real_tokens += len;
        targets += row.mask[..len].iter().skip(1).filter(|m| **m).count();
        ids.extend_from_slice(&row.ids[..len]);
        ids.extend(std::iter::repeat_n(pad_id, width - len));
        mask.extend(row.mask[..len].iter().map(|&m| if m { 1f32 } else { 0.0 }));
        mask.extend(std::iter::repeat_n(0f32, width - len));
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, (rows.len(), width), device)?,
        mask: Tensor::from_vec(mask, (rows.len(), width), device)?,
        real_tokens,
        targets,
    })
}

/// The dropout key of micro-batch `index` of a run (counted from the first): masks depend only on
/// (seed, micro-batch, module), so a resumed run draws the masks it would have drawn.
pub fn dropout_key(seed: u64, micro_batch: usize) -> u64 {
    seed ^ (micro_batch as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// What a completed step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over every trained token of the step.
    pub loss: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Tokens through the model, padding excluded.
    pub tokens: usize,
}

/// One optimizer step over `batches` (its micro-batches, the first of which is micro-batch
/// `first_micro_batch` of the run), at learning rate `lr`, clipping the gradients' norm to
/// `max_grad_norm` (0: off). The loss is averaged over every trained token of the step, not per
/// micro-batch, as transformers does with gradient accumulation.
///
/// `stop` is asked before each micro-batch. When it answers yes, the step is abandoned and `None`
/// returned: the gradients gathered so far are dropped and the weights and optimizer state stay those
/// of the last completed step, so a checkpoint saved then resumes exactly (the step is redone whole).
/// A step whose loss or gradient norm is not finite is measured but not applied.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &Model,
    optimizer: &mut AdamW,
    batches: &[Batch],
    lr: f64,
    max_grad_norm: f64,
    seed: u64,
    first_micro_batch: usize,
    stop: &mut dyn FnMut() -> bool,
) -> Result<Option<StepOutcome>> {
    let outcome = accumulate(model, optimizer, batches, seed, first_micro_batch, stop);
    // Evaluation and generation after this step must not drop out, whatever happened in it.
    model.dropout_key().set(None);
    let Some((mut grads, loss, tokens)) = outcome? else {
        return Ok(None);
    };
    let grad_norm = clip_grad_norm(&mut grads, max_grad_norm)?;
    if loss.is_finite() && grad_norm.is_finite() {
        optimizer.apply(&grads, lr)?;
    }
    Ok(Some(StepOutcome {
        loss,
        grad_norm,
        tokens,
    }))
}

/// The summed gradients of the step's micro-batches (zeros where a parameter got none), the step's
/// loss and its tokens; `None` when `stop` answered yes first.
fn accumulate(
    model: &Model,
    optimizer: &AdamW,
    batches: &[Batch],
    seed: u64,
    first_micro_batch: usize,
    stop: &mut dyn FnMut() -> bool,
) -> Result<Option<(Vec<Tensor>, f64, usize)>> {
    let step_targets: usize = batches.iter().map(|b| b.targets).sum::<usize>().max(1);
    let mut grads: Vec<Option<Tensor>> = vec![None; optimizer.params().len()];
    let mut loss_sum = 0.0;
    let mut tokens = 0;
    for (micro, batch) in batches.iter().enumerate() {
        if stop() {
            return Ok(None);
        }
        tokens += batch.real_tokens;
        if batch.targets == 0 {
            continue; // every row of this micro-batch is prompt only: nothing to learn from it
        }
        model
            .dropout_key()
            .set(Some(dropout_key(seed, first_micro_batch + micro)));
        let (loss, count) = masked_lm_loss(model, &batch.ids, &batch.mask)?;
        let weighted = (loss * (count / step_targets as f64))?;
        loss_sum += weighted.to_scalar::<f32>()? as f64;
        let store = weighted.backward()?;
        for (slot, (_, var)) in grads.iter_mut().zip(optimizer.params()) {
            // Checkpointed layers hand their adapters' gradients over beside autograd's store.
            let g = match (store.get(var.as_tensor()), model.take_checkpoint_grad(var)) {
                (Some(a), Some(b)) => Some((a + b)?),
                (Some(a), None) => Some(a.clone()),
                (None, b) => b,
            };
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
    }
    let grads = grads
        .into_iter()
        .zip(optimizer.params())
        .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
        .collect::<candle_core::Result<_>>()?;
    Ok(Some((grads, loss_sum, tokens)))
}

//! Gradient checkpointing: each decoder layer keeps only its input during the forward pass and runs
//! again in the backward pass to get its activations, trading one more forward for most of the memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId, Var};

use super::blocks::{Layer, RopeAngles};
use super::{ops, Model};

pub(super) struct Checkpointing {
    /// A zero that the first layer's input is added to, so that it is part of the graph and its
    /// checkpoint's backward runs.
    anchor: Var,
    /// Gradients of the adapters, produced inside the checkpoints' backward passes (which only hand
    /// the input gradient back to autograd), by variable.
    grads: Arc<Mutex<HashMap<TensorId, Tensor>>>,
}

impl Checkpointing {
    /// Layer number `index` of a forward pass, keeping only its input; `x` is `(b·t, hidden)`.
    pub(super) fn forward(
        &self,
        index: usize,
        layer: &Arc<Layer>,
        x: Tensor,
        bt: (usize, usize),
        rope: &RopeAngles,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let x = match index {
            0 => x.broadcast_add(self.anchor.as_tensor())?,
            _ => x,
        };
        checkpointed(layer, &x, bt, rope, mask, &self.grads)
    }
}

impl Model {
    /// Turn gradient checkpointing on or off (off by default).
    pub fn set_gradient_checkpointing(&mut self, on: bool) -> candle_core::Result<()> {
        self.checkpoint = match on {
            true => Some(Checkpointing {
                anchor: Var::zeros((), self.options.dtype, &self.options.device)?,
                grads: Arc::default(),
            }),
            false => None,
        };
        Ok(())
    }

    /// The gradient of `var` that checkpointed layers produced since the last call, if any.
    pub fn take_checkpoint_grad(&self, var: &Var) -> Option<Tensor> {
        let cp = self.checkpoint.as_ref()?;
        let mut grads = cp.grads.lock().unwrap_or_else(|e| e.into_inner());
        grads.remove(&var.as_tensor().id())
    }
}

/// Run `layer` keeping only its input; the backward pass runs it again on that input to get the input
/// gradient (handed to autograd) and the adapters' gradients (added to `grads`).
fn checkpointed(
    layer: &Arc<Layer>,
    x: &Tensor,
    bt: (usize, usize),
    rope: &RopeAngles,
    mask: Option<&Tensor>,
    grads: &Arc<Mutex<HashMap<TensorId, Tensor>>>,
) -> candle_core::Result<Tensor> {
    let (fwd_layer, fwd_rope, fwd_mask) = (layer.clone(), rope.clone(), mask.cloned());
    let (bwd_layer, bwd_rope, bwd_mask, grads) =
        (layer.clone(), rope.clone(), mask.cloned(), grads.clone());
    ops::checkpoint(
        x,
        move |x| fwd_layer.forward(x, bt, &fwd_rope, fwd_mask.as_ref(), None),
        move |x, dy| {
            let input = Var::from_tensor(x)?;
            let y = bwd_layer.forward(input.as_tensor(), bt, &bwd_rope, bwd_mask.as_ref(), None)?;
            let store = (y * dy)?.sum_all()?.backward()?;
            let mut grads = grads.lock().unwrap_or_else(|e| e.into_inner());
            for linear in bwd_layer.linears() {
                let Some(adapter) = &linear.adapter else {
                    continue;
                };
                for var in [&adapter.a, &adapter.b] {
                    if let Some(g) = store.get(var.as_tensor()) {
                        let id = var.as_tensor().id();
                        let sum = match grads.remove(&id) {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        };
                        grads.insert(id, sum);
                    }
                }
            }
            store
                .get(input.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("checkpoint: no input gradient".into()))
        },
    )
}

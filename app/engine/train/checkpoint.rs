//! Checkpoints: what one holds (the adapter in PEFT format, the optimizer state, the step), writing one,
//! and finding the newest one that loads when a run resumes.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::json;

use super::config::TrainConfig;
use super::optim::AdamW;
use super::run::{RunDir, OPTIMIZER_STATE, TRAINER_STATE};
use crate::engine::adapter::{self, peft_key};
use crate::engine::error::{ModelError, Result};
use crate::engine::model::Model;

/// AdamW over every adapter's A and B, named by their PEFT keys (the names the state is saved under).
pub fn optimizer_for(model: &Model, config: &TrainConfig) -> Result<AdamW> {
    let params = model
        .adapters()
        .flat_map(|(path, ad)| {
            [
                (peft_key(path, "A"), ad.a.clone()),
                (peft_key(path, "B"), ad.b.clone()),
            ]
        })
        .collect();
    let optimizer = AdamW::new(params, config.betas, config.eps, config.weight_decay)?;
    Ok(match config.optimizer_offload {
        true => optimizer.offload_state()?,
        false => optimizer,
    })
}

/// Save the state after `step` optimizer steps as `checkpoints/step-<step>`.
pub fn save(
    run: &RunDir,
    step: usize,
    total_steps: usize,
    model: &Model,
    optimizer: &AdamW,
    config: &TrainConfig,
    base_model: &str,
) -> Result<PathBuf> {
    let state = optimizer.state()?;
    run.save_checkpoint(step, |dir| {
        adapter::save_peft(model, &config.lora, base_model, dir)?;
        let opt_path = dir.join(OPTIMIZER_STATE);
        candle_core::safetensors::save(&state, &opt_path).map_err(|e| ModelError::Safetensors {
            path: opt_path.clone(),
            message: e.to_string(),
        })?;
        let trainer_state = json!({"step": step, "total_steps": total_steps, "seed": config.seed});
        let state_path = dir.join(TRAINER_STATE);
        std::fs::write(&state_path, trainer_state.to_string())
            .map_err(|e| ModelError::io(&state_path, e))
    })
}

/// Load checkpoint `dir` (saved after `step` steps) into `model`, returning the optimizer with its state.
/// Every file is read and checked before anything is kept, so a damaged checkpoint is an error, never
/// a silently different run.
pub fn load(model: &mut Model, config: &TrainConfig, step: usize, dir: &Path) -> Result<AdamW> {
    let state_path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| ModelError::io(&state_path, e))?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::json(&state_path, &e))?;
    if saved.get("step").and_then(|s| s.as_u64()) != Some(step as u64) {
        return Err(ModelError::field(
            &state_path,
            "step",
            format!("does not say step {step}, as the folder's name does"),
        ));
    }
    let opt_path = dir.join(OPTIMIZER_STATE);
    let state = candle_core::safetensors::load(&opt_path, &Device::Cpu).map_err(|e| {
        ModelError::Safetensors {
            path: opt_path.clone(),
            message: format!("cannot read the optimizer state: {e}"),
        }
    })?;
    adapter::load_peft(model, dir)?;
    let mut optimizer = optimizer_for(model, config)?;
    optimizer
        .load_state(&state)
        .map_err(|e| ModelError::Safetensors {
            path: opt_path.clone(),
            message: e.to_string(),
        })?;
    if optimizer.step != step {
        return Err(ModelError::Safetensors {
            path: opt_path,
            message: format!(
                "the optimizer state has taken {} steps, the checkpoint {step}",
                optimizer.step
            ),
        });
    }
    Ok(optimizer)
}

/// A checkpoint that resuming skipped, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub step: usize,
    pub reason: String,
    /// Where the unreadable checkpoint was moved (`unreadable-step-N`), if it could be moved.
    pub moved_to: Option<PathBuf>,
}

/// Load the newest checkpoint of `run` that loads, trying them newest to oldest: a checkpoint damaged
/// by a crash or a full disk costs the steps since the one before it, not the run. Each one skipped is
/// reported to `skipped` (and moved aside, so it is neither tried again nor counted as kept). Returns
/// the step, the folder and the optimizer.
pub fn load_newest(
    run: &RunDir,
    model: &mut Model,
    config: &TrainConfig,
    skipped: &mut dyn FnMut(Skipped),
) -> Result<(usize, PathBuf, AdamW)> {
    let candidates = run.checkpoints();
    if candidates.is_empty() {
        return Err(ModelError::run_state(format!(
            "{} has no checkpoint to resume from; start the run again",
            run.path.display()
        )));
    }
    let mut reasons = Vec::new();
    for (step, dir) in candidates.into_iter().rev() {
        match load(model, config, step, &dir) {
            Ok(optimizer) => return Ok((step, dir, optimizer)),
            Err(e) => {
                let reason = e.to_string();
                reasons.push(format!("step {step}: {reason}"));
                let moved_to = run.set_aside_checkpoint(&dir).ok();
                skipped(Skipped {
                    step,
                    reason,
                    moved_to,
                });
            }
        }
    }
    Err(ModelError::run_state(format!(
        "no checkpoint of {} can be read ({}); start the run again",
        run.path.display(),
        reasons.join("; ")
    )))
}

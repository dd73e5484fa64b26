//! The training loop, on its own thread: micro-batches → masked loss → gradients of A and B only →
//! clipped AdamW step, with evaluation, checkpoints, pause/resume/cancel and events for the UI and CLI.
//! The whole algorithm is in `Trainer::run`.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::json;

use super::config::TrainConfig;
use super::loss::masked_lm_loss;
use super::memory::{self, StepMemory};
use super::optim::{clip_grad_norm, AdamW};
use super::run::{RunDir, OPTIMIZER_STATE, TRAINER_STATE};
use crate::engine::adapter::{self, peft_key};
use crate::engine::data::Example;
use crate::engine::error::{ModelError, Result};
use crate::engine::model::Model;
use crate::engine::rng::SplitMix64;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens per second through the model (padding excluded), over the last step.
    pub tokens_per_second: f64,
    pub elapsed: Duration,
    pub eta: Duration,
    /// Resident memory of the process, in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum TrainEvent {
    Started {
        run_dir: PathBuf,
        total_steps: usize,
        start_step: usize,
        trainable_parameters: usize,
        total_parameters: u64,
    },
    Step(StepMetrics),
    Eval {
        step: usize,
        loss: f64,
        perplexity: f64,
    },
    CheckpointSaved {
        step: usize,
        path: PathBuf,
    },
    Paused {
        step: usize,
    },
    Resumed {
        step: usize,
    },
    Finished {
        run_dir: PathBuf,
        adapter_dir: PathBuf,
        final_loss: Option<f64>,
        eval_loss: Option<f64>,
    },
    Cancelled {
        step: usize,
        checkpoint: Option<PathBuf>,
    },
    Failed {
        reason: String,
        advice: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainCommand {
    Pause,
    Resume,
    /// Stop after the current step, saving a checkpoint first.
    Cancel,
}

/// Everything one run needs; moved into the worker thread.
pub struct TrainJob {
    pub model: Model,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub config: TrainConfig,
    pub run: RunDir,
    /// Written into adapter_config.json as `base_model_name_or_path`.
    pub base_model: String,
    /// Continue from the run's last checkpoint.
    pub resume: bool,
    pub pad_id: u32,
}

pub struct TrainHandle {
    pub events: Receiver<TrainEvent>,
    commands: Sender<TrainCommand>,
    thread: Option<JoinHandle<()>>,
}

impl TrainHandle {
    pub fn send(&self, command: TrainCommand) {
        // The worker may already have finished; then there is nothing to command.
        let _ = self.commands.send(command);
    }

    /// Wait for the worker to end (after Finished, Cancelled or Failed).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start training on a worker thread; progress arrives on `handle.events`.
pub fn spawn(job: TrainJob) -> TrainHandle {
    let (event_tx, events) = channel();
    let (commands, command_rx) = channel();
    let thread = std::thread::Builder::new()
        .name("loft-train".into())
        .spawn(move || run_reporting(job, event_tx, command_rx));
    match thread {
        Ok(t) => TrainHandle {
            events,
            commands,
            thread: Some(t),
        },
        Err(e) => {
            let (tx, events) = channel();
            let _ = tx.send(failure_of(&format!(
                "could not start the training thread: {e}"
            )));
            TrainHandle {
                events,
                commands,
                thread: None,
            }
        }
    }
}

/// Train to the end on this thread; an error or a panic becomes a `Failed` event with advice, so whoever
/// listens always hears how the run ended.
pub fn run_reporting(job: TrainJob, events: Sender<TrainEvent>, commands: Receiver<TrainCommand>) {
    let failed = events.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Trainer::new(job, events, commands).and_then(|t| t.run())
    }));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(failure_of(&e.to_string())),
        Err(panic) => Some(failure_of(&panic_message(&panic))),
    };
    if let Some(event) = failure {
        let _ = failed.send(event);
    }
}

/// Run training on the calling thread (the CLI and tests), sending events to `events`.
pub fn run_blocking(
    job: TrainJob,
    events: Sender<TrainEvent>,
    commands: Receiver<TrainCommand>,
) -> Result<()> {
    Trainer::new(job, events, commands)?.run()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the training thread stopped unexpectedly".into())
}

/// A failure event with advice a person can act on.
pub fn failure_of(reason: &str) -> TrainEvent {
    let lower = reason.to_lowercase();
    let advice = if lower.contains("out of memory") || lower.contains("alloc") {
        "The model and batch do not fit in memory: lower the micro-batch size or max_seq_len (raise gradient accumulation to keep the effective batch), turn on gradient checkpointing, target fewer modules, or choose a smaller model."
    } else {
        "Check the message above; if it names a file, fix or replace that file and start again."
    };
    TrainEvent::Failed {
        reason: reason.to_string(),
        advice: advice.to_string(),
    }
}

struct Trainer {
    job: TrainJob,
    events: Sender<TrainEvent>,
    commands: Receiver<TrainCommand>,
    optimizer: AdamW,
    total_steps: usize,
    start_step: usize,
}

/// One micro-batch: ids and loss mask `(b, t)`, and how many tokens it trains on.
struct Batch {
    ids: Tensor,
    mask: Tensor,
    real_tokens: usize,
    targets: usize,
}

impl Trainer {
    fn new(
        job: TrainJob,
        events: Sender<TrainEvent>,
        commands: Receiver<TrainCommand>,
    ) -> Result<Trainer> {
        job.config
            .validate()
            .map_err(|m| ModelError::field(job.run.spec_path(), "train", m))?;
        if job.train.is_empty() {
            return Err(ModelError::NotFound(
                "the training split is empty: add rows to the dataset or lower the eval split"
                    .into(),
            ));
        }
        let mut job = job;
        let resume_from = match job.resume {
            true => job.run.checkpoints().pop(),
            false => None,
        };
        match &resume_from {
            Some((_, dir)) => {
                adapter::load_peft(&mut job.model, dir)?;
            }
            None => {
                job.model.attach_lora(&job.config.lora, job.config.seed)?;
            }
        }
        job.model
            .set_gradient_checkpointing(job.config.gradient_checkpointing)?;
        let params = job
            .model
            .adapters()
            .flat_map(|(path, ad)| {
                [
                    (peft_key(path, "A"), ad.a.clone()),
                    (peft_key(path, "B"), ad.b.clone()),
                ]
            })
            .collect();
        let c = &job.config;
        let mut optimizer = AdamW::new(params, c.betas, c.eps, c.weight_decay)?;
        let mut start_step = 0;
        if let Some((step, dir)) = &resume_from {
            let path = dir.join(OPTIMIZER_STATE);
            let state = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
                ModelError::Safetensors {
                    path: path.clone(),
                    message: format!("cannot read the optimizer state: {e}"),
                }
            })?;
            optimizer.load_state(&state)?;
            start_step = *step;
            job.run.truncate_metrics_after(start_step)?;
        }
        let total_steps = job.config.total_steps(job.train.len());
        Ok(Trainer {
            job,
            events,
            commands,
            optimizer,
            total_steps,
            start_step,
        })
    }

    /// On the CPU, whether the largest micro-batch cannot fit in the memory free now (see
    /// [`super::memory`]); on a GPU, running out is an error the backend reports, so it is not guessed.
    fn memory_problem(&self, trainable: u64) -> Option<(String, String)> {
        if !self.job.model.device().is_cpu() {
            return None;
        }
        let c = &self.job.config;
        let longest = self.job.train.iter().map(|e| e.ids.len()).max()?;
        let rows = c.micro_batch_size.min(self.job.train.len());
        let tokens = rows * longest;
        let need = StepMemory::estimate(
            &self.job.model.arch,
            tokens,
            trainable,
            c.gradient_checkpointing,
        );
        let available = memory::available_memory()?;
        memory::does_not_fit(&need, available, rows, longest, c.gradient_checkpointing)
    }

    fn send(&self, event: TrainEvent) {
        let _ = self.events.send(event);
    }

    fn run(mut self) -> Result<()> {
        let trainable: usize = self
            .job
            .model
            .adapters()
            .map(|(_, a)| a.parameter_count())
            .sum();
        if let Some((reason, advice)) = self.memory_problem(trainable as u64) {
            self.send(TrainEvent::Failed { reason, advice });
            return Ok(());
        }
        self.send(TrainEvent::Started {
            run_dir: self.job.run.path.clone(),
            total_steps: self.total_steps,
            start_step: self.start_step,
            trainable_parameters: trainable,
            total_parameters: self.job.model.arch.parameter_count() + trainable as u64,
        });
        let started = Instant::now();
        let mut last_loss = None;
        let mut last_eval = None;
        // The base model's eval loss: the number the run has to beat.
        if self.start_step == 0 && !self.job.eval.is_empty() {
            last_eval = Some(self.evaluate(0)?);
        }
        let per_epoch = self.job.config.total_steps_per_epoch(self.job.train.len());
        for step in self.start_step..self.total_steps {
            if let Some(stop) = self.obey_commands(step)? {
                return stop;
            }
            let step_start = Instant::now();
            let lr = self.job.config.lr_at(step, self.total_steps);
            let (loss, grad_norm, tokens) = self.train_step(step, lr)?;
            if !loss.is_finite() || !grad_norm.is_finite() {
                let last = self.job.run.checkpoints().pop().map(|(s, _)| s);
                let what = match loss.is_finite() {
                    true => format!("the gradients' norm became {grad_norm}"),
                    false => format!("the loss became {loss}"),
                };
                self.send(TrainEvent::Failed {
                    reason: format!("{what} at step {}", step + 1),
                    advice: format!(
                        "Training diverged: lower the learning rate (now {lr:.2e}; try half), or check the data for very long or broken rows.{}",
                        last.map_or(String::new(), |s| format!(" The last good checkpoint is step {s}; its adapter is kept."))
                    ),
                });
                return Ok(());
            }
            last_loss = Some(loss);
            let done = step + 1;
            let elapsed = started.elapsed();
            let per_step = elapsed.as_secs_f64() / (done - self.start_step) as f64;
            let metrics = StepMetrics {
                step: done,
                total_steps: self.total_steps,
                epoch: done as f64 / per_epoch as f64,
                loss,
                lr,
                grad_norm,
                tokens_per_second: tokens as f64 / step_start.elapsed().as_secs_f64().max(1e-9),
                elapsed,
                eta: Duration::from_secs_f64(per_step * (self.total_steps - done) as f64),
                memory_bytes: resident_memory(),
            };
            let c = &self.job.config;
            if done % c.log_every.max(1) == 0 || done == self.total_steps {
                self.job.run.log_metrics(&json!({
                    "step": done, "epoch": metrics.epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_second": metrics.tokens_per_second, "elapsed_s": elapsed.as_secs_f64(),
                    "memory_bytes": metrics.memory_bytes,
                }))?;
                self.send(TrainEvent::Step(metrics));
            }
            let epoch_end = done % per_epoch == 0;
            let eval_due = if c.eval_every > 0 {
                done % c.eval_every == 0
            } else {
                epoch_end
            };
            if !self.job.eval.is_empty() && (eval_due || done == self.total_steps) {
                last_eval = Some(self.evaluate(done)?);
            }
            if c.save_every > 0 && done % c.save_every == 0 && done < self.total_steps {
                self.checkpoint(done)?;
            }
        }
        self.checkpoint(self.total_steps)?;
        let adapter_dir = self.job.run.adapter_dir();
        adapter::save_peft(
            &self.job.model,
            &self.job.config.lora,
            &self.job.base_model,
            &adapter_dir,
        )?;
        self.send(TrainEvent::Finished {
            run_dir: self.job.run.path.clone(),
            adapter_dir,
            final_loss: last_loss,
            eval_loss: last_eval,
        });
        Ok(())
    }

    /// Handle pause/resume/cancel between steps. `Some` ends the run.
    fn obey_commands(&self, step: usize) -> Result<Option<Result<()>>> {
        let mut paused = false;
        loop {
            let command = if paused {
                match self.commands.recv() {
                    Ok(c) => c,
                    Err(_) => TrainCommand::Cancel,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(None),
                }
            };
            match command {
                TrainCommand::Pause if !paused => {
                    paused = true;
                    self.send(TrainEvent::Paused { step });
                }
                TrainCommand::Resume if paused => {
                    self.send(TrainEvent::Resumed { step });
                    return Ok(None);
                }
                TrainCommand::Cancel => {
                    let checkpoint = match step > self.start_step {
                        true => Some(self.checkpoint(step)?),
                        false => None,
                    };
                    self.send(TrainEvent::Cancelled { step, checkpoint });
                    return Ok(Some(Ok(())));
                }
                _ => {}
            }
        }
    }

    /// One optimizer step over `grad_accum` micro-batches. The loss is averaged over every trained
    /// token of the step (not per micro-batch), as transformers does with gradient accumulation.
    fn train_step(&mut self, step: usize, lr: f64) -> Result<(f64, f64, usize)> {
        let c = &self.job.config;
        let batches: Vec<Batch> = (0..c.grad_accum)
            .map(|micro| self.batch(step * c.grad_accum + micro))
            .collect::<Result<_>>()?;
        let step_targets: usize = batches.iter().map(|b| b.targets).sum::<usize>().max(1);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.optimizer.params().len()];
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for (micro, batch) in batches.iter().enumerate() {
            tokens += batch.real_tokens;
            if batch.targets == 0 {
                continue; // every row of this micro-batch is prompt only: nothing to learn from it
            }
            let key =
                c.seed ^ ((step * c.grad_accum + micro) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            self.job.model.dropout_key().set(Some(key));
            let (loss, count) = masked_lm_loss(&self.job.model, &batch.ids, &batch.mask)?;
            let weight = count / step_targets as f64;
            let weighted = (loss * weight)?;
            loss_sum += weighted.to_scalar::<f32>()? as f64;
            let store = weighted.backward()?;
            for (slot, (_, var)) in grads.iter_mut().zip(self.optimizer.params()) {
                // Checkpointed layers hand their adapters' gradients over beside autograd's store.
                let g = match (
                    store.get(var.as_tensor()),
                    self.job.model.take_checkpoint_grad(var),
                ) {
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
        self.job.model.dropout_key().set(None);
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(self.optimizer.params())
            .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let norm = clip_grad_norm(&mut grads, c.max_grad_norm)?;
        // A non-finite step is never applied: the run stops with the weights of the last good step.
        if loss_sum.is_finite() && norm.is_finite() {
            self.optimizer.apply(&grads, lr)?;
        }
        Ok((loss_sum, norm, tokens))
    }

    /// Micro-batch number `index` of the run: examples in a seeded order that reshuffles every epoch,
    /// a pure function of the index, so a resumed run sees exactly the batches it would have.
    fn batch(&self, index: usize) -> Result<Batch> {
        let n = self.job.train.len();
        let size = self.job.config.micro_batch_size;
        let mut order: Option<(usize, Vec<usize>)> = None;
        let mut rows = Vec::with_capacity(size);
        for position in index * size..(index + 1) * size {
            let (epoch, offset) = (position / n, position % n);
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, epoch_order(self.job.config.seed, epoch, n)));
            }
            if let Some((_, o)) = &order {
                rows.push(&self.job.train[o[offset]]);
            }
        }
        self.pack(&rows)
    }

    /// Right-pad rows to the longest; padding is masked out of the loss.
    fn pack(&self, rows: &[&Example]) -> Result<Batch> {
        let max = self.job.config.max_seq_len;
        let width = rows
            .iter()
            .map(|r| r.ids.len().min(max))
            .max()
            .unwrap_or(0)
            .max(2);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        let (mut real_tokens, mut targets) = (0, 0);
        for row in rows {
            let len = row.ids.len().min(max);
            real_tokens += len;
            targets += row.mask[..len].iter().skip(1).filter(|m| **m).count();
            ids.extend_from_slice(&row.ids[..len]);
            ids.extend(std::iter::repeat_n(self.job.pad_id, width - len));
            mask.extend(row.mask[..len].iter().map(|&m| if m { 1f32 } else { 0.0 }));
            mask.extend(std::iter::repeat_n(0f32, width - len));
        }
        let device = self.job.model.device();
        Ok(Batch {
            ids: Tensor::from_vec(ids, (rows.len(), width), device)?,
            mask: Tensor::from_vec(mask, (rows.len(), width), device)?,
            real_tokens,
            targets,
        })
    }

    /// Mean loss over every trained token of the eval split; perplexity is its exponential.
    fn evaluate(&self, step: usize) -> Result<f64> {
        self.job.model.dropout_key().set(None);
        let size = self.job.config.micro_batch_size;
        let (mut total, mut count) = (0.0, 0.0);
        for chunk in self.job.eval.chunks(size) {
            let rows: Vec<&Example> = chunk.iter().collect();
            let batch = self.pack(&rows)?;
            if batch.targets == 0 {
                continue;
            }
            let (loss, n) = masked_lm_loss(&self.job.model, &batch.ids, &batch.mask)?;
            total += loss.to_scalar::<f32>()? as f64 * n;
            count += n;
        }
        let loss = total / count.max(1.0);
        let perplexity = loss.exp();
        self.job.run.log_metrics(
            &json!({"step": step, "eval_loss": loss, "eval_perplexity": perplexity}),
        )?;
        self.send(TrainEvent::Eval {
            step,
            loss,
            perplexity,
        });
        Ok(loss)
    }

    fn checkpoint(&self, step: usize) -> Result<PathBuf> {
        let model = &self.job.model;
        let config = &self.job.config;
        let state = self.optimizer.state()?;
        let path = self.job.run.save_checkpoint(step, |dir| {
            adapter::save_peft(model, &config.lora, &self.job.base_model, dir)?;
            let opt_path = dir.join(OPTIMIZER_STATE);
            candle_core::safetensors::save(&state, &opt_path).map_err(|e| {
                ModelError::Safetensors {
                    path: opt_path.clone(),
                    message: e.to_string(),
                }
            })?;
            let trainer_state =
                json!({"step": step, "total_steps": self.total_steps, "seed": config.seed});
            let state_path = dir.join(TRAINER_STATE);
            std::fs::write(&state_path, trainer_state.to_string())
                .map_err(|e| ModelError::io(&state_path, e))
        })?;
        self.send(TrainEvent::CheckpointSaved {
            step,
            path: path.clone(),
        });
        Ok(path)
    }
}

/// The order of the training examples in `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch).
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .shuffle(&mut order);
    order
}

/// Resident memory of this process in bytes (0 where the system does not say).
pub fn resident_memory() -> u64 {
    crate::engine::sysmem::resident().unwrap_or(0)
}

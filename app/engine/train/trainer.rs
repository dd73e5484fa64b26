//! The training loop, on its own thread: optimizer steps ([`super::step`]) in a seeded batch order, with
//! evaluation, checkpoints (by step count, by time, on pause, on cancel, at the end), pause/resume/cancel,
//! learning-rate changes and events for the UI and CLI. The whole algorithm is in `Trainer::run`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::checkpoint::{self, Skipped};
use super::config::{LrChange, TrainConfig};
use super::loss::mean_loss;
use super::memory::{self, DeviceKind, MemoryEstimate};
use super::optim::AdamW;
use super::order::BatchOrder;
use super::run::RunDir;
use super::sizing::DataShape;
use super::step::{pack, train_step, Batch, StepOutcome};
use crate::engine::adapter;
use crate::engine::data::Example;
use crate::engine::error::{ModelError, Result};
use crate::engine::model::Model;

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
    /// QLoRA: the eval loss of the full-precision base and of the same base quantized, measured before
    /// the first step; the difference is what quantization costs before any training.
    QuantizationCost {
        dense_loss: f64,
        quantized_loss: f64,
    },
    /// Something to tell the person that does not stop the run: a checkpoint that could not be read
    /// and was skipped, a learning-rate change.
    Notice {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainCommand {
    /// Stop between steps, saving a checkpoint of the steps done so far.
    Pause,
    Resume,
    /// Stop before the next micro-batch. The checkpoint saved holds the last completed optimizer step
    /// (the unfinished step's gradients are dropped), so a resumed run redoes that step and continues
    /// exactly as if never stopped.
    Cancel,
    /// From the next step on, the schedule peaks at this learning rate instead (e.g. lower, after a
    /// divergence); recorded in run.toml's `lr_changes` and in metrics.jsonl.
    SetLr(f64),
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
    /// Continue from the run's newest checkpoint that loads.
    pub resume: bool,
    pub pad_id: u32,
    /// What QLoRA's quantization cost is measured against, if anything.
    pub quantization: QuantizationPlan,
}

/// How a QLoRA run learns what quantizing its base cost.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum QuantizationPlan {
    /// Nothing to measure (LoRA, or a resumed run that measured it before).
    #[default]
    Nothing,
    /// The model arrives dense: evaluate it, quantize it to NF4 in place (double quantization as
    /// asked), evaluate again.
    MeasureThenQuantize { double_quant: bool },
    /// The base is quantized but the full-precision one could not be evaluated; why, for the person.
    NotMeasured(String),
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
    crate::engine::sysmem::release_free_memory();
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
    let outcome = Trainer::new(job, events, commands).and_then(|t| t.run());
    crate::engine::sysmem::release_free_memory();
    outcome
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
        "The model and batch do not fit in memory: lower the micro-batch size or max_seq_len (raise gradient accumulation to keep the effective batch), turn on gradient checkpointing, choose QLoRA (a 4-bit base), target fewer modules, or choose a smaller model."
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
    order: BatchOrder,
    /// Commands that arrived during a step and wait for its end (all but Cancel).
    deferred: VecDeque<TrainCommand>,
    /// The newest checkpoint on disk: its step and folder.
    saved: Option<(usize, PathBuf)>,
    /// When the last checkpoint was saved (or training started), for the time-based checkpoints.
    saved_at: Instant,
    /// QLoRA: the full-precision base's eval loss, measured before it was quantized.
    dense_eval_loss: Option<f64>,
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
            return Err(ModelError::invalid_input(
                "dataset",
                "the training split is empty: add rows to the dataset or lower the eval split",
            ));
        }
        let mut job = job;
        let mut dense_eval_loss = None;
        let (start_step, saved, optimizer) = match job.resume {
            true => {
                let mut skipped = |s: Skipped| {
                    let _ = events.send(TrainEvent::Notice {
                        message: skipped_message(&s),
                    });
                };
                let (step, dir, optimizer) =
                    checkpoint::load_newest(&job.run, &mut job.model, &job.config, &mut skipped)?;
                job.run.truncate_metrics_after(step)?;
                forget_lr_changes_after(&mut job, step)?;
                (step, Some((step, dir)), optimizer)
            }
            false => {
                if let QuantizationPlan::MeasureThenQuantize { double_quant } = job.quantization {
                    if !job.eval.is_empty() {
                        dense_eval_loss = Some(eval_loss(&job)?);
                    }
                    job.model.quantize_base(double_quant)?;
                }
                job.model.attach_lora(&job.config.lora, job.config.seed)?;
                let optimizer = checkpoint::optimizer_for(&job.model, &job.config)?;
                (0, None, optimizer)
            }
        };
        job.model
            .set_gradient_checkpointing(job.config.gradient_checkpointing)?;
        let total_steps = job.config.total_steps(job.train.len());
        let c = &job.config;
        let lengths = job
            .train
            .iter()
            .map(|e| e.ids.len().min(c.max_seq_len))
            .collect();
        let order = BatchOrder::new(lengths, c.micro_batch_size, c.seed, c.group_by_length);
        Ok(Trainer {
            job,
            events,
            commands,
            optimizer,
            total_steps,
            start_step,
            order,
            deferred: VecDeque::new(),
            saved,
            saved_at: Instant::now(),
            dense_eval_loss,
        })
    }

    /// On the CPU, whether the run's largest micro-batch cannot fit in memory, by the same
    /// [`MemoryEstimate`] the Method page and `loft estimate` show. The model is loaded by now, so the
    /// memory it can use is what the system has free plus what this process already holds.
    /// On a GPU, running out is an error the backend reports, so it is not guessed.
    fn memory_problem(&self) -> Option<(String, String)> {
        if !self.job.model.device().is_cpu() {
            return None;
        }
        let c = &self.job.config;
        let data = DataShape::of(&self.job.train, c)?;
        let available =
            memory::available_memory()? + crate::engine::sysmem::resident().unwrap_or(0);
        let estimate = MemoryEstimate::for_data(&self.job.model.arch, c, DeviceKind::Cpu, &data)
            .with_available(Some(available));
        memory::does_not_fit(&estimate)
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
        if let Some((reason, advice)) = self.memory_problem() {
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
        self.saved_at = started;
        let mut last_loss = None;
        let mut last_eval = None;
        // The base model's eval loss: the number the run has to beat.
        if self.start_step == 0 && !self.job.eval.is_empty() {
            let quantized_loss = self.evaluate(0)?;
            last_eval = Some(quantized_loss);
            if let Some(dense_loss) = self.dense_eval_loss {
                self.job.run.log_metrics(&json!({
                    "step": 0, "quantization": self.job.config.quant.name(),
                    "dense_eval_loss": dense_loss, "quantized_eval_loss": quantized_loss,
                }))?;
                self.send(TrainEvent::QuantizationCost {
                    dense_loss,
                    quantized_loss,
                });
            }
        }
        if let QuantizationPlan::NotMeasured(why) = &self.job.quantization {
            if self.start_step == 0 {
                self.send(TrainEvent::Notice {
                    message: why.clone(),
                });
            }
        }
        let per_epoch = self.job.config.total_steps_per_epoch(self.job.train.len());
        let interval = self.job.config.checkpoint_interval(self.total_steps);
        for step in self.start_step..self.total_steps {
            if let Some(stop) = self.obey_commands(step)? {
                return stop;
            }
            let step_start = Instant::now();
            let lr = self.job.config.lr_at(step, self.total_steps);
            let Some(StepOutcome {
                loss,
                grad_norm,
                tokens,
            }) = self.step(step, lr)?
            else {
                return self.cancel(step);
            };
            if !loss.is_finite() || !grad_norm.is_finite() {
                self.diverged(step, loss, grad_norm, lr);
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
            let minutes = c.save_every_minutes;
            let save_due = done % interval == 0
                || (minutes > 0.0 && self.saved_at.elapsed().as_secs_f64() >= minutes * 60.0);
            if !self.job.eval.is_empty() && (eval_due || done == self.total_steps) {
                last_eval = Some(self.evaluate(done)?);
            }
            if save_due && done < self.total_steps {
                self.checkpoint(done)?;
            }
        }
        self.checkpoint_now(self.total_steps)?;
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

    /// Stop the run: the loss or the gradients are no longer numbers. The step was not applied.
    fn diverged(&self, step: usize, loss: f64, grad_norm: f64, lr: f64) {
        let last = self.saved.as_ref().map(|(s, _)| *s);
        let what = match loss.is_finite() {
            true => format!("the gradients' norm became {grad_norm}"),
            false => format!("the loss became {loss}"),
        };
        let peak = self.job.config.peak_lr_at(step);
        let resume = match last {
            Some(s) => format!(
                " The last good checkpoint is step {s}; continue from it with a lower rate: `loft train --resume {} --lr {:.1e}`.",
                self.job.run.path.display(),
                peak / 2.0
            ),
            None => String::new(),
        };
        self.send(TrainEvent::Failed {
            reason: format!("{what} at step {}", step + 1),
            advice: format!(
                "Training diverged: lower the learning rate (now {lr:.2e}; try half), or check the data for very long or broken rows.{resume}"
            ),
        });
    }

    /// Handle the commands waiting between steps (`step` steps done). `Some` ends the run.
    fn obey_commands(&mut self, step: usize) -> Result<Option<Result<()>>> {
        let mut paused = false;
        loop {
            let command = match self.deferred.pop_front() {
                Some(c) => c,
                None if paused => self.commands.recv().unwrap_or(TrainCommand::Cancel),
                None => match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(None),
                },
            };
            match command {
                TrainCommand::Pause if !paused => {
                    // A pause may turn into closing the app or switching the machine off: save first.
                    self.checkpoint_now(step)?;
                    paused = true;
                    self.send(TrainEvent::Paused { step });
                }
                TrainCommand::Resume if paused => {
                    // Train on at once; what came after Resume is heard between micro-batches.
                    self.send(TrainEvent::Resumed { step });
                    return Ok(None);
                }
                TrainCommand::Cancel => return Ok(Some(self.cancel(step))),
                TrainCommand::SetLr(lr) => self.change_lr(step, lr)?,
                _ => {}
            }
        }
    }

    /// End the run after `step` completed steps, with a checkpoint of them.
    fn cancel(&mut self, step: usize) -> Result<()> {
        let checkpoint = self.checkpoint_now(step)?;
        self.send(TrainEvent::Cancelled { step, checkpoint });
        Ok(())
    }

    /// From step `step` on, the schedule peaks at `lr`: kept in the config, written to run.toml (so the run
    /// can be redone exactly) and noted in metrics.jsonl.
    fn change_lr(&mut self, step: usize, lr: f64) -> Result<()> {
        let previous = self.job.config.peak_lr_at(step);
        let mut changed = self.job.config.clone();
        changed.lr_changes.retain(|c| c.step < step);
        changed.lr_changes.push(LrChange { step, lr });
        if let Err(problem) = changed.validate() {
            self.send(TrainEvent::Notice {
                message: format!("the learning rate was not changed: {problem}"),
            });
            return Ok(());
        }
        self.job.config = changed;
        self.record_lr_changes()?;
        self.job
            .run
            .log_metrics(&json!({"step": step, "lr_change": lr, "previous_peak_lr": previous}))?;
        self.send(TrainEvent::Notice {
            message: format!(
                "after step {step} the learning rate peaks at {lr:e} instead of {previous:e} (recorded in run.toml)"
            ),
        });
        Ok(())
    }

    /// Write the config's learning-rate changes into the run's run.toml.
    fn record_lr_changes(&self) -> Result<()> {
        let mut spec = self.job.run.read_spec()?;
        spec.train.lr_changes = self.job.config.lr_changes.clone();
        self.job.run.write_spec(&spec)
    }

    /// Optimizer step number `step` (0-based), abandoned (`None`) when a Cancel arrives before one of its
    /// micro-batches; other commands that arrive meanwhile wait for the step's end.
    fn step(&mut self, step: usize, lr: f64) -> Result<Option<StepOutcome>> {
        let accum = self.job.config.grad_accum;
        let first = step * accum;
        let batches: Vec<Batch> = (first..first + accum)
            .map(|index| self.batch(index))
            .collect::<Result<_>>()?;
        let (commands, deferred) = (&self.commands, &mut self.deferred);
        let mut cancelled = || loop {
            match commands.try_recv() {
                Ok(TrainCommand::Cancel) => return true,
                Ok(other) => deferred.push_back(other),
                Err(_) => return false,
            }
        };
        let c = &self.job.config;
        train_step(
            &self.job.model,
            &mut self.optimizer,
            &batches,
            lr,
            c.max_grad_norm,
            c.seed,
            first,
            &mut cancelled,
        )
    }

    /// Micro-batch number `index` of the run.
    fn batch(&mut self, index: usize) -> Result<Batch> {
        let rows = self.order.micro_batch(index);
        let rows: Vec<&Example> = rows.iter().map(|&i| &self.job.train[i]).collect();
        pack(
            &rows,
            self.job.config.max_seq_len,
            self.job.pad_id,
            self.job.model.device(),
        )
    }

    /// Mean loss over every trained token of the eval split; perplexity is its exponential.
    fn evaluate(&self, step: usize) -> Result<f64> {
        let loss = eval_loss(&self.job)?;
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

    /// A checkpoint of the `step` steps done, unless the newest one already holds them; `None` at step 0
    /// (there is nothing to save yet).
    fn checkpoint_now(&mut self, step: usize) -> Result<Option<PathBuf>> {
        match &self.saved {
            Some((saved, path)) if *saved == step => Ok(Some(path.clone())),
            _ if step == 0 => Ok(None),
            _ => self.checkpoint(step).map(Some),
        }
    }

    /// Save a checkpoint of the `step` steps done, then delete the oldest beyond `keep_checkpoints`.
    fn checkpoint(&mut self, step: usize) -> Result<PathBuf> {
        let path = checkpoint::save(
            &self.job.run,
            step,
            self.total_steps,
            &self.job.model,
            &self.optimizer,
            &self.job.config,
            &self.job.base_model,
        )?;
        self.saved = Some((step, path.clone()));
        self.saved_at = Instant::now();
        self.send(TrainEvent::CheckpointSaved {
            step,
            path: path.clone(),
        });
        self.job
            .run
            .prune_checkpoints(self.job.config.keep_checkpoints)?;
        Ok(path)
    }
}

/// What to tell the person about a checkpoint resuming could not read.
fn skipped_message(s: &Skipped) -> String {
    let moved = s.moved_to.as_ref().map_or(String::new(), |p| {
        format!("; it was moved to {}", p.display())
    });
    format!(
        "the checkpoint of step {} cannot be read, so an older one is used ({}){moved}",
        s.step, s.reason
    )
}

/// Learning-rate changes made after the checkpoint a run resumes from belong to work that is lost, as
/// its metrics do: forget them, in the config and in run.toml.
fn forget_lr_changes_after(job: &mut TrainJob, step: usize) -> Result<()> {
    let before = job.config.lr_changes.len();
    job.config.lr_changes.retain(|c| c.step <= step);
    if job.config.lr_changes.len() != before {
        let mut spec = job.run.read_spec()?;
        spec.train.lr_changes = job.config.lr_changes.clone();
        job.run.write_spec(&spec)?;
    }
    Ok(())
}

/// Resident memory of this process in bytes (0 where the system does not say).
pub fn resident_memory() -> u64 {
    crate::engine::sysmem::resident().unwrap_or(0)
}
/// The mean loss per target token over the eval split, without dropout.
fn eval_loss(job: &TrainJob) -> Result<f64> {
    mean_loss(
        &job.model,
        &job.eval,
        job.config.micro_batch_size,
        job.config.max_seq_len,
        job.pad_id,
    )
}

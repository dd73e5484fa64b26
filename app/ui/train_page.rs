//! Step 4, training: start, follow live curves and progress, pause, resume, cancel; failures come with
//! the engine's advice. The run itself lives in an engine `Session` on worker threads.

use std::path::PathBuf;
use std::sync::Arc;

use egui::{RichText, Ui};

use super::widgets::{self, BAD, GOOD};
use crate::engine::train::prepare::{PrepareEvent, Prepared};
use crate::engine::train::run::{RunDir, RunSpec};
use crate::engine::train::runs::Curves;
use crate::engine::train::trainer::StepMetrics;
use crate::engine::train::{Session, SessionEvent, TrainCommand, TrainEvent};

/// What a run with the current choices will do, shown before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Examples in the training set (before those over max_seq_len are left out).
    pub train_examples: usize,
    /// Where evaluation examples come from, in words ("11 held out (10%)").
    pub eval: String,
    /// Rows over max_seq_len, and whether they are cut (else left out).
    pub overlong: usize,
    pub truncate: bool,
    pub steps: usize,
    pub examples_per_step: usize,
    /// Some(epochs) when the length is set in epochs, None when by max_steps.
    pub epochs: Option<f64>,
    /// The run's folder as it will be named (its time stamp is taken at the start).
    pub folder: PathBuf,
    /// What the chosen method needs in memory against what is available, in words, and its colour.
    pub memory: Option<(String, egui::Color32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Idle,
    Preparing(String),
    Training,
    Paused,
    Finished { adapter: PathBuf },
    Cancelled { step: usize },
    Failed { reason: String, advice: String },
}

pub struct TrainPage {
    session: Option<Session>,
    pub phase: Phase,
    pub run_dir: Option<PathBuf>,
    pub curves: Curves,
    pub last: Option<StepMetrics>,
    pub total_steps: usize,
    trainable: Option<(usize, u64)>,
    prepared: Option<Prepared>,
    last_eval: Option<(f64, f64)>,
    last_checkpoint: Option<PathBuf>,
    /// What the engine said along the way (a skipped checkpoint, a learning-rate change).
    notices: Vec<String>,
    /// QLoRA: the eval loss of the full-precision base and of the 4-bit one, before training.
    pub quantization_cost: Option<(f64, f64)>,
    /// The `loft train …` line that does the same run.
    pub command_line: String,
}

impl Default for TrainPage {
    fn default() -> Self {
        TrainPage {
            session: None,
            phase: Phase::Idle,
            run_dir: None,
            curves: Curves::default(),
            last: None,
            total_steps: 0,
            trainable: None,
            prepared: None,
            last_eval: None,
            last_checkpoint: None,
            notices: Vec::new(),
            quantization_cost: None,
            command_line: String::new(),
        }
    }
}

/// What the page asks of the app this frame.
pub enum Action {
    None,
    Start,
}

impl TrainPage {
    pub fn is_running(&self) -> bool {
        self.session.is_some()
    }

    pub fn status(&self) -> String {
        match &self.phase {
            Phase::Idle => "not started".into(),
            Phase::Preparing(s) => s.clone(),
            Phase::Training | Phase::Paused => match &self.last {
                Some(m) => format!("step {}/{}", m.step, m.total_steps),
                None => "starting…".into(),
            },
            Phase::Finished { .. } => "finished".into(),
            Phase::Cancelled { step } => format!("cancelled at step {step}"),
            Phase::Failed { .. } => "failed".into(),
        }
    }

    /// Start (or resume) a run. `history` is what a resumed run already logged.
    pub fn start(
        &mut self,
        ctx: &egui::Context,
        spec: RunSpec,
        run: RunDir,
        resume: bool,
        history: Curves,
    ) {
        *self = TrainPage {
            phase: Phase::Preparing("loading the model…".into()),
            run_dir: Some(run.path.clone()),
            curves: history,
            command_line: crate::engine::train::command::command_line(
                &spec,
                run.path.parent(),
                resume.then_some(run.path.as_path()),
            ),
            ..TrainPage::default()
        };
        let ctx = ctx.clone();
        self.session = Some(Session::start(
            spec,
            run,
            resume,
            Arc::new(move || ctx.request_repaint()),
        ));
    }

    pub fn poll(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let events: Vec<SessionEvent> = session.events.try_iter().collect();
        let mut ended = false;
        for event in events {
            ended |= event.is_final();
            self.apply(event);
        }
        if ended {
            if let Some(session) = self.session.take() {
                // After its last event the worker still frees the model and ends its relay; wait for
                // that on a thread of its own, never on the UI thread.
                let reaped = std::thread::Builder::new()
                    .name("loft-session-end".into())
                    .spawn(move || session.join());
                if let Err(e) = reaped {
                    eprintln!(
                        "warning: the finished training thread is left to end on its own: {e}"
                    );
                }
            }
        }
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Preparing(p) => {
                self.phase = Phase::Preparing(match p {
                    PrepareEvent::Download(_) => "downloading the model…".into(),
                    PrepareEvent::LoadingModel => "loading the model…".into(),
                    PrepareEvent::Data(p) => format!("preparing the data ({} done)…", p.done),
                })
            }
            SessionEvent::Prepared(p) => self.prepared = Some(p),
            SessionEvent::Train(t) => match t {
                TrainEvent::Started {
                    total_steps,
                    start_step,
                    trainable_parameters,
                    total_parameters,
                    ..
                } => {
                    self.phase = Phase::Training;
                    self.total_steps = total_steps;
                    self.trainable = Some((trainable_parameters, total_parameters));
                    let keep = |c: &mut Vec<[f64; 2]>| c.retain(|p| p[0] <= start_step as f64);
                    keep(&mut self.curves.loss);
                    keep(&mut self.curves.eval_loss);
                    keep(&mut self.curves.lr);
                }
                TrainEvent::Step(m) => {
                    let step = m.step as f64;
                    self.curves.loss.push([step, m.loss]);
                    self.curves.lr.push([step, m.lr]);
                    self.last = Some(m);
                }
                TrainEvent::Eval {
                    step,
                    loss,
                    perplexity,
                } => {
                    self.curves.eval_loss.push([step as f64, loss]);
                    self.last_eval = Some((loss, perplexity));
                }
                TrainEvent::CheckpointSaved { path, .. } => self.last_checkpoint = Some(path),
                TrainEvent::Paused { .. } => self.phase = Phase::Paused,
                TrainEvent::Resumed { .. } => self.phase = Phase::Training,
                TrainEvent::Finished { adapter_dir, .. } => {
                    self.phase = Phase::Finished {
                        adapter: adapter_dir,
                    }
                }
                TrainEvent::Cancelled { step, .. } => self.phase = Phase::Cancelled { step },
                TrainEvent::Failed { reason, advice } => {
                    self.phase = Phase::Failed { reason, advice }
                }
                TrainEvent::Notice { message } => self.notices.push(message),
                TrainEvent::QuantizationCost {
                    dense_loss,
                    quantized_loss,
                } => self.quantization_cost = Some((dense_loss, quantized_loss)),
            },
        }
    }

    pub fn command(&self, command: TrainCommand) {
        if let Some(s) = &self.session {
            s.send(command);
        }
    }

    /// `draft_command`: the `loft train` line for the current choices, offered before a run exists;
    /// `plan`: what a run with these choices will do.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        blocker: Option<String>,
        draft_command: Option<String>,
        plan: Option<Result<Plan, String>>,
    ) -> Action {
        let mut action = Action::None;
        widgets::heading(
            ui,
            "Train",
            "Training shows the model your examples again and again and nudges the LoRA matrices towards the answers. Watch the eval loss: it should fall with the training loss.",
        );
        ui.horizontal(|ui| {
            if self.is_running() {
                let paused = self.phase == Phase::Paused;
                if paused {
                    if ui.button("Resume").clicked() {
                        self.command(TrainCommand::Resume);
                    }
                } else if ui.button("Pause").clicked() {
                    self.command(TrainCommand::Pause);
                }
                if ui.button("Cancel").on_hover_text("Stops before the next micro-batch and saves a checkpoint of the last finished step, which you can resume from the Runs view.").clicked() {
                    self.command(TrainCommand::Cancel);
                }
            } else {
                let start = ui.add_enabled(blocker.is_none(), egui::Button::new(RichText::new("Start training").strong()));
                if start.clicked() {
                    action = Action::Start;
                }
                if let Some(b) = &blocker {
                    ui.label(RichText::new(format!("Before starting: {b}")).weak());
                }
            }
            // Before a run: the line for the current choices; after: the line of the run shown.
            let command = match self.phase {
                Phase::Idle => draft_command,
                _ => Some(self.command_line.clone()),
            }
            .filter(|c| !c.is_empty());
            if let Some(command) = command {
                if ui.button("Copy CLI command").on_hover_text(&command).clicked() {
                    ui.ctx().copy_text(command);
                }
            }
        });
        if self.phase == Phase::Idle {
            plan_ui(ui, plan);
        }
        self.progress_ui(ui);
        match &self.phase {
            Phase::Failed { reason, advice } => widgets::problem(ui, reason, advice),
            Phase::Finished { adapter } => {
                ui.colored_label(
                    GOOD,
                    format!(
                        "Finished. The adapter (PEFT format) is in {}",
                        adapter.display()
                    ),
                );
            }
            Phase::Cancelled { step } => {
                ui.label(format!(
                    "Cancelled at step {step}. Resume it from the Runs view."
                ));
            }
            _ => {}
        }
        if !self.curves.loss.is_empty() || !self.curves.eval_loss.is_empty() {
            ui.label(RichText::new("Loss").strong());
            widgets::curves(
                ui,
                "train-loss",
                "Loss",
                200.0,
                &[
                    ("training loss", &self.curves.loss),
                    ("eval loss", &self.curves.eval_loss),
                ],
            );
            ui.label(RichText::new("Learning rate").strong());
            widgets::curves(
                ui,
                "train-lr",
                "Learning rate",
                100.0,
                &[("learning rate", &self.curves.lr)],
            );
        }
        action
    }

    fn progress_ui(&self, ui: &mut Ui) {
        for notice in &self.notices {
            ui.label(RichText::new(notice).weak());
        }
        if let Some((dense, quantized)) = self.quantization_cost {
            ui.label(format!(
                "What 4-bit quantization cost before training: eval loss {dense:.3} with the full-precision base, {quantized:.3} with the 4-bit one ({:+.3}). Training learns around this.",
                quantized - dense
            ));
        }
        if let Phase::Preparing(what) = &self.phase {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(what);
            });
            return;
        }
        if let Some(p) = &self.prepared {
            ui.label(format!(
                "{} training and {} evaluation examples on {}{}",
                p.train_examples,
                p.eval_examples,
                p.device,
                if p.dropped_overlong > 0 {
                    format!(" · {} too long, left out", p.dropped_overlong)
                } else {
                    String::new()
                }
            ));
        }
        if let Some((trainable, total)) = self.trainable {
            ui.label(format!(
                "Training {} LoRA parameters ({:.2}% of {})",
                widgets::thousands(trainable as u64),
                100.0 * trainable as f64 / total.max(1) as f64,
                widgets::thousands(total)
            ));
        }
        if let Some(m) = &self.last {
            let fraction = m.step as f32 / m.total_steps.max(1) as f32;
            let paused = if self.phase == Phase::Paused {
                " · paused"
            } else {
                ""
            };
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "step {}/{} · {:.0} tokens/s · {} elapsed · {} left{paused}",
                m.step,
                m.total_steps,
                m.tokens_per_second,
                widgets::duration(m.elapsed),
                widgets::duration(m.eta),
            )));
            ui.label(format!(
                "loss {:.4} · learning rate {:.2e} · gradient norm {:.3} · memory {}",
                m.loss,
                m.lr,
                m.grad_norm,
                widgets::bytes(m.memory_bytes)
            ));
        } else if self.phase == Phase::Training {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("first step of {} running…", self.total_steps));
            });
        }
        if let Some((loss, ppl)) = self.last_eval {
            ui.label(format!("eval loss {loss:.4} · perplexity {ppl:.2}"));
        }
        if let Some(c) = &self.last_checkpoint {
            ui.label(RichText::new(format!("last checkpoint: {}", c.display())).weak());
        }
        if let Phase::Failed { .. } = self.phase {
            ui.colored_label(BAD, "The run stopped.");
        }
    }
}

/// The plan in a few lines: how long, on what, and where the run goes. There is no honest time
/// estimate before the first steps on this machine, so none is made up.
fn plan_ui(ui: &mut Ui, plan: Option<Result<Plan, String>>) {
    let plan = match plan {
        None => return,
        Some(Err(e)) => {
            ui.colored_label(BAD, format!("Plan: {e}"));
            return;
        }
        Some(Ok(p)) => p,
    };
    ui.add_space(6.0);
    ui.label(RichText::new("What will happen").strong());
    let length = match plan.epochs {
        Some(epochs) => format!("{epochs} epochs"),
        None => "a fixed number of steps (Method step)".to_string(),
    };
    let about = if plan.overlong > 0 && !plan.truncate {
        "about "
    } else {
        ""
    };
    ui.label(format!(
        "Plan: {about}{} steps of {} examples each ({length}) over {} training examples; evaluation on {}.",
        plan.steps, plan.examples_per_step, plan.train_examples, plan.eval
    ));
    if plan.overlong > 0 {
        ui.label(format!(
            "{} rows are longer than max_seq_len and will be {}.",
            plan.overlong,
            if plan.truncate {
                "cut to fit"
            } else {
                "left out"
            }
        ));
    }
    if let Some((memory, color)) = &plan.memory {
        ui.colored_label(*color, format!("Memory: {memory}"));
    }
    ui.label(format!(
        "The run goes to {} (its settings, metrics, checkpoints and the adapter).",
        plan.folder.display()
    ));
    ui.label(
        RichText::new(
            "Time: no estimate yet. Loft measures the first steps on this machine; the progress bar then shows the time left.",
        )
        .weak(),
    );
}

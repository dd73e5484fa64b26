//! The app's state and its frame: the step bar (Model → Data → Method → Train, and Runs), the page of the
//! current step, dropped files, and what is remembered between launches. Everything here is UI state;
//! work happens in jobs and engine sessions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use egui::{Key, RichText, Ui};
use serde::{Deserialize, Serialize};

use super::data_page::{self, DataPage, EvalChoice};
use super::eval_page::EvalPage;
use super::fix_data;
use super::jobs::Job;
use super::method_page::{self, DeviceInfo, MethodContext, MethodPage};
use super::model_page::ModelPage;
use super::remembered::Remembered;
use super::runs_page::{self, RunsPage};
use super::train_page::{self, TrainPage};
use super::widgets::{self, GOOD};
use crate::engine::data::SplitSpec;
use crate::engine::source::WeightFiles;
use crate::engine::train::memory::DeviceKind;
use crate::engine::train::run::{sha256_file, slug, timestamp, RunDir, RunSpec};
use crate::engine::train::runs::{Curves, RunSummary};
use crate::engine::train::TrainCommand;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Page {
    #[default]
    Model,
    Data,
    Method,
    Train,
    Evaluate,
    Runs,
}

impl Page {
    pub const ALL: [Page; 6] = [
        Page::Model,
        Page::Data,
        Page::Method,
        Page::Train,
        Page::Evaluate,
        Page::Runs,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Page::Model => "Model",
            Page::Data => "Data",
            Page::Method => "Method",
            Page::Train => "Train",
            Page::Evaluate => "Evaluate",
            Page::Runs => "Runs",
        }
    }
}

/// A run ready to start: its spec and folder, whether it resumes, and the curve it already has.
type RunStart = (RunSpec, RunDir, bool, Curves);

/// Where the app keeps runs and where it downloads from; tests point them at temporary folders and a
/// local hub.
#[derive(Default)]
pub struct AppOptions {
    pub runs_dir: PathBuf,
    pub hub: crate::engine::hub::HubOptions,
    /// The program that shows a run's folder (None: the platform's file manager, e.g. xdg-open).
    pub folder_opener: Option<PathBuf>,
    /// Where evaluation caches the base model's answers (None: the platform's cache folder).
    pub eval_cache: Option<PathBuf>,
}

/// Frame timings, for the measurements the smoke check prints.
#[derive(Default)]
pub struct FrameStats {
    pub started: Option<Instant>,
    pub first_frame: Option<std::time::Duration>,
    /// Seconds the UI thread spent on each frame (eframe's `cpu_usage`).
    pub frame_seconds: Vec<f32>,
}

pub struct LoftApp {
    pub page: Page,
    pub model: ModelPage,
    pub data: DataPage,
    pub method: MethodPage,
    pub train: TrainPage,
    pub eval: EvalPage,
    pub runs: RunsPage,
    pub runs_dir: PathBuf,
    device_job: Option<Job<DeviceInfo>>,
    start_job: Option<Job<Result<RunStart, String>>>,
    notice: Option<String>,
    /// The window was asked to close while a run trains: it closes once the run has saved and ended.
    closing: bool,
    /// "Close without waiting" was chosen: let the close through.
    close_anyway: bool,
    pub frames: FrameStats,
}

impl LoftApp {
    pub fn new(
        ctx: &egui::Context,
        options: AppOptions,
        remembered: Option<Remembered>,
    ) -> LoftApp {
        let mut app = LoftApp {
            page: Page::Model,
            model: ModelPage::new(options.hub),
            data: DataPage::default(),
            method: MethodPage::default(),
            train: TrainPage::default(),
            eval: EvalPage::new(options.eval_cache),
            runs: RunsPage::new(options.folder_opener),
            runs_dir: options.runs_dir,
            device_job: Some(Job::spawn(ctx, "device", |r| r.send(describe_device()))),
            start_job: None,
            notice: None,
            closing: false,
            close_anyway: false,
            frames: FrameStats {
                started: Some(Instant::now()),
                ..FrameStats::default()
            },
        };
        if let Some(r) = remembered {
            app.page = r.page;
            if let Some(model) = r.model {
                app.model.open(ctx, model);
            }
            for f in r.data_files {
                app.data.add(f);
            }
            app.data.train = r.train_file.min(app.data.files.len().saturating_sub(1));
            if let Some(eval) = r.eval {
                app.data.eval = eval;
            }
            app.data.skip_error_rows = r.skip_error_rows;
            app.data.truncate_overlong = r.truncate_overlong;
            app.data.train_on_all_tokens = r.train_on_all_tokens;
            if let Some(config) = r.config {
                app.method.config = config;
            }
        }
        app
    }

    /// Say something in the status bar until dismissed.
    pub fn notify(&mut self, text: String) {
        self.notice = Some(text);
    }

    pub fn remembered(&self) -> Remembered {
        Remembered {
            page: self.page,
            model: self.model.spec().map(str::to_string),
            data_files: self.data.files.iter().map(|f| f.path.clone()).collect(),
            train_file: self.data.train,
            eval: Some(self.data.eval),
            skip_error_rows: self.data.skip_error_rows,
            truncate_overlong: self.data.truncate_overlong,
            train_on_all_tokens: self.data.train_on_all_tokens,
            config: Some(self.method.config.clone()),
        }
    }

    /// Files dropped on the window or given on the command line: datasets go to the Data step, a .gguf
    /// file or a folder to the Model step.
    pub fn open_paths(&mut self, ctx: &egui::Context, paths: Vec<PathBuf>) {
        let mut unknown = Vec::new();
        for path in paths {
            if data_page::is_dataset(&path) {
                self.data.add(path);
                self.page = Page::Data;
            } else if path.is_dir()
                || path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                self.model.open(ctx, path.display().to_string());
                self.page = Page::Model;
            } else {
                unknown.push(path.display().to_string());
            }
        }
        self.notice = (!unknown.is_empty()).then(|| {
            format!(
                "Loft opens datasets (.json, .jsonl) and models (.gguf files or Hugging Face folders); it cannot use {}.",
                unknown.join(", ")
            )
        });
    }

    fn poll(&mut self, ctx: &egui::Context) {
        self.model.poll();
        self.data.poll();
        let was_training = self.train.is_running();
        self.train.poll();
        if was_training && !self.train.is_running() {
            // The run's folder changed state: list the runs afresh when the Runs view is shown.
            self.runs.runs = None;
        }
        self.runs.poll();
        self.eval.poll();
        if let Some(job) = &mut self.device_job {
            if let Some(d) = job.poll().pop() {
                self.method.device = Some(d);
            }
            if !job.is_running() {
                self.device_job = None;
            }
        }
        if let Some(job) = &mut self.start_job {
            if let Some(outcome) = job.poll().pop() {
                match outcome {
                    Ok((spec, run, resume, history)) => {
                        self.train.start(ctx, spec, run, resume, history);
                        self.runs.runs = None;
                    }
                    Err(e) => self.notice = Some(e),
                }
            }
            if !job.is_running() {
                self.start_job = None;
            }
        }
        // Datasets are checked with the opened model's tokenizer, at the chosen max_seq_len.
        let model_files = self.model.info().map(|i| &i.files);
        self.data.refresh(ctx, model_files, &self.method.config);
    }

    /// Whether the opened model is a GGUF file (whose own quantized blocks QLoRA can train against).
    fn model_is_gguf(&self) -> bool {
        self.model
            .info()
            .is_some_and(|i| matches!(i.files.weights, WeightFiles::Gguf(_)))
    }

    /// Why training cannot start yet, or None.
    pub fn blocker(&self) -> Option<String> {
        if !self.model.is_done() {
            return Some("open a model (step Model)".into());
        }
        if let Some(b) = self.data.blocker() {
            return Some(format!("{b} (step Data)"));
        }
        if let Some(b) = self.method.blocker(self.model_is_gguf()) {
            return Some(format!("{b} (step Method)"));
        }
        if self.start_job.is_some() {
            return Some("creating the run folder…".into());
        }
        None
    }

    /// What a run with the current choices will do (None until the training file has been checked).
    fn plan(&self, spec: &RunSpec) -> Option<Result<train_page::Plan, String>> {
        let report = self.data.train_file()?.report()?;
        let rows = report.usable_rows;
        let (held_out, eval) = match self.data.eval_file() {
            Some(file) => (
                0,
                format!(
                    "{} ({})",
                    file.path.display(),
                    file.report().map_or("not checked yet".into(), |r| format!(
                        "{} examples",
                        r.usable_rows
                    ))
                ),
            ),
            None if spec.eval_split > 0.0 => {
                match SplitSpec::Fraction(spec.eval_split).eval_rows(rows) {
                    Ok(n) => (
                        n,
                        format!(
                            "{n} examples held out from the training file ({}%)",
                            (spec.eval_split * 1000.0).round() / 10.0
                        ),
                    ),
                    Err(e) => return Some(Err(e.to_string())),
                }
            }
            None => (0, "no examples (no evaluation)".into()),
        };
        let train_examples = rows - held_out;
        let overlong = report
            .stats
            .encoding
            .as_ref()
            .map_or(0, |e| e.over_max_seq_len);
        // Left-out rows leave the training set in proportion (the split is random).
        let kept = if spec.truncate_overlong || rows == 0 {
            train_examples
        } else {
            train_examples
                - (overlong * train_examples)
                    .div_ceil(rows)
                    .min(train_examples)
        };
        let config = &spec.train;
        Some(Ok(train_page::Plan {
            train_examples,
            eval,
            overlong,
            truncate: spec.truncate_overlong,
            steps: config.total_steps(kept),
            examples_per_step: config.micro_batch_size.saturating_mul(config.grad_accum),
            epochs: config.max_steps.is_none().then_some(config.epochs),
            folder: self
                .runs_dir
                .join(format!("{}-{}", timestamp(), slug(&spec.name))),
            memory: self.model.info().map(|i| {
                let comparison = self.method.comparison(&i.arch, self.data.lengths());
                method_page::needs_line(&comparison, config.method, egui::Color32::PLACEHOLDER)
            }),
        }))
    }

    /// The run the current choices describe, before its data is hashed (None until model and data exist).
    fn draft_spec(&self) -> Option<RunSpec> {
        let model = self.model.spec()?.to_string();
        let data = self.data.train_file()?.path.clone();
        Some(RunSpec {
            name: run_name(&model, self.method.config.method),
            model,
            data,
            data_sha256: String::new(),
            eval_data: self.data.eval_file().map(|f| f.path.clone()),
            eval_data_sha256: None,
            eval_split: self.data.eval_fraction(),
            train_on_all_tokens: self.data.train_on_all_tokens,
            truncate_overlong: self.data.truncate_overlong,
            skip_error_rows: self.data.skip_error_rows,
            created: String::new(),
            loft_version: env!("CARGO_PKG_VERSION").to_string(),
            train: self.method.config.clone(),
        })
    }

    pub fn start_run(&mut self, ctx: &egui::Context) {
        let Some(mut spec) = self.draft_spec() else {
            return;
        };
        self.model.release_loaded();
        let runs_dir = self.runs_dir.clone();
        // Hashing the data and writing run.toml is file work: off the UI thread.
        self.start_job = Some(Job::spawn(ctx, "create-run", move |r| {
            let made = (|| -> crate::engine::error::Result<RunDir> {
                spec.data_sha256 = sha256_file(&spec.data)?;
                spec.eval_data_sha256 = spec.eval_data.as_deref().map(sha256_file).transpose()?;
                spec.created = timestamp();
                RunDir::create(&runs_dir, &spec)
            })();
            r.send(
                made.map(|run| (spec, run, false, Curves::default()))
                    .map_err(|e| format!("could not create the run folder: {e}")),
            );
        }));
    }

    fn resume_run(&mut self, ctx: &egui::Context, path: PathBuf) {
        let history = self
            .runs
            .runs
            .iter()
            .flatten()
            .find(|r| r.path == path)
            .map(|r: &RunSummary| r.curves.clone())
            .unwrap_or_default();
        self.start_job = Some(Job::spawn(ctx, "open-run", move |r| {
            r.send(
                RunDir::open(&path)
                    .map(|(run, spec)| (spec, run, true, history))
                    .map_err(|e| format!("cannot resume {}: {e}", path.display())),
            );
        }));
        self.page = Page::Train;
    }

    /// The next run: `data` (a new version of a run's dataset) for training, with every other setting
    /// of the run `spec` describes, shown on the Train step.
    fn train_again(&mut self, data: PathBuf, spec: RunSpec) {
        self.data.add(data.clone());
        if let Some(eval) = &spec.eval_data {
            self.data.add(eval.clone());
        }
        if let Some(i) = self.data.files.iter().position(|f| f.path == data) {
            self.data.train = i;
        }
        self.data.eval = match spec
            .eval_data
            .as_ref()
            .and_then(|e| self.data.files.iter().position(|f| &f.path == e))
        {
            Some(i) => EvalChoice::File(i),
            None => EvalChoice::Split(spec.eval_split * 100.0),
        };
        self.data.truncate_overlong = spec.truncate_overlong;
        self.data.train_on_all_tokens = spec.train_on_all_tokens;
        self.data.skip_error_rows = spec.skip_error_rows;
        self.method.config = spec.train;
        self.page = Page::Train;
    }

    /// One frame of the whole window.
    pub fn ui(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.open_paths(&ctx, dropped);
        }
        self.shortcuts(&ctx);
        self.hold_close_while_saving(&ctx);
        egui::Panel::top("steps").show(ui, |ui| self.step_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("page")
                .show(ui, |ui| self.page_ui(ui));
        });
        drop_overlay(&ctx);
        self.closing_ui(&ctx);
    }

    /// Closing the window while a run trains would lose the steps since its last checkpoint. Hold the
    /// close back, tell the run to stop (it saves a checkpoint as it does), say so, and close once the
    /// run has ended. The UI thread never waits: it keeps painting the state meanwhile.
    fn hold_close_while_saving(&mut self, ctx: &egui::Context) {
        let asked = ctx.input(|i| i.viewport().close_requested());
        if asked && self.train.is_running() && !self.close_anyway {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            if !self.closing {
                self.closing = true;
                self.train.command(TrainCommand::Cancel);
            }
        }
        if self.closing && !self.train.is_running() {
            self.closing = false;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn closing_ui(&mut self, ctx: &egui::Context) {
        if !self.closing {
            return;
        }
        egui::Modal::new(egui::Id::unique("closing")).show(ctx, |ui| {
            ui.heading("Saving a checkpoint…");
            ui.label("Loft closes as soon as the run has saved a checkpoint you can resume from the Runs view.");
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("Training: {}", self.train.status()));
            });
            if ui
                .button("Close without waiting")
                .on_hover_text("Steps since the last saved checkpoint are lost.")
                .clicked()
            {
                // The run has been told to stop; the window goes now (LoftWindow::on_exit does not wait).
                self.close_anyway = true;
                self.closing = false;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        });
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let keys = [
            Key::Num1,
            Key::Num2,
            Key::Num3,
            Key::Num4,
            Key::Num5,
            Key::Num6,
        ];
        for (key, page) in keys.into_iter().zip(Page::ALL) {
            if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, key)) {
                self.page = page;
            }
        }
    }

    fn step_bar(&mut self, ui: &mut Ui) {
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new("Loft").heading().strong());
            ui.add_space(12.0);
            for (n, page) in Page::ALL.into_iter().enumerate() {
                let (done, status) = self.step_state(page);
                ui.vertical(|ui| {
                    let text = if page == Page::Runs {
                        page.title().to_string()
                    } else {
                        format!("{}. {}", n + 1, page.title())
                    };
                    let response = ui
                        .selectable_label(self.page == page, RichText::new(text).size(16.0))
                        .on_hover_text(format!("{} (Ctrl+{})", status, n + 1));
                    if response.clicked() {
                        self.page = page;
                    }
                    let color = if done {
                        GOOD
                    } else {
                        ui.visuals().weak_text_color()
                    };
                    let status = if done {
                        format!("done: {status}")
                    } else {
                        status
                    };
                    ui.label(RichText::new(truncate(&status, 38)).small().color(color));
                });
                if page == Page::Evaluate {
                    ui.separator();
                } else if page != Page::Runs {
                    ui.label(RichText::new(">").weak());
                }
            }
        });
        ui.add_space(2.0);
    }

    fn step_state(&self, page: Page) -> (bool, String) {
        match page {
            Page::Model => (self.model.is_done(), self.model.status()),
            Page::Data => (self.data.blocker().is_none(), self.data.status()),
            Page::Method => (
                self.method.blocker(self.model_is_gguf()).is_none(),
                self.method.status(self.model_is_gguf()),
            ),
            Page::Train => (
                matches!(self.train.phase, train_page::Phase::Finished { .. }),
                self.train.status(),
            ),
            Page::Evaluate => (self.eval.report.is_some(), self.eval.status()),
            Page::Runs => (false, "history".into()),
        }
    }

    fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if let Some(n) = &self.notice {
                ui.colored_label(widgets::WARN, n);
                if ui.small_button("Dismiss").clicked() {
                    self.notice = None;
                }
            } else if self.train.is_running() {
                ui.label(format!("Training: {}", self.train.status()));
            } else {
                ui.label(
                    RichText::new("Drop a dataset or a model anywhere on this window.").weak(),
                );
            }
        });
    }

    fn page_ui(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        match self.page {
            Page::Model => {
                // The same estimate as the Method step's, once the device probe has said how much
                // memory there is.
                let fit = self.method.device.as_ref().map(|_| {
                    self.model
                        .info()
                        .map(|i| self.method.comparison(&i.arch, self.data.lengths()))
                });
                self.model.ui(ui, fit);
            }
            Page::Data => self.data.ui(ui, self.method.config.max_seq_len),
            Page::Method => {
                let info = self.model.info();
                let context = MethodContext {
                    arch: info.map(|i| &i.arch),
                    total_parameters: info.map(|i| i.parameters),
                    gguf: self.model_is_gguf(),
                    data: self.data.lengths(),
                    quantization_cost: self.train.quantization_cost,
                };
                self.method.ui(ui, &context);
            }
            Page::Train => {
                let draft = self.draft_spec().map(|spec| {
                    crate::engine::train::command::command_line(&spec, Some(&self.runs_dir), None)
                });
                let plan = self.draft_spec().and_then(|spec| self.plan(&spec));
                if let train_page::Action::Start = self.train.ui(ui, self.blocker(), draft, plan) {
                    self.start_run(&ctx);
                }
            }
            Page::Evaluate => {
                if self.runs.runs.is_none() {
                    self.runs.reload(&ctx, &self.runs_dir);
                }
                let files: Vec<PathBuf> = self.data.files.iter().map(|f| f.path.clone()).collect();
                if let fix_data::Action::TrainAgain(data, spec) =
                    self.eval.ui(ui, self.runs.runs.as_deref(), &files)
                {
                    self.train_again(data, *spec);
                }
            }
            Page::Runs => {
                let running = self
                    .train
                    .is_running()
                    .then(|| self.train.run_dir.clone())
                    .flatten();
                let runs_dir = self.runs_dir.clone();
                match self.runs.ui(ui, &runs_dir, running.as_deref()) {
                    runs_page::Action::Resume(path) => self.resume_run(&ctx, path),
                    runs_page::Action::Evaluate(path) => {
                        self.eval.run = Some(path);
                        self.page = Page::Evaluate;
                    }
                    runs_page::Action::None => {}
                }
            }
        }
        if let Some(next) = next_page(self.page) {
            ui.add_space(12.0);
            if ui.button(format!("Next step: {}", next.title())).clicked() {
                self.page = next;
            }
        }
    }
}

fn next_page(page: Page) -> Option<Page> {
    match page {
        Page::Model => Some(Page::Data),
        Page::Data => Some(Page::Method),
        Page::Method => Some(Page::Train),
        Page::Train => Some(Page::Evaluate),
        Page::Evaluate | Page::Runs => None,
    }
}

/// A run's folder name from its model and method: "SmolLM2-135M-Instruct-qlora".
fn run_name(model: &str, method: crate::engine::train::Method) -> String {
    let stem = Path::new(model.trim_end_matches('/'))
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    format!("{stem}-{}", method.name())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

fn describe_device() -> DeviceInfo {
    let (device, _) = crate::engine::device::best_device();
    let described = crate::engine::device::describe(&device);
    let name = match crate::engine::device::gpu_summary() {
        Some(gpu) if !device.is_cuda() => format!(
            "{described} — an NVIDIA GPU ({gpu}) is present but this build of Loft has no CUDA support; build with --features cuda"
        ),
        _ => described,
    };
    let kind = if device.is_cuda() {
        DeviceKind::Cuda
    } else {
        DeviceKind::Cpu
    };
    DeviceInfo {
        name,
        kind,
        free_memory: crate::engine::train::memory::available_for(kind, None),
    }
}

/// While files are dragged over the window, say what dropping them does.
fn drop_overlay(ctx: &egui::Context) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("drop"),
    ));
    let rect = ctx.content_rect();
    painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(160));
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        "Drop datasets (.json, .jsonl) or a model (.gguf, folder)",
        egui::FontId::proportional(22.0),
        egui::Color32::WHITE,
    );
}

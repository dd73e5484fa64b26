//! Step 1, the model: open a folder or a .gguf (dialog or drop), pick one from the Hugging Face cache, or
//! download one by repo id; see what it is and whether this machine can train it; try it with a prompt.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use egui::{RichText, Ui};

use super::dialogs::{self, Picked};
use super::fit::{Comparison, Recommendation};
use super::jobs::Job;
use super::method_page::{method_title, verdict_words};
use super::widgets::{self, BAD, GOOD, WARN};
use crate::engine::cache::{self, CachedModel};
use crate::engine::chat::TemplateOrigin;
use crate::engine::generate::Sampling;
use crate::engine::hub::{DownloadEvent, HubOptions};
use crate::engine::source::{self, LoadedModel, ModelInfo, ModelSource, Resolve};
use crate::engine::train::memory::smallest_run;
use crate::engine::train::Method;

enum OpenReport {
    Download(DownloadEvent),
    Opened(Box<ModelInfo>),
    Failed(String),
}

enum ChatReport {
    /// The model was loaded for the opened model whose files live at this root.
    Loaded(PathBuf, Arc<LoadedModel>),
    Text(String),
    Done(String),
    Failed(String),
}

/// Download progress as the bar shows it.
#[derive(Default)]
struct Download {
    total: Option<u64>,
    /// Bytes of finished files plus the current file's bytes.
    done: u64,
    finished_files: u64,
    file: String,
    started: Option<Instant>,
}

impl Download {
    fn apply(&mut self, event: &DownloadEvent) {
        match event {
            DownloadEvent::Started { total_bytes, .. } => {
                self.total = *total_bytes;
                self.started = Some(Instant::now());
            }
            DownloadEvent::File { name, .. } => self.file = name.clone(),
            DownloadEvent::Bytes { done, total, .. } => {
                self.done = self.finished_files + done;
                if self.total.is_none() {
                    self.total = Some(*total);
                }
            }
            DownloadEvent::FileDone { .. } => self.finished_files = self.done,
            DownloadEvent::Listing { .. } | DownloadEvent::Finished { .. } => {}
        }
    }

    fn speed(&self) -> f64 {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.done as f64 / secs.max(1e-3)
    }
}

#[derive(Default)]
pub struct ModelPage {
    /// Where downloads come from and go to.
    hub: HubOptions,
    /// What the user typed or picked: a folder, a .gguf path or a repo id.
    pub source: String,
    /// The model that was opened, and the text that opened it (what run.toml records).
    pub opened: Option<(String, Box<ModelInfo>)>,
    error: Option<String>,
    open_job: Option<Job<OpenReport>>,
    opening: Option<String>,
    download: Option<Download>,
    cache: Option<Result<Vec<CachedModel>, String>>,
    cache_job: Option<Job<Result<Vec<CachedModel>, String>>>,
    dialog: Option<Job<Picked>>,
    /// Why no dialog showed, when one could not (the path field is the way in then).
    no_dialog: bool,
    focus_source: bool,
    // "Try it": every answer shown and every model kept belongs to the model opened now. Opening another
    // drops the job of the old one (so none of its reports is read) and the model it loaded.
    prompt: String,
    reply: String,
    reply_stats: String,
    /// The model loaded for "Try it", with the root of the files it was loaded from.
    loaded: Option<(PathBuf, Arc<LoadedModel>)>,
    chat_job: Option<Job<ChatReport>>,
}

impl ModelPage {
    pub fn new(hub: HubOptions) -> ModelPage {
        ModelPage {
            hub,
            ..ModelPage::default()
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.hub
            .cache_dir
            .clone()
            .unwrap_or_else(cache::hub_cache_dir)
    }

    pub fn is_done(&self) -> bool {
        self.opened.is_some()
    }

    pub fn status(&self) -> String {
        match (&self.opened, &self.opening) {
            (_, Some(s)) => format!("opening {s}…"),
            (Some((_, info)), None) => format!(
                "{} · {}",
                info.arch.model_type,
                widgets::count(info.parameters)
            ),
            (None, None) => "choose a model".into(),
        }
    }

    pub fn info(&self) -> Option<&ModelInfo> {
        self.opened.as_ref().map(|(_, i)| i.as_ref())
    }

    /// The text that names the opened model (a path or a repo id).
    pub fn spec(&self) -> Option<&str> {
        self.opened.as_ref().map(|(s, _)| s.as_str())
    }

    /// Open a folder, a .gguf file or a repo id (downloading it when it is not cached).
    pub fn open(&mut self, ctx: &egui::Context, spec: String) {
        self.source = spec.clone();
        self.error = None;
        self.no_dialog = false;
        self.download = None;
        self.forget_chat();
        self.opening = Some(spec.clone());
        let hub = self.hub.clone();
        self.open_job = Some(Job::spawn(ctx, "open-model", move |r| {
            let outcome = (|| -> crate::engine::error::Result<ModelInfo> {
                let source = ModelSource::parse(&spec)?;
                let mut on_download = |e| r.send(OpenReport::Download(e));
                let mut how = Resolve {
                    hub,
                    offline: false,
                    on_download: &mut on_download,
                    cancel: r.cancel_flag(),
                };
                let files = source::resolve(&source, &mut how)?;
                source::inspect(&files)
            })();
            r.send(match outcome {
                Ok(info) => OpenReport::Opened(Box::new(info)),
                Err(e) => OpenReport::Failed(e.to_string()),
            });
        }));
    }

    pub fn poll(&mut self) {
        let mut replaced = false;
        if let Some(job) = &mut self.open_job {
            for report in job.poll() {
                match report {
                    OpenReport::Download(e) => self.download.get_or_insert_default().apply(&e),
                    OpenReport::Opened(info) => {
                        let spec = self.opening.take().unwrap_or_default();
                        self.opened = Some((spec, info));
                        self.download = None;
                        replaced = true;
                    }
                    OpenReport::Failed(message) => {
                        self.error = Some(message);
                        self.opening = None;
                        self.download = None;
                    }
                }
            }
            if !job.is_running() {
                self.open_job = None;
                self.opening = None;
            }
        }
        if replaced {
            // Anything "Try it" holds or is doing belongs to the model just replaced.
            self.forget_chat();
        }
        if let Some(job) = &mut self.cache_job {
            if let Some(list) = job.poll().pop() {
                self.cache = Some(list);
            }
            if !job.is_running() {
                self.cache_job = None;
            }
        }
        let root = self.info().map(|i| i.files.root.clone());
        if let Some(job) = &mut self.chat_job {
            for report in job.poll() {
                match report {
                    ChatReport::Loaded(from, model) => {
                        if root.as_ref() == Some(&from) {
                            self.loaded = Some((from, model));
                        }
                    }
                    ChatReport::Text(t) => self.reply.push_str(&t),
                    ChatReport::Done(stats) => self.reply_stats = stats,
                    ChatReport::Failed(e) => self.reply_stats = format!("failed: {e}"),
                }
            }
            if !job.is_running() {
                self.chat_job = None;
            }
        }
    }

    /// Forget the model loaded for "Try it" (training loads its own copy; two would double the memory).
    pub fn release_loaded(&mut self) {
        self.loaded = None;
    }

    /// Stop "Try it" and clear its answer: dropping the job cancels it and discards its reports.
    fn forget_chat(&mut self) {
        self.chat_job = None;
        self.loaded = None;
        self.reply.clear();
        self.reply_stats.clear();
    }

    pub fn is_busy(&self) -> bool {
        self.open_job.is_some() || self.chat_job.is_some()
    }

    /// `fit`: LoRA and QLoRA for the opened model against the memory available, as the Method step
    /// estimates them (None while the device probe runs; Some(None) while no model is open).
    pub fn ui(&mut self, ui: &mut Ui, fit: Option<Option<Comparison>>) {
        let ctx = ui.ctx().clone();
        match dialogs::poll(&mut self.dialog) {
            Some(Picked::Paths(paths)) => {
                if let Some(path) = paths.into_iter().next() {
                    self.open(&ctx, path.display().to_string());
                }
            }
            Some(Picked::Nothing { unseen: true }) => {
                self.no_dialog = true;
                self.focus_source = true;
            }
            Some(Picked::Nothing { unseen: false }) | None => {}
        }
        widgets::heading(
            ui,
            "Model",
            "The model you start from. Open a Hugging Face folder or a .gguf file (or drop it on the window), pick one you already downloaded, or type a repo id.",
        );
        ui.horizontal(|ui| {
            let free = self.dialog.is_none();
            if ui
                .add_enabled(free, egui::Button::new("Open folder…"))
                .clicked()
            {
                self.dialog = Some(dialogs::pick_folder(&ctx, "Open a model folder"));
            }
            if ui
                .add_enabled(free, egui::Button::new("Open .gguf file…"))
                .clicked()
            {
                self.dialog = Some(dialogs::pick_file(
                    &ctx,
                    "Open a GGUF model",
                    "GGUF model",
                    &["gguf"],
                ));
            }
            if !free {
                ui.spinner();
                ui.label("waiting for the file dialog…");
            }
        });
        if self.no_dialog {
            ui.colored_label(
                WARN,
                format!("{} Use the field below: a model folder, a .gguf file or a Hugging Face repo id.", dialogs::NO_DIALOG),
            );
        }
        ui.horizontal(|ui| {
            let enter = widgets::entry_field(
                ui,
                "Folder, .gguf or repo id",
                &mut self.source,
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                360.0,
                &mut self.focus_source,
            );
            let busy = self.open_job.is_some();
            if (ui
                .add_enabled(
                    !busy && !self.source.trim().is_empty(),
                    egui::Button::new("Open"),
                )
                .clicked()
                || enter)
                && !busy
            {
                let spec = self.source.trim().to_string();
                self.open(&ctx, spec);
            }
        });
        self.progress_ui(ui);
        if let Some(e) = &self.error {
            widgets::problem(
                ui,
                e,
                "Check the path or the repo id. A folder needs config.json, *.safetensors and tokenizer.json; a single .gguf file works too.",
            );
        }
        ui.separator();
        self.cache_ui(ui, &ctx);
        if self.opened.is_some() {
            ui.separator();
            self.info_ui(ui, fit);
            ui.separator();
            // Ids of its own keep the prompt's focus (and a click on Send) when rows above appear.
            let own_ids = egui::UiBuilder::new().scope_id(egui::Id::unique("loft-try-it"));
            ui.scope_builder(own_ids, |ui| self.try_it_ui(ui, &ctx));
        }
    }

    fn progress_ui(&mut self, ui: &mut Ui) {
        let Some(opening) = &self.opening else {
            return;
        };
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("Opening {opening}…"));
            if ui.button("Cancel").clicked() {
                if let Some(job) = &self.open_job {
                    job.cancel();
                }
            }
        });
        if let Some(d) = &self.download {
            let speed = d.speed();
            let (fraction, left) = match d.total {
                Some(t) if t > 0 => (
                    d.done as f32 / t as f32,
                    Some(t.saturating_sub(d.done) as f64 / speed.max(1.0)),
                ),
                _ => (0.0, None),
            };
            let eta = left.map_or(String::new(), |s| {
                format!(
                    " · {} left",
                    widgets::duration(std::time::Duration::from_secs_f64(s))
                )
            });
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "{} {} of {} · {}/s{eta}",
                d.file,
                widgets::bytes(d.done),
                d.total.map_or("?".into(), widgets::bytes),
                widgets::bytes(speed as u64),
            )));
        }
    }

    fn cache_ui(&mut self, ui: &mut Ui, ctx: &egui::Context) {
        egui::CollapsingHeader::new("Models already downloaded (Hugging Face cache)")
            .default_open(false)
            .show(ui, |ui| {
                if self.cache.is_none() && self.cache_job.is_none() {
                    let dir = self.cache_dir();
                    self.cache_job = Some(Job::spawn(ctx, "hf-cache", move |r| {
                        r.send(cache::list_cached_models(&dir).map_err(|e| e.to_string()));
                    }));
                }
                match &self.cache {
                    None => {
                        ui.spinner();
                    }
                    Some(Err(e)) => {
                        ui.colored_label(WARN, e);
                    }
                    Some(Ok(list)) if list.is_empty() => {
                        ui.label(format!(
                            "No models in {}. Type a repo id above to download one.",
                            self.cache_dir().display()
                        ));
                    }
                    Some(Ok(list)) => {
                        let mut pick = None;
                        egui::Grid::new("hf-cache").striped(true).show(ui, |ui| {
                            for m in list {
                                if ui.button(&m.repo_id).clicked() {
                                    pick = Some(m.repo_id.clone());
                                }
                                ui.label(m.model_type.clone().unwrap_or_else(|| "?".into()));
                                ui.label(widgets::bytes(m.size_bytes));
                                ui.end_row();
                            }
                        });
                        if let Some(repo) = pick {
                            self.open(ctx, repo);
                        }
                    }
                }
                if ui.button("Refresh").clicked() {
                    self.cache = None;
                }
            });
    }

    fn info_ui(&self, ui: &mut Ui, fit: Option<Option<Comparison>>) {
        let Some((spec, info)) = &self.opened else {
            return;
        };
        ui.label(RichText::new(format!("Opened: {spec}")).strong());
        egui::Grid::new("model-info").num_columns(2).show(ui, |ui| {
            ui.label("Architecture");
            ui.label(format!("{} ({:?})", info.arch.model_type, info.arch.family));
            ui.end_row();
            ui.label("Parameters");
            ui.label(format!(
                "{} ({} layers, hidden size {})",
                widgets::count(info.parameters),
                info.arch.num_layers,
                info.arch.hidden_size
            ));
            ui.end_row();
            ui.label("Context length");
            ui.label(format!("{} tokens", info.context_length));
            ui.end_row();
            ui.label("Chat template");
            ui.label(match &info.chat_template {
                TemplateOrigin::Fallback => {
                    "none in the model: Loft uses ChatML (fine for training; the model learns it)"
                        .to_string()
                }
                other => format!("{other:?}"),
            });
            ui.end_row();
            ui.label("Stored as");
            ui.label(info.dtype.clone().unwrap_or_else(|| "?".into()));
            ui.end_row();
            if let Some(q) = info.quantization_summary() {
                ui.label("Quantization");
                ui.label(q);
                ui.end_row();
            }
            ui.label("Size on disk");
            ui.label(crate::engine::units::bytes(info.size_on_disk));
            ui.end_row();
        });
        match fit {
            None => {
                ui.label(RichText::new("Measuring this machine's memory…").weak());
            }
            Some(None) => {}
            Some(Some(comparison)) => {
                let (text, color) = fit_hint(&comparison, &info.arch);
                ui.colored_label(color, text);
            }
        }
    }

    fn try_it_ui(&mut self, ui: &mut Ui, ctx: &egui::Context) {
        ui.label(RichText::new("Try it").strong());
        ui.label(
            RichText::new("Ask the base model one question to see where training starts from.")
                .weak(),
        );
        ui.horizontal(|ui| {
            let label = ui.label("Prompt");
            let edit = ui
                .add(
                    egui::TextEdit::singleline(&mut self.prompt)
                        .hint_text("How long does shipping take?")
                        .desired_width(360.0),
                )
                .labelled_by(label.id);
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let running = self.chat_job.is_some();
            // While another model opens, an answer would come from the one being replaced.
            let ready = !self.prompt.trim().is_empty() && self.opening.is_none();
            if running {
                if ui.button("Stop").clicked() {
                    if let Some(job) = &self.chat_job {
                        job.cancel();
                    }
                }
            } else if (ui.add_enabled(ready, egui::Button::new("Send")).clicked() || enter) && ready
            {
                self.send_prompt(ctx);
            }
        });
        if self.chat_job.is_some() && self.reply.is_empty() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(if self.loaded.is_none() {
                    "loading the model…"
                } else {
                    "thinking…"
                });
            });
        }
        if !self.reply.is_empty() {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.label(&self.reply);
            });
        }
        if !self.reply_stats.is_empty() {
            ui.label(RichText::new(&self.reply_stats).weak());
        }
    }

    fn send_prompt(&mut self, ctx: &egui::Context) {
        let Some(info) = self.info() else {
            return;
        };
        let files = info.files.clone();
        let loaded = self
            .loaded
            .as_ref()
            .filter(|(root, _)| *root == files.root)
            .map(|(_, model)| model.clone());
        let prompt = self.prompt.trim().to_string();
        self.reply.clear();
        self.reply_stats.clear();
        self.chat_job = Some(Job::spawn(ctx, "try-it", move |r| {
            let model = match loaded {
                Some(m) => m,
                None => match source::load_on_best_device(&files) {
                    Ok(m) => {
                        let m = Arc::new(m);
                        r.send(ChatReport::Loaded(files.root.clone(), m.clone()));
                        m
                    }
                    Err(e) => return r.send(ChatReport::Failed(e.to_string())),
                },
            };
            let sampling = Sampling {
                max_new_tokens: 200,
                ..Sampling::default()
            };
            let outcome = model.prompt_ids(None, &prompt, false).and_then(|ids| {
                model.answer(&ids, &sampling, r.cancel_flag(), &mut |t| {
                    r.send(ChatReport::Text(t.to_string()))
                })
            });
            r.send(match outcome {
                Ok(g) => ChatReport::Done(format!(
                    "{} tokens at {:.1} tokens/s (greedy)",
                    g.tokens.len(),
                    g.tokens_per_second()
                )),
                Err(e) => ChatReport::Failed(e.to_string()),
            });
        }));
    }
}

/// "Can this machine train it", in one line with the colour of the answer (the words carry it too):
/// the Method step's estimate for both methods at the current settings and data.
fn fit_hint(c: &Comparison, arch: &crate::engine::arch::Arch) -> (String, egui::Color32) {
    let batch = c.batch();
    let needs = format!(
        "Training needs about {} with LoRA, {} with QLoRA ({} × {} tokens a batch)",
        widgets::bytes(c.lora.total),
        widgets::bytes(c.qlora.total),
        batch.rows,
        batch.longest
    );
    let Some(available) = c.available() else {
        return (
            format!("{needs}; the memory available is unknown: enter an amount to plan for on the Method step."),
            WARN,
        );
    };
    let about = format!("{needs}; {} available", widgets::bytes(available));
    let lora = verdict_words(c.lora.verdict());
    match c.recommendation() {
        Some(Recommendation::Lora) => (format!("{about}: LoRA {lora}."), GOOD),
        Some(Recommendation::Qlora) => (
            format!(
                "{about}: LoRA {lora}, QLoRA {}. Choose QLoRA on the Method step.",
                verdict_words(c.qlora.verdict())
            ),
            WARN,
        ),
        _ => {
            // Whether any run of this model fits: the smallest sensible one, by the same estimate.
            let smallest =
                |method| smallest_run(arch, method, c.lora.device).with_available(Some(available));
            let fitting = [Method::Lora, Method::Qlora]
                .into_iter()
                .map(smallest)
                .find(|e| e.fits() == Some(true));
            match fitting {
                Some(e) => (
                    format!(
                        "{about}: neither fits at these settings, but {} does at 1 × 512 tokens with gradient checkpointing (about {}). The Method step says what would.",
                        method_title(e.method),
                        widgets::bytes(e.total)
                    ),
                    WARN,
                ),
                None => (
                    format!(
                        "{about}: too big even for the smallest run (QLoRA, 1 × 512 tokens, gradient checkpointing: about {}). Choose a smaller model.",
                        widgets::bytes(smallest(Method::Qlora).total)
                    ),
                    BAD,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_progress_adds_up_across_files() {
        let mut d = Download::default();
        let events = [
            DownloadEvent::Started {
                files: 2,
                total_bytes: Some(300),
            },
            DownloadEvent::File {
                name: "a".into(),
                index: 0,
                size: 100,
            },
            DownloadEvent::Bytes {
                name: "a".into(),
                done: 100,
                total: 100,
            },
            DownloadEvent::FileDone { name: "a".into() },
            DownloadEvent::File {
                name: "b".into(),
                index: 1,
                size: 200,
            },
            DownloadEvent::Bytes {
                name: "b".into(),
                done: 50,
                total: 200,
            },
        ];
        for e in &events {
            d.apply(e);
        }
        assert_eq!((d.done, d.total, d.file.as_str()), (150, Some(300), "b"));
        assert!(d.speed() > 0.0);
    }
}

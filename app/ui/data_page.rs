//! Step 2, the data: add .json/.jsonl files (drop or dialog), validate them in the background, and show
//! the report — errors to fix, warnings by kind, statistics, the token-length histogram — and a preview of
//! exactly what the model will learn. The evaluation split is chosen here.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use egui::text::LayoutJob;
use egui::{Color32, RichText, TextFormat, Ui};
use egui_plot::{Bar, BarChart, Plot, VLine};
use serde::{Deserialize, Serialize};

use super::dialogs::{self, PathEntry, Picked};
use super::fit::EncodedLengths;
use super::jobs::Job;
use super::widgets::{self, BAD, GOOD, WARN};
use crate::engine::data::{
    self, EncodeOptions, Progress, Rendered, RowNumbering, Stage, TrainOn, ValidateOptions,
    ValidationReport,
};
use crate::engine::source::ModelFiles;
use crate::engine::train::prepare::encode_options;
use crate::engine::train::TrainConfig;

/// Where evaluation examples come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum EvalChoice {
    /// Hold out this percentage of the training file (seeded).
    Split(f64),
    /// Use the file at this index of the list.
    File(usize),
}

enum Report {
    Progress(Progress),
    Done(Box<Checked>),
    Failed(String),
}

/// A finished check of one file.
struct Checked {
    report: ValidationReport,
    /// A few conversations rendered through the chat template, with the trained byte ranges.
    previews: Vec<Rendered>,
    /// The raw text of rows that have errors, by row number (shown when an error is clicked).
    rows: BTreeMap<usize, String>,
    /// Why the check ran without the model (token counts and the preview need its tokenizer).
    without_model: Option<String>,
    /// The encoded examples' lengths, for the memory estimate (with a model only).
    lengths: Option<EncodedLengths>,
}

pub struct DataFile {
    pub path: PathBuf,
    /// The model and max_seq_len the current report was made with.
    checked_with: Option<String>,
    job: Option<Job<Report>>,
    progress: Option<Progress>,
    checked: Option<Checked>,
    failure: Option<String>,
    selected_row: Option<usize>,
}

impl DataFile {
    pub fn report(&self) -> Option<&ValidationReport> {
        self.checked.as_ref().map(|c| &c.report)
    }

    pub fn is_checking(&self) -> bool {
        self.job.is_some()
    }

    fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

pub struct DataPage {
    pub files: Vec<DataFile>,
    /// Index of the training file in `files`.
    pub train: usize,
    pub eval: EvalChoice,
    /// The user's explicit choice to train without the rows that have errors.
    pub skip_error_rows: bool,
    /// Cut examples longer than max_seq_len to fit instead of leaving them out.
    pub truncate_overlong: bool,
    /// Learn every token of the conversation, not only the assistant's replies.
    pub train_on_all_tokens: bool,
    dialog: Option<Job<Picked>>,
    /// A dataset path typed by hand, where no file dialog can open.
    typed: PathEntry,
}

impl Default for DataPage {
    fn default() -> Self {
        DataPage {
            files: Vec::new(),
            train: 0,
            eval: EvalChoice::Split(10.0),
            skip_error_rows: false,
            truncate_overlong: false,
            train_on_all_tokens: false,
            dialog: None,
            typed: PathEntry::default(),
        }
    }
}

/// Whether a dropped or picked path is a dataset file.
pub fn is_dataset(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("json" | "jsonl")
    )
}

impl DataPage {
    pub fn add(&mut self, path: PathBuf) {
        if self.files.iter().any(|f| f.path == path) {
            return;
        }
        self.files.push(DataFile {
            path,
            checked_with: None,
            job: None,
            progress: None,
            checked: None,
            failure: None,
            selected_row: None,
        });
    }

    pub fn train_file(&self) -> Option<&DataFile> {
        self.files.get(self.train)
    }

    pub fn eval_file(&self) -> Option<&DataFile> {
        match self.eval {
            EvalChoice::File(i) if i != self.train => self.files.get(i),
            _ => None,
        }
    }

    /// The held-out fraction when evaluating on a split of the training file.
    /// The training file's encoded lengths, once it has been checked with the model's tokenizer:
    /// what the memory estimate sizes the largest batch by.
    pub fn lengths(&self) -> Option<&EncodedLengths> {
        self.train_file()?.checked.as_ref()?.lengths.as_ref()
    }

    pub fn eval_fraction(&self) -> f64 {
        match self.eval {
            EvalChoice::Split(p) if self.eval_file().is_none() => p / 100.0,
            _ => 0.0,
        }
    }

    /// Ready to train: the training file (and an eval file, when chosen) checked and trainable.
    pub fn blocker(&self) -> Option<String> {
        let Some(train) = self.train_file() else {
            return Some("add a dataset".into());
        };
        let mut chosen = vec![train];
        chosen.extend(self.eval_file());
        for f in chosen {
            if f.is_checking() || f.checked.is_none() {
                return Some(format!("checking {}…", f.name()));
            }
            if let Some(report) = f.report() {
                if let Err(e) = report.check_trainable(self.skip_error_rows) {
                    return Some(format!("{}: {e}", f.name()));
                }
            }
        }
        None
    }

    pub fn status(&self) -> String {
        match (self.blocker(), self.train_file().and_then(|f| f.report())) {
            (Some(b), _) => b,
            (None, Some(r)) => format!("{} rows", r.usable_rows),
            (None, None) => "add a dataset".into(),
        }
    }

    /// Start checks for files whose report is missing or was made for another model or encoding.
    pub fn refresh(&mut self, ctx: &egui::Context, model: Option<&ModelFiles>, run: &TrainConfig) {
        let encoding = encode_options(run, self.train_on_all_tokens, self.truncate_overlong);
        let max_seq_len = encoding.max_seq_len;
        let key = format!(
            "{}|{max_seq_len}|{:?}|{:?}",
            model.map_or(String::new(), |m| m.root.display().to_string()),
            encoding.train_on,
            encoding.overlong
        );
        for file in &mut self.files {
            if file.job.is_none() && file.checked_with.as_deref() != Some(key.as_str()) {
                file.checked_with = Some(key.clone());
                file.failure = None;
                let path = file.path.clone();
                let model = model.cloned();
                let encoding = encoding.clone();
                file.job = Some(Job::spawn(ctx, "check-data", move |r| {
                    check(&path, model.as_ref(), &encoding, r)
                }));
            }
        }
    }

    pub fn poll(&mut self) {
        for file in &mut self.files {
            let Some(job) = &mut file.job else {
                continue;
            };
            for report in job.poll() {
                match report {
                    Report::Progress(p) => file.progress = Some(p),
                    Report::Done(checked) => {
                        file.checked = Some(*checked);
                        file.progress = None;
                    }
                    Report::Failed(e) => {
                        file.failure = Some(e);
                        file.progress = None;
                    }
                }
            }
            if !job.is_running() {
                file.job = None;
            }
        }
    }

    pub fn is_busy(&self) -> bool {
        self.files.iter().any(|f| f.job.is_some())
    }

    pub fn ui(&mut self, ui: &mut Ui, max_seq_len: usize) {
        let ctx = ui.ctx().clone();
        match dialogs::poll(&mut self.dialog) {
            Some(Picked::Paths(paths)) => paths.into_iter().for_each(|p| self.add(p)),
            Some(Picked::Nothing { unseen: true }) => self.typed.offer(dialogs::NO_DIALOG),
            Some(Picked::Nothing { unseen: false }) | None => {}
        }
        widgets::heading(
            ui,
            "Data",
            "Examples of what the model should learn: .json or .jsonl files in instruction (instruction/input/output) or chat (messages) form. Drop them anywhere on the window.",
        );
        ui.horizontal(|ui| {
            let open = self.dialog.is_none();
            if ui
                .add_enabled(open, egui::Button::new("Add dataset files…"))
                .clicked()
            {
                self.dialog = Some(dialogs::pick_files(
                    &ctx,
                    "Add datasets",
                    "Datasets",
                    &["json", "jsonl"],
                ));
            }
            if !open {
                ui.spinner();
                ui.label("waiting for the file dialog…");
            }
            self.typed.offer_link(ui, "or type a path");
        });
        let typed = self.typed.ui(ui, "Dataset path", "Add", |path| {
            dialogs::existing(path, false)?;
            if is_dataset(path) {
                Ok(())
            } else {
                Err(format!(
                    "{} is not a .json or .jsonl file; Loft reads datasets in those two formats.",
                    path.display()
                ))
            }
        });
        if let Some(path) = typed {
            self.add(path);
        }
        if self.files.is_empty() {
            ui.add_space(20.0);
            ui.label(
                RichText::new("Drop a .json or .jsonl file here, or use \"Add dataset files…\".")
                    .size(16.0)
                    .weak(),
            );
            return;
        }
        self.choice_ui(ui);
        ui.separator();
        let mut remove = None;
        for (i, file) in self.files.iter_mut().enumerate() {
            let role = if i == self.train {
                "training"
            } else if self.eval == EvalChoice::File(i) {
                "evaluation"
            } else {
                "not used"
            };
            let open = i == self.train;
            egui::CollapsingHeader::new(format!("{} ({role})", file.name()))
                .id_salt(("data-file", i))
                .default_open(open)
                .show(ui, |ui| {
                    if ui.small_button("Remove").clicked() {
                        remove = Some(i);
                    }
                    file_ui(ui, file, max_seq_len);
                });
        }
        if let Some(i) = remove {
            self.files.remove(i);
            self.train = 0;
            if matches!(self.eval, EvalChoice::File(_)) {
                self.eval = EvalChoice::Split(10.0);
            }
        }
    }

    fn choice_ui(&mut self, ui: &mut Ui) {
        let names: Vec<String> = self.files.iter().map(|f| f.name()).collect();
        ui.horizontal(|ui| {
            let label = ui.label("Train on");
            egui::ComboBox::from_id_salt("train-file")
                .selected_text(names.get(self.train).cloned().unwrap_or_default())
                .show_ui(ui, |ui| {
                    for (i, n) in names.iter().enumerate() {
                        ui.selectable_value(&mut self.train, i, n);
                    }
                })
                .response
                .labelled_by(label.id);
        });
        ui.horizontal(|ui| {
            ui.label("Evaluate on");
            let mut percent = match self.eval {
                EvalChoice::Split(p) => p,
                EvalChoice::File(_) => 10.0,
            };
            if ui
                .radio(matches!(self.eval, EvalChoice::Split(_)), "a share held out from the training file")
                .clicked()
            {
                self.eval = EvalChoice::Split(percent);
            }
            if let EvalChoice::Split(_) = self.eval {
                let name = ui.label("Held-out share");
                let r = ui
                    .add(
                        egui::DragValue::new(&mut percent)
                            .range(0.0..=50.0)
                            .speed(0.5)
                            .suffix(" %"),
                    )
                    .labelled_by(name.id);
                if r.changed() {
                    self.eval = EvalChoice::Split(percent);
                }
            }
            for (i, n) in names.iter().enumerate() {
                if i != self.train
                    && ui
                        .radio(self.eval == EvalChoice::File(i), format!("the file {n}"))
                        .clicked()
                {
                    self.eval = EvalChoice::File(i);
                }
            }
            widgets::help(
                ui,
                "Evaluate on",
                "Evaluation examples are never trained on. Their loss tells whether the model learns the task or only memorises the training rows. 10% is a good default; a separate file is better when you have one.",
            );
        });
        let errors = self
            .train_file()
            .and_then(|f| f.report())
            .is_some_and(|r| r.error_count() > 0);
        if errors {
            ui.checkbox(
                &mut self.skip_error_rows,
                "Train without the rows that have errors",
            )
            .on_hover_text("Rows with errors are left out of training instead of blocking it. Fixing them is better: each bad row is a lesson the model will not get.");
        }
        ui.horizontal(|ui| {
            ui.label("Examples longer than max_seq_len");
            ui.radio_value(&mut self.truncate_overlong, false, "leave out");
            ui.radio_value(&mut self.truncate_overlong, true, "cut to fit");
            widgets::help(ui, "Examples longer than max_seq_len", "Leaving long examples out keeps every answer whole; cutting keeps the example but the model may learn answers that stop mid-sentence. Better: raise max_seq_len (Method step) if memory allows.");
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.train_on_all_tokens, "Learn the whole conversation, not only the answers");
            widgets::help(ui, "Learn the whole conversation", "By default the loss counts only the assistant's replies, so the model learns to answer, not to write questions. Turn this on for plain-text continuation data.");
        });
    }
}

fn check(
    path: &Path,
    model: Option<&ModelFiles>,
    options: &EncodeOptions,
    r: &super::jobs::Reporter<Report>,
) {
    let tools = model.map(data::load_text_tools);
    let without_model = match &tools {
        None => Some("Open a model to count tokens and preview the training text.".to_string()),
        Some(Err(e)) => Some(format!("The model's tokenizer could not be used: {e}")),
        Some(Ok(_)) => None,
    };
    let tools = tools.and_then(|t| t.ok());
    let mut progress = |p| r.send(Report::Progress(p));
    let checked = data::check_file_encoded(
        path,
        &ValidateOptions::default(),
        tools.as_ref().map(|t| (t, options)),
        &mut progress,
        r.cancel_flag(),
    );
    let (report, dataset, encoded) = match checked {
        Ok(c) => c,
        Err(e) => return r.send(Report::Failed(e.to_string())),
    };
    let previews = match (&tools, &dataset) {
        (Some(t), Some(d)) => d
            .conversations
            .iter()
            .take(3)
            .filter_map(|c| data::render_with_spans(&c.messages, &t.tokenizer, &t.template).ok())
            .map(|mut p| {
                if options.train_on == TrainOn::All {
                    p.spans = std::iter::once(0..p.text.len()).collect();
                }
                p
            })
            .collect(),
        _ => Vec::new(),
    };
    let rows = error_rows(&report);
    let lengths = encoded.and_then(|e| EncodedLengths::of(&e.examples));
    r.send(Report::Done(Box::new(Checked {
        report,
        previews,
        rows,
        without_model,
        lengths,
    })));
}

/// The raw lines of .jsonl rows that have errors (at most 200), so a click shows the row itself.
fn error_rows(report: &ValidationReport) -> BTreeMap<usize, String> {
    let mut wanted: Vec<usize> = report
        .errors
        .iter()
        .filter_map(|e| e.row)
        .take(200)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut rows = BTreeMap::new();
    if report.numbering != RowNumbering::Line || wanted.is_empty() {
        return rows;
    }
    let Ok(file) = std::fs::File::open(&report.path) else {
        return rows;
    };
    let last = wanted.last().copied().unwrap_or(0);
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let n = i + 1;
        if n > last {
            break;
        }
        let Ok(line) = line else { break };
        if wanted.binary_search(&n).is_ok() {
            let text = String::from_utf8_lossy(&line);
            rows.insert(n, text.chars().take(4000).collect());
        }
    }
    rows
}

fn file_ui(ui: &mut Ui, file: &mut DataFile, max_seq_len: usize) {
    ui.label(RichText::new(file.path.display().to_string()).weak());
    if let Some(p) = &file.progress {
        let (stage, unit) = match p.stage {
            Stage::Reading => ("Reading", "bytes"),
            Stage::Checking => ("Checking rows", "rows"),
            Stage::Encoding => ("Tokenizing", "rows"),
        };
        let fraction = p.total.map_or(0.0, |t| p.done as f32 / t.max(1) as f32);
        ui.add(egui::ProgressBar::new(fraction).text(format!(
            "{stage}: {} of {} {unit}",
            p.done,
            p.total.map_or("?".into(), |t| t.to_string())
        )));
    } else if file.job.is_some() {
        ui.spinner();
    }
    if let Some(e) = &file.failure {
        ui.colored_label(BAD, e);
    }
    let Some(checked) = &file.checked else {
        return;
    };
    let r = &checked.report;
    summary_ui(ui, r);
    if let Some(note) = &checked.without_model {
        ui.label(RichText::new(note).weak());
    }
    if let Some(h) = &r.stats.histogram {
        histogram_ui(ui, h, max_seq_len, &file.path);
    }
    if !r.errors.is_empty() {
        egui::CollapsingHeader::new(format!("Errors ({})", r.error_count()))
            .id_salt(("errors", &file.path))
            .default_open(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt(("errors-scroll", &file.path))
                    .max_height(180.0)
                    .show(ui, |ui| {
                        for e in &r.errors {
                            let place = match (e.row, e.line, e.column) {
                                (Some(row), _, _) => r.row_name(row),
                                (None, Some(l), Some(c)) => format!("line {l}, column {c}"),
                                (None, Some(l), None) => format!("line {l}"),
                                _ => "file".into(),
                            };
                            let field = e
                                .field
                                .as_deref()
                                .map_or(String::new(), |f| format!(" · {f}"));
                            let text = format!("{place}{field}: {}", e.message);
                            let selected = e.row.is_some() && file.selected_row == e.row;
                            if ui
                                .selectable_label(selected, RichText::new(text).color(BAD))
                                .clicked()
                            {
                                file.selected_row = e.row;
                            }
                        }
                    });
                if let Some(row) = file.selected_row {
                    ui.label(RichText::new(r.row_name(row)).strong());
                    let text =
                        checked.rows.get(&row).cloned().unwrap_or_else(|| {
                            "(this row's text is shown for .jsonl files)".into()
                        });
                    egui::ScrollArea::vertical()
                        .id_salt(("row-scroll", &file.path))
                        .max_height(120.0)
                        .show(ui, |ui| ui.code(text));
                }
            });
    }
    if !r.warning_counts.is_empty() {
        egui::CollapsingHeader::new(format!("Warnings ({})", r.warning_count()))
            .id_salt(("warnings", &file.path))
            .show(ui, |ui| {
                for (kind, count) in &r.warning_counts {
                    let examples: Vec<&str> = r
                        .warnings
                        .iter()
                        .filter(|w| w.kind == *kind)
                        .take(3)
                        .map(|w| w.message.as_str())
                        .collect();
                    ui.collapsing(format!("{} × {count}", kind.label()), |ui| {
                        for m in examples {
                            ui.label(m);
                        }
                    });
                }
            });
    }
    if !checked.previews.is_empty() {
        egui::CollapsingHeader::new("Preview: what the model learns")
            .id_salt(("preview", &file.path))
            .default_open(true)
            .show(ui, |ui| {
                ui.label(
                    RichText::new("Highlighted text is trained on (the assistant's answers); dimmed text is context the model reads but is not graded on.")
                        .weak(),
                );
                for p in &checked.previews {
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.label(highlighted(ui, p));
                    });
                }
            });
    }
}

fn summary_ui(ui: &mut Ui, r: &ValidationReport) {
    let (verdict, color) = if r.fatal.is_some() {
        ("cannot be read", BAD)
    } else if r.error_count() > 0 {
        ("has errors to fix", BAD)
    } else if r.warning_count() > 0 {
        ("usable, with warnings", WARN)
    } else {
        ("ready", GOOD)
    };
    ui.colored_label(color, format!("Validation: {verdict}"));
    egui::Grid::new(("stats", &r.path))
        .num_columns(2)
        .show(ui, |ui| {
            ui.label("Format");
            ui.label(r.format.map_or("?", |f| f.label()));
            ui.end_row();
            ui.label("Rows");
            ui.label(format!(
                "{} read · {} usable · {} with errors · {} duplicates removed",
                r.rows, r.usable_rows, r.error_rows, r.stats.duplicates_removed
            ));
            ui.end_row();
            if let Some(t) = &r.stats.tokens {
                ui.label("Tokens per example");
                ui.label(format!(
                    "median {} · 95% under {} · longest {}",
                    t.median, t.p95, t.max
                ));
                ui.end_row();
            }
            if let Some(e) = &r.stats.encoding {
                ui.label("Training tokens");
                ui.label(format!(
                    "{} of {} tokens are trained on · {} rows over max_seq_len {}",
                    e.trained_tokens, e.tokens, e.over_max_seq_len, e.max_seq_len
                ));
                ui.end_row();
            }
        });
}

fn histogram_ui(ui: &mut Ui, h: &data::Histogram, max_seq_len: usize, path: &Path) {
    ui.label(format!("Length of each example ({})", h.unit));
    let width = h.bin_width as f64;
    let bars: Vec<Bar> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| Bar::new((i as f64 + 0.5) * width, c as f64).width(width * 0.9))
        .collect();
    let limit = (h.unit == "tokens").then_some(max_seq_len as u64);
    let plot = Plot::new(("histogram", path))
        .height(140.0)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .x_axis_label(h.unit.clone())
        .y_axis_label("examples")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("examples", bars));
            if let Some(limit) = limit {
                plot.vline(VLine::new("max_seq_len", limit as f64).color(BAD));
            }
        });
    widgets::describe_image(&plot.response, histogram_summary(h, limit));
}

/// The histogram in words, for screen readers: "Histogram of example lengths in tokens: 105 examples
/// between 0 and 120 tokens; most (40) between 40 and 50; 0 at or over max_seq_len 1024".
fn histogram_summary(h: &data::Histogram, limit: Option<u64>) -> String {
    let total: u64 = h.counts.iter().sum();
    let bounds = |i: usize| (i as u64 * h.bin_width, (i as u64 + 1) * h.bin_width);
    let first = h.counts.iter().position(|&c| c > 0);
    let last = h.counts.iter().rposition(|&c| c > 0);
    let fullest = h
        .counts
        .iter()
        .enumerate()
        .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)));
    let mut text = format!(
        "Histogram of example lengths in {}: {total} examples",
        h.unit
    );
    if let (Some(first), Some(last), Some((top, &count))) = (first, last, fullest) {
        let (low, _) = bounds(first);
        let (_, high) = bounds(last);
        let (top_low, top_high) = bounds(top);
        text.push_str(&format!(
            " between {low} and {high} {unit}; most ({count}) between {top_low} and {top_high}",
            unit = h.unit
        ));
    }
    if let Some(limit) = limit {
        let over: u64 = h
            .counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| bounds(i).0 >= limit)
            .map(|(_, &c)| c)
            .sum();
        text.push_str(&format!("; {over} at or over max_seq_len {limit}"));
    }
    text
}

/// The rendered conversation with trained spans highlighted and the rest dimmed.
fn highlighted(ui: &Ui, p: &Rendered) -> LayoutJob {
    let font = egui::TextStyle::Monospace.resolve(ui.style());
    let visuals = &ui.style().visuals;
    let dim = TextFormat {
        font_id: font.clone(),
        color: visuals.weak_text_color(),
        ..TextFormat::default()
    };
    let trained = TextFormat {
        font_id: font,
        color: visuals.strong_text_color(),
        background: if visuals.dark_mode {
            Color32::from_rgb(0x1f, 0x4d, 0x2b)
        } else {
            Color32::from_rgb(0xd4, 0xf4, 0xdc)
        },
        ..TextFormat::default()
    };
    let mut job = LayoutJob::default();
    let mut at = 0;
    for span in &p.spans {
        let (start, end) = (span.start.min(p.text.len()), span.end.min(p.text.len()));
        // Spans come from the renderer and fall on characters; a bad one is skipped, never a panic.
        if start < at
            || end < start
            || !p.text.is_char_boundary(start)
            || !p.text.is_char_boundary(end)
        {
            continue;
        }
        if start > at {
            job.append(&p.text[at..start], 0.0, dim.clone());
        }
        job.append(&p.text[start..end], 0.0, trained.clone());
        at = end;
    }
    if at < p.text.len() {
        job.append(&p.text[at..], 0.0, dim);
    }
    job.wrap.max_width = ui.available_width();
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_reads_as_a_sentence_with_its_figures() {
        let h = data::Histogram {
            unit: "tokens".into(),
            bin_width: 10,
            counts: vec![0, 3, 7, 7, 0, 2],
            limit: None,
        };
        assert_eq!(
            histogram_summary(&h, Some(50)),
            "Histogram of example lengths in tokens: 19 examples between 10 and 60 tokens; most (7) between 20 and 30; 2 at or over max_seq_len 50"
        );
        let empty = data::Histogram {
            counts: vec![],
            ..h
        };
        assert_eq!(
            histogram_summary(&empty, None),
            "Histogram of example lengths in tokens: 0 examples"
        );
    }
}

//! Step 5, Evaluate: the base model and a fine-tuned run answer the same held-out examples. The page
//! shows each metric base → tuned with its interval, the loss, what an answer costs, and the examples
//! themselves, filtered to the ones that regressed or improved, side by side. *Ask both* puts one
//! question to both models.

use std::path::{Path, PathBuf};
use std::time::Instant;

use egui::{Color32, RichText, Ui};
use egui_plot::{Bar, BarChart, Plot};

use super::fix_data::{self, FixData};
use super::jobs::Job;
use super::widgets::{self, BAD, GOOD, WARN};
use crate::engine::eval::metrics::{parse_checks, word_diff};
use crate::engine::eval::run::default_cache_dir;
use crate::engine::eval::{
    run_request, EvalEvent, EvalProgress, EvalReport, EvalRequest, EvalSettings, EvalStage,
    MetricInfo, RowOutcome,
};
use crate::engine::train::runs::{RunStatus, RunSummary};

/// What the evaluation worker reports.
pub enum EvalMsg {
    Status(String),
    Progress(EvalProgress),
    Done(Result<(EvalReport, PathBuf), String>),
}

/// What the worker of *Ask both* reports: text for the base (0) or the tuned model (1).
enum AskMsg {
    Text(usize, String),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    Regressed,
    Improved,
    FailedByBoth,
    All,
}

impl Filter {
    const ALL: [Filter; 4] = [
        Filter::Regressed,
        Filter::Improved,
        Filter::FailedByBoth,
        Filter::All,
    ];

    fn label(self) -> &'static str {
        match self {
            Filter::Regressed => "Regressed",
            Filter::Improved => "Improved",
            Filter::FailedByBoth => "Failed by both",
            Filter::All => "All",
        }
    }

    fn keeps(self, outcome: Option<RowOutcome>) -> bool {
        match self {
            Filter::All => true,
            Filter::Regressed => outcome == Some(RowOutcome::Regressed),
            Filter::Improved => outcome == Some(RowOutcome::Improved),
            Filter::FailedByBoth => outcome == Some(RowOutcome::FailedByBoth),
        }
    }
}

#[derive(Default)]
pub struct EvalPage {
    /// The run to evaluate.
    pub run: Option<PathBuf>,
    /// A dataset file to evaluate on instead of the run's held-out examples.
    pub data: Option<PathBuf>,
    /// A second run to compare with the first, on the same examples.
    pub compare: Option<PathBuf>,
    /// Longest answer in tokens; empty: chosen from the references.
    pub max_new_tokens: String,
    pub loose: bool,
    /// User checks, one per line (`regex:…`, `contains:…`, `absent:…`).
    pub checks: String,
    job: Option<Job<EvalMsg>>,
    started: Option<Instant>,
    status: String,
    progress: Option<EvalProgress>,
    pub error: Option<String>,
    pub report: Option<(EvalReport, PathBuf)>,
    pub filter: Filter,
    /// The example shown side by side.
    pub selected: Option<usize>,
    pub ask: String,
    ask_job: Option<Job<AskMsg>>,
    pub ask_answers: [String; 2],
    /// Where the cached base answers go (tests point it at a temporary folder).
    pub cache_dir: Option<PathBuf>,
    /// The run the shown report evaluated.
    evaluated: Option<PathBuf>,
    pub fix: FixData,
}

impl EvalPage {
    pub fn new(cache_dir: Option<PathBuf>) -> EvalPage {
        EvalPage {
            cache_dir,
            ..EvalPage::default()
        }
    }

    pub fn is_running(&self) -> bool {
        self.job.is_some()
    }

    /// One line for the step bar.
    pub fn status(&self) -> String {
        if self.job.is_some() {
            return "evaluating…".into();
        }
        match &self.report {
            Some((report, _)) => format!("{} examples compared", report.rows.len()),
            None => "base vs fine-tuned".into(),
        }
    }

    pub fn poll(&mut self) {
        self.fix.poll();
        if let Some(job) = &mut self.job {
            for msg in job.poll() {
                match msg {
                    EvalMsg::Status(s) => self.status = s,
                    EvalMsg::Progress(p) => self.progress = Some(p),
                    EvalMsg::Done(Ok(done)) => {
                        self.selected = None;
                        self.filter = Filter::Regressed;
                        self.report = Some(done);
                    }
                    EvalMsg::Done(Err(e)) => self.error = Some(e),
                }
            }
            if !job.is_running() {
                self.job = None;
                self.progress = None;
            }
        }
        if let Some(job) = &mut self.ask_job {
            for msg in job.poll() {
                match msg {
                    AskMsg::Text(i, text) => self.ask_answers[i].push_str(&text),
                    AskMsg::Failed(e) => self.error = Some(e),
                }
            }
            if !job.is_running() {
                self.ask_job = None;
            }
        }
    }

    /// The settings the fields describe, or what is wrong with them.
    fn settings(&self) -> Result<EvalSettings, String> {
        let max_new_tokens = match self.max_new_tokens.trim() {
            "" => None,
            text => match text.parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(format!(
                        "Longest answer: \"{text}\" is not a whole number of tokens above 0; leave it empty to choose from the references"
                    ))
                }
            },
        };
        let lines: Vec<&str> = self
            .checks
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Ok(EvalSettings {
            max_new_tokens,
            loose_match: self.loose,
            checks: parse_checks(&lines)?,
            cache_dir: self.cache_dir.clone().or_else(default_cache_dir),
            ..EvalSettings::default()
        })
    }

    pub fn start(&mut self, ctx: &egui::Context) {
        let Some(run) = self.run.clone() else {
            return;
        };
        self.evaluated = Some(run.clone());
        let settings = match self.settings() {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let request = EvalRequest {
            adapters: match &self.compare {
                Some(other) if other != &run => vec![run.clone(), other.clone()],
                _ => Vec::new(),
            },
            run: Some(run),
            data: self.data.clone(),
            include_base: true,
            settings,
            ..EvalRequest::default()
        };
        self.error = None;
        self.status = "starting…".into();
        self.started = Some(Instant::now());
        self.job = Some(Job::spawn(ctx, "evaluate", move |r| {
            let mut on_event = |e| {
                r.send(match e {
                    EvalEvent::Status(s) => EvalMsg::Status(s),
                    EvalEvent::Set(info) => EvalMsg::Status(format!(
                        "{} examples from {} ({})",
                        info.rows, info.path, info.source
                    )),
                    EvalEvent::Progress(p) => EvalMsg::Progress(p),
                })
            };
            let outcome = run_request(&request, &mut on_event, r.cancel_flag());
            r.send(EvalMsg::Done(outcome.map_err(|e| match e {
                crate::engine::ModelError::Cancelled => "Evaluation cancelled.".to_string(),
                e => format!("The evaluation failed: {e}"),
            })));
        }));
    }

    pub fn cancel(&mut self) {
        if let Some(job) = &self.job {
            job.cancel();
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        runs: Option<&[RunSummary]>,
        data_files: &[PathBuf],
    ) -> fix_data::Action {
        let mut action = fix_data::Action::None;
        let ctx = ui.ctx().clone();
        widgets::heading(
            ui,
            "Evaluate",
            "Did fine-tuning help? The base model and your run answer the same examples the run never trained on, and each answer is scored against the dataset's.",
        );
        self.setup_ui(ui, &ctx, runs, data_files);
        if let Some(e) = &self.error {
            widgets::problem(ui, e, "");
        }
        if self.job.is_some() {
            self.progress_ui(ui);
        }
        if self.report.is_some() {
            ui.separator();
            action = self.results_ui(ui, runs.unwrap_or(&[]));
            ui.separator();
            self.ask_ui(ui, &ctx);
        }
        action
    }

    fn setup_ui(
        &mut self,
        ui: &mut Ui,
        ctx: &egui::Context,
        runs: Option<&[RunSummary]>,
        data_files: &[PathBuf],
    ) {
        let finished: Vec<&RunSummary> = runs
            .unwrap_or(&[])
            .iter()
            .filter(|r| r.status == RunStatus::Finished)
            .collect();
        if self.run.is_none() {
            self.run = finished.first().map(|r| r.path.clone());
        }
        let shown = |p: &Option<PathBuf>| {
            p.as_deref()
                .and_then(Path::file_name)
                .map_or("choose…".into(), |n| n.to_string_lossy().into_owned())
        };
        widgets::field(
            ui,
            "Run",
            "The fine-tuned run to compare with its base model. Runs that finished training are listed.",
            |ui| {
                egui::ComboBox::from_id_salt("eval-run")
                    .selected_text(shown(&self.run))
                    .show_ui(ui, |ui| {
                        for run in &finished {
                            ui.selectable_value(&mut self.run, Some(run.path.clone()), run.name());
                        }
                    })
                    .response
            },
        );
        if finished.is_empty() {
            ui.label(RichText::new("No finished run yet: train one first (step Train).").weak());
        }
        widgets::field(
            ui,
            "Compare with",
            "Another finished run to evaluate on the same examples: its metrics appear beside the first run's, and the loss curves of both runs overlaid.",
            |ui| {
                egui::ComboBox::from_id_salt("eval-compare")
                    .selected_text(match &self.compare {
                        None => "no other run".to_string(),
                        other => shown(other),
                    })
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut self.compare, None, "no other run");
                        for run in finished.iter().filter(|r| Some(&r.path) != self.run.as_ref()) {
                            ui.selectable_value(
                                &mut self.compare,
                                Some(run.path.clone()),
                                run.name(),
                            );
                        }
                    })
                    .response
            },
        );
        widgets::field(
            ui,
            "Evaluate on",
            "The examples the run held out from training are the fair test: the model never saw them. Or pick another dataset file opened on the Data step.",
            |ui| {
                let text = match &self.data {
                    None => "examples the run held out".to_string(),
                    Some(p) => p.display().to_string(),
                };
                egui::ComboBox::from_id_salt("eval-data")
                    .selected_text(text)
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut self.data, None, "examples the run held out");
                        for f in data_files {
                            ui.selectable_value(
                                &mut self.data,
                                Some(f.clone()),
                                f.display().to_string(),
                            );
                        }
                    })
                    .response
            },
        );
        widgets::field(
            ui,
            "Longest answer (tokens)",
            "Answers stop at the model's end token or at this many tokens. Empty: the longest reference answer and half as much again.",
            |ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut self.max_new_tokens)
                        .hint_text("auto")
                        .desired_width(80.0),
                )
            },
        );
        widgets::field(
            ui,
            "Exact match ignores case and spaces",
            "Count \"Paris\" and \"paris \" as the same answer.",
            |ui| ui.checkbox(&mut self.loose, ""),
        );
        widgets::field(
            ui,
            "Checks (one per line)",
            "Rules every answer must follow, scored for both models: regex:PATTERN (the answer must match), contains:TEXT (must contain it), absent:TEXT (must not contain it, e.g. absent:refund). Text checks ignore case.",
            |ui| {
                ui.add(
                    egui::TextEdit::multiline(&mut self.checks)
                        .hint_text("absent:as an AI")
                        .desired_rows(2)
                        .desired_width(360.0),
                )
            },
        );
        ui.horizontal(|ui| {
            let running = self.job.is_some();
            if ui
                .add_enabled(
                    !running && self.run.is_some(),
                    egui::Button::new("Start evaluation"),
                )
                .clicked()
            {
                self.start(ctx);
            }
            if running && ui.button("Cancel").clicked() {
                self.cancel();
            }
        });
    }

    fn progress_ui(&self, ui: &mut Ui) {
        let Some(p) = &self.progress else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(&self.status);
            });
            return;
        };
        // Each model is one equal share of the whole: answers dominate, the loss pass is short.
        let share = 1.0 / p.models.max(1) as f32;
        let within = p.done as f32 / p.total.max(1) as f32;
        let fraction = share * (p.model as f32 + within);
        let elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
        let left = if fraction > 0.02 {
            widgets::duration(elapsed.mul_f32((1.0 - fraction) / fraction))
        } else {
            "estimating".into()
        };
        let doing = match p.stage {
            EvalStage::Loss => "loss on the references".to_string(),
            EvalStage::Answers => format!("{}/{} answers", p.done, p.total),
            EvalStage::Cached => "answers from the cache".to_string(),
        };
        ui.add(egui::ProgressBar::new(fraction).text(format!(
            "{} ({}/{}): {doing} · {} elapsed · {left} left",
            p.name,
            p.model + 1,
            p.models,
            widgets::duration(elapsed)
        )));
    }

    fn results_ui(&mut self, ui: &mut Ui, runs: &[RunSummary]) -> fix_data::Action {
        let Some((report, folder)) = &self.report else {
            return fix_data::Action::None;
        };
        ui.horizontal(|ui| {
            ui.label(RichText::new("Results").strong());
            ui.label(
                RichText::new(format!(
                    "{} examples · {} · report {}",
                    report.rows.len(),
                    report.eval_set.source,
                    folder.join("report.html").display()
                ))
                .weak(),
            );
        });
        let tuned = tuned_index(report);
        cards_ui(ui, report);
        charts_ui(ui, report);
        costs_ui(ui, report);
        loss_curves_ui(ui, report, runs);
        ui.add_space(8.0);
        ui.label(RichText::new("Examples").strong());
        let Some(tuned) = tuned else {
            return fix_data::Action::None;
        };
        let outcomes = report.outcomes(tuned);
        ui.horizontal(|ui| {
            for filter in Filter::ALL {
                let n = outcomes.iter().filter(|o| filter.keeps(**o)).count();
                ui.selectable_value(
                    &mut self.filter,
                    filter,
                    format!("{} ({n})", filter.label()),
                );
            }
        });
        let key = report.main_metric().map(|m| m.key.clone());
        let base = report.base_index();
        egui::ScrollArea::vertical()
            .id_salt("eval-rows")
            .max_height(220.0)
            .show(ui, |ui| {
                egui::Grid::new("eval-rows-grid")
                    .striped(true)
                    .num_columns(4)
                    .show(ui, |ui| {
                        for h in ["Example", "Prompt", "Scores (base -> tuned)", "Outcome"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for (i, row) in report.rows.iter().enumerate() {
                            if !self.filter.keeps(outcomes[i]) {
                                continue;
                            }
                            let name = match row.line {
                                Some(line) => format!("#{} (line {line})", i + 1),
                                None => format!("#{}", i + 1),
                            };
                            if ui
                                .selectable_label(self.selected == Some(i), name)
                                .clicked()
                            {
                                self.selected = Some(i);
                            }
                            let prompt = row.prompt.last().map_or("", |m| m.content.as_str());
                            ui.label(short(prompt, 60));
                            let score = |m: Option<usize>| {
                                m.and_then(|m| row.answers.get(m))
                                    .and_then(|a| a.scores.get(key.as_deref()?))
                                    .map_or("–".into(), |s| format!("{s:.2}"))
                            };
                            ui.label(format!("{} -> {}", score(base), score(Some(tuned))));
                            ui.label(outcomes[i].map_or("–", RowOutcome::label));
                            ui.end_row();
                        }
                    });
            });
        let (Some(row), Some(run)) = (
            self.selected.and_then(|i| report.rows.get(i)),
            &self.evaluated,
        ) else {
            return fix_data::Action::None;
        };
        side_by_side(ui, report, row, base);
        self.fix.ui(ui, run, row, &report.eval_set.path)
    }

    fn ask_ui(&mut self, ui: &mut Ui, ctx: &egui::Context) {
        ui.label(RichText::new("Ask both").strong());
        ui.label(
            RichText::new("One question, answered by the base model and by the fine-tuned one.")
                .weak(),
        );
        let mut focus = false;
        let asked = ui
            .horizontal(|ui| {
                let enter = widgets::entry_field(
                    ui,
                    "Question",
                    &mut self.ask,
                    "Ask anything…",
                    420.0,
                    &mut focus,
                );
                let button = ui
                    .add_enabled(self.ask_job.is_none(), egui::Button::new("Ask both"))
                    .clicked();
                enter || button
            })
            .inner;
        if asked && self.ask_job.is_none() && !self.ask.trim().is_empty() {
            self.start_ask(ctx);
        }
        if self.ask_job.is_some() || self.ask_answers.iter().any(|a| !a.is_empty()) {
            ui.columns(2, |cols| {
                for (i, title) in ["Base model", "Fine-tuned"].into_iter().enumerate() {
                    cols[i].label(RichText::new(title).strong());
                    cols[i].label(&self.ask_answers[i]);
                }
            });
            if self.ask_job.is_some() {
                ui.spinner();
            }
        }
    }

    fn start_ask(&mut self, ctx: &egui::Context) {
        let Some((report, _)) = &self.report else {
            return;
        };
        let Some(adapter) = report
            .models
            .get(tuned_index(report).unwrap_or(0))
            .and_then(|m| m.adapter.clone())
        else {
            return;
        };
        let model = report.model.clone();
        let question = self.ask.trim().to_string();
        self.ask_answers = Default::default();
        self.ask_job = Some(Job::spawn(ctx, "ask-both", move |r| {
            if let Err(e) = ask_both(&model, Path::new(&adapter), &question, r) {
                r.send(AskMsg::Failed(format!("Ask both failed: {e}")));
            }
        }));
    }
}

/// The base model answers, then the same model with the adapter; each answer streams as it comes.
fn ask_both(
    model: &str,
    adapter: &Path,
    question: &str,
    r: &super::jobs::Reporter<AskMsg>,
) -> crate::engine::Result<()> {
    use crate::engine::source;
    let files = source::resolve(
        &source::ModelSource::parse(model)?,
        &mut source::Resolve {
            hub: Default::default(),
            offline: true,
            on_download: &mut |_| {},
            cancel: r.cancel_flag(),
        },
    )?;
    let mut loaded = crate::engine::source::load_on_best_device(&files)?;
    let ids = loaded.prompt_ids(None, question, false)?;
    let sampling = crate::engine::generate::Sampling::default();
    for side in 0..2 {
        if side == 1 {
            crate::engine::adapter::load_peft(&mut loaded.model, adapter)?;
        }
        loaded.answer(&ids, &sampling, r.cancel_flag(), &mut |text| {
            r.send(AskMsg::Text(side, text.to_string()))
        })?;
    }
    Ok(())
}

/// The first fine-tuned model of the report.
fn tuned_index(report: &EvalReport) -> Option<usize> {
    report.models.iter().position(|m| m.adapter.is_some())
}

fn percent_like(metric: &MetricInfo) -> bool {
    metric.key != "length_ratio"
}

fn value(metric: &MetricInfo, v: f64) -> String {
    if percent_like(metric) {
        format!("{:.1}%", v * 100.0)
    } else {
        format!("{v:.2}×")
    }
}

/// One card per metric: each model's mean, and each fine-tuned model's change against the base with
/// its 95% interval, coloured when the interval says the change is real.
fn cards_ui(ui: &mut Ui, report: &EvalReport) {
    let tuned: Vec<usize> = (0..report.models.len())
        .filter(|&m| report.models[m].adapter.is_some())
        .collect();
    let has_base = report.base_index().is_some();
    egui::Grid::new("eval-cards")
        .num_columns(1 + report.models.len() + if has_base { tuned.len() } else { 0 })
        .spacing([16.0, 6.0])
        .show(ui, |ui| {
            ui.label(RichText::new("Metric").strong());
            for m in &report.models {
                let title = if m.adapter.is_none() {
                    "Base".to_string()
                } else {
                    m.name.clone()
                };
                ui.label(RichText::new(title).strong());
            }
            if has_base {
                for &t in &tuned {
                    let title = if tuned.len() == 1 {
                        "Change (95% interval)".to_string()
                    } else {
                        format!("Change, {} (95% interval)", report.models[t].name)
                    };
                    ui.label(RichText::new(title).strong());
                }
            }
            ui.end_row();
            for metric in &report.metrics {
                ui.label(&metric.label).on_hover_text(&metric.description);
                for m in &report.models {
                    ui.label(
                        m.aggregates
                            .get(&metric.key)
                            .map_or("–".into(), |i| value(metric, i.mean)),
                    );
                }
                for &t in tuned.iter().filter(|_| has_base) {
                    match report.models[t].change_vs_base.get(&metric.key) {
                        Some(c) => {
                            let (color, verdict) = verdict(metric, c.low, c.high);
                            let sign = if c.mean >= 0.0 { "+" } else { "" };
                            ui.colored_label(
                                color,
                                format!(
                                    "{sign}{} [{}, {}] {verdict}",
                                    value(metric, c.mean),
                                    value(metric, c.low),
                                    value(metric, c.high)
                                ),
                            );
                        }
                        None => {
                            ui.label("–");
                        }
                    }
                }
                ui.end_row();
            }
        });
}

/// Better, worse, or not clear from these examples: an interval that excludes 0 is a real change.
fn verdict(metric: &MetricInfo, low: f64, high: f64) -> (Color32, &'static str) {
    let up = low > 0.0;
    let down = high < 0.0;
    match metric.higher_is_better {
        Some(better_up) if up || down => {
            if up == better_up {
                (GOOD, "better")
            } else {
                (BAD, "worse")
            }
        }
        None if up || down => (WARN, "changed"),
        _ => (Color32::GRAY, "unclear"),
    }
}

/// A bar per model and metric, with the 95% interval as a whisker line over each bar.
fn charts_ui(ui: &mut Ui, report: &EvalReport) {
    let colors = [
        Color32::GRAY,
        GOOD,
        Color32::from_rgb(0x3b, 0x82, 0xf6),
        WARN,
    ];
    let scored: Vec<&MetricInfo> = report.metrics.iter().filter(|m| percent_like(m)).collect();
    let models = report.models.len().max(1) as f64;
    let width = 0.8 / models;
    let plot = Plot::new("eval-bars")
        .height(180.0)
        .allow_scroll(false)
        .allow_drag(false)
        .include_y(0.0)
        .include_y(1.0)
        .legend(egui_plot::Legend::default())
        .x_axis_formatter({
            let labels: Vec<String> = scored.iter().map(|m| m.label.clone()).collect();
            move |mark, _| {
                let i = mark.value.round();
                if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
        })
        .show(ui, |plot| {
            for (m, model) in report.models.iter().enumerate() {
                let offset = (m as f64 - (models - 1.0) / 2.0) * width;
                let bars: Vec<Bar> = scored
                    .iter()
                    .enumerate()
                    .filter_map(|(x, metric)| {
                        let i = model.aggregates.get(&metric.key)?;
                        Some(Bar::new(x as f64 + offset, i.mean).width(width * 0.9))
                    })
                    .collect();
                plot.bar_chart(
                    BarChart::new(model.name.clone(), bars).color(colors[m % colors.len()]),
                );
                for (x, metric) in scored.iter().enumerate() {
                    if let Some(i) = model.aggregates.get(&metric.key) {
                        let at = x as f64 + offset;
                        plot.line(
                            egui_plot::Line::new(
                                format!("{} interval", model.name),
                                egui_plot::PlotPoints::from(vec![[at, i.low], [at, i.high]]),
                            )
                            .color(Color32::BLACK),
                        );
                    }
                }
            }
        });
    let summary: Vec<String> = scored
        .iter()
        .map(|metric| {
            let values: Vec<String> = report
                .models
                .iter()
                .filter_map(|m| {
                    let i = m.aggregates.get(&metric.key)?;
                    Some(format!("{} {}", m.name, value(metric, i.mean)))
                })
                .collect();
            format!("{}: {}", metric.label, values.join(", "))
        })
        .collect();
    widgets::describe_image(
        &plot.response,
        format!("Metric chart: {}", summary.join("; ")),
    );
}

/// The training and eval loss curves of the evaluated runs, overlaid.
fn loss_curves_ui(ui: &mut Ui, report: &EvalReport, runs: &[RunSummary]) {
    let evaluated: Vec<(&str, &RunSummary)> = report
        .models
        .iter()
        .filter_map(|m| {
            let adapter = Path::new(m.adapter.as_deref()?);
            let run = runs
                .iter()
                .find(|r| adapter == r.path || adapter.parent() == Some(r.path.as_path()))?;
            Some((m.name.as_str(), run))
        })
        .collect();
    if evaluated.is_empty() {
        return;
    }
    let names: Vec<[String; 2]> = evaluated
        .iter()
        .map(|(name, _)| {
            [
                format!("{name}: training loss"),
                format!("{name}: eval loss"),
            ]
        })
        .collect();
    let series: Vec<(&str, &[[f64; 2]])> = evaluated
        .iter()
        .zip(&names)
        .flat_map(|((_, run), [train, eval])| {
            [
                (train.as_str(), run.curves.loss.as_slice()),
                (eval.as_str(), run.curves.eval_loss.as_slice()),
            ]
        })
        .collect();
    widgets::curves(
        ui,
        "eval-run-loss",
        "Loss of the evaluated runs",
        160.0,
        &series,
    );
}

/// Loss, perplexity, and what an answer costs, per model.
fn costs_ui(ui: &mut Ui, report: &EvalReport) {
    egui::Grid::new("eval-costs")
        .num_columns(report.models.len() + 1)
        .spacing([16.0, 4.0])
        .show(ui, |ui| {
            ui.label("");
            for m in &report.models {
                ui.label(RichText::new(&m.name).strong());
            }
            ui.end_row();
            type Cell = fn(&crate::engine::eval::ModelSummary) -> String;
            let rows: [(&str, &str, Cell); 6] = [
                ("Eval loss", "Average surprise at the reference answers' tokens: lower means the model expects the answers you want.", |m| m.eval_loss.map_or("–".into(), |l| format!("{l:.4}"))),
                ("Perplexity", "The loss as a number of equally likely choices per token: lower is better.", |m| m.perplexity.map_or("–".into(), |p| format!("{p:.2}"))),
                ("Tokens per answer", "Answer length in tokens: what each answer costs to generate.", |m| format!("{:.1}", m.latency.tokens_out)),
                ("Time to first token", "How long before the answer starts.", |m| format!("{:.0} ms", m.latency.time_to_first_token_ms)),
                ("Time per token", "How fast the answer then comes, with the examples answered together.", |m| format!("{:.1} ms", m.latency.ms_per_token)),
                ("Tokens per second", "New tokens per second over the whole evaluation.", |m| format!("{:.1}", m.latency.tokens_per_second)),
            ];
            for (label, help, cell) in rows {
                ui.label(label).on_hover_text(help);
                for m in &report.models {
                    ui.label(cell(m));
                }
                ui.end_row();
            }
        });
}

/// Prompt, reference, the base answer and each fine-tuned answer, with the words of each answer that
/// are not in the reference highlighted.
fn side_by_side(
    ui: &mut Ui,
    report: &EvalReport,
    row: &crate::engine::eval::EvalRow,
    base: Option<usize>,
) {
    ui.add_space(6.0);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.label(RichText::new(format!("Example #{}", row.index + 1)).strong());
        for m in &row.prompt {
            ui.label(format!("{}: {}", m.role, m.content));
        }
        ui.label(RichText::new("Reference").strong());
        ui.label(&row.reference);
        let sides: Vec<(usize, &str)> = base
            .map(|b| (b, "Base model"))
            .into_iter()
            .chain(
                (0..report.models.len())
                    .filter(|&m| report.models[m].adapter.is_some())
                    .map(|m| (m, "Fine-tuned")),
            )
            .collect();
        ui.columns(sides.len(), |cols| {
            for (col, (m, title)) in cols.iter_mut().zip(sides) {
                let Some(answer) = row.answers.get(m) else {
                    continue;
                };
                col.label(RichText::new(format!("{title} ({})", report.models[m].name)).strong());
                highlighted(col, &answer.text, &row.reference);
                let scores: Vec<String> = answer
                    .scores
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect();
                col.label(RichText::new(scores.join(" · ")).weak());
            }
        });
    });
}

/// The answer with the words that differ from the reference on a coloured background.
fn highlighted(ui: &mut Ui, answer: &str, reference: &str) {
    let mut job = egui::text::LayoutJob::default();
    let plain = egui::TextFormat {
        color: ui.visuals().text_color(),
        ..Default::default()
    };
    let differs = egui::TextFormat {
        background: Color32::from_rgba_unmultiplied(0xd2, 0x99, 0x22, 90),
        ..plain.clone()
    };
    for (word, different) in word_diff(answer, reference) {
        let format = if different { &differs } else { &plain };
        job.append(&word, 0.0, format.clone());
    }
    job.wrap.max_width = ui.available_width();
    ui.label(job);
}

fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

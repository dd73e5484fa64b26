//! From a failing example to better data: the run's training examples most like it, each with its
//! answer to correct or a box to remove it, and the failing example itself to add (or correct) with the
//! right answer. The changes go to a **new** dataset file, checked like any other, and *Train again
//! with this data* starts the next run with every other setting of this one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{RichText, Ui};

use super::jobs::Job;
use super::widgets::{self, BAD, GOOD};
use crate::engine::chat::ChatMessage;
use crate::engine::data::edit::{next_version, write_edited, DataEdits, EditSummary};
use crate::engine::data::{validate_file, Dataset, ValidateOptions};
use crate::engine::eval::nearest::{nearest, Neighbour};
use crate::engine::eval::EvalRow;
use crate::engine::train::run::{RunDir, RunSpec};

/// Training examples shown for one failure.
const SHOWN: usize = 5;

/// The run's training data, read in the background.
pub struct TrainData {
    pub spec: RunSpec,
    pub dataset: Dataset,
    /// The name the new version gets unless the user types another (looked up off the UI thread).
    pub suggested: PathBuf,
}

/// A new dataset file: where, what it holds, what checking it said, and the name the next one gets.
type Saved = (PathBuf, EditSummary, String, PathBuf);

/// What the page asks of the app.
pub enum Action {
    None,
    /// Open this dataset for training, with these settings, on the Train step.
    TrainAgain(PathBuf, Box<RunSpec>),
}

#[derive(Default)]
pub struct FixData {
    /// The run whose data is loaded (or loading).
    run: Option<PathBuf>,
    job: Option<Job<Result<TrainData, String>>>,
    pub data: Option<Arc<TrainData>>,
    /// The training examples nearest to the example shown (by its index), found once per example.
    neighbours: Option<(usize, Vec<Neighbour>)>,
    pub edits: DataEdits,
    /// The corrected answer for the evaluation example `row`, when it is to be added or corrected.
    pub correction: Option<(usize, String)>,
    pub save_as: String,
    save_job: Option<Job<Result<Saved, String>>>,
    pub saved: Option<PathBuf>,
    pub message: Option<(bool, String)>,
}

impl FixData {
    pub fn poll(&mut self) {
        if let Some(job) = &mut self.job {
            if let Some(outcome) = job.poll().pop() {
                match outcome {
                    Ok(data) => {
                        self.save_as = data.suggested.display().to_string();
                        self.data = Some(Arc::new(data));
                    }
                    Err(e) => self.message = Some((false, e)),
                }
            }
            if !job.is_running() {
                self.job = None;
            }
        }
        if let Some(job) = &mut self.save_job {
            if let Some(outcome) = job.poll().pop() {
                match outcome {
                    Ok((path, s, checked, next)) => {
                        self.save_as = next.display().to_string();
                        self.message = Some((
                            true,
                            format!(
                                "Saved {}: {} examples ({} corrected, {} removed, {} added). {checked}",
                                path.display(),
                                s.records,
                                s.changed,
                                s.removed,
                                s.added
                            ),
                        ));
                        self.saved = Some(path);
                        self.edits = DataEdits::default();
                        self.correction = None;
                    }
                    Err(e) => self.message = Some((false, e)),
                }
            }
            if !job.is_running() {
                self.save_job = None;
            }
        }
    }

    /// Read `run`'s training data in the background, once per run.
    fn load(&mut self, ctx: &egui::Context, run: &Path) {
        if self.run.as_deref() == Some(run) {
            return;
        }
        *self = FixData {
            run: Some(run.to_path_buf()),
            ..FixData::default()
        };
        let run = run.to_path_buf();
        self.job = Some(Job::spawn(ctx, "read-train-data", move |r| {
            let read = (|| -> crate::engine::Result<TrainData> {
                let (_, spec) = RunDir::open(&run)?;
                let (dataset, _) =
                    crate::engine::train::prepare::datasets(&spec, &mut |_| {}, r.cancel_flag())?;
                let suggested = next_version(&spec.data);
                Ok(TrainData {
                    spec,
                    dataset,
                    suggested,
                })
            })();
            r.send(read.map_err(|e| format!("cannot read the run's training data: {e}")));
        }));
    }

    pub fn ui(&mut self, ui: &mut Ui, run: &Path, row: &EvalRow, eval_path: &str) -> Action {
        let ctx = ui.ctx().clone();
        self.load(&ctx, run);
        let mut action = Action::None;
        ui.add_space(6.0);
        ui.label(RichText::new("Fix the data").strong());
        ui.label(RichText::new("A wrong answer usually comes from the training data: an example that teaches it, or none that teaches the right one. Correct or remove the training examples below, or add this one with the right answer; the changes go to a new file.").weak());
        if let Some((ok, m)) = &self.message {
            ui.colored_label(if *ok { GOOD } else { BAD }, m);
        }
        let Some(data) = self.data.clone() else {
            if self.job.is_some() {
                ui.spinner();
            }
            return action;
        };
        if self.neighbours.as_ref().map(|(i, _)| *i) != Some(row.index) {
            self.neighbours = Some((row.index, nearest(&data.dataset, &row.prompt, SHOWN)));
        }
        let found = self
            .neighbours
            .as_ref()
            .map_or(&[][..], |(_, n)| n)
            .to_vec();
        if found.is_empty() {
            ui.label("No training example asks anything like this: adding this one teaches it.");
        }
        for n in &found {
            let conversation = &data.dataset.conversations[n.index];
            let r = conversation.row;
            egui::Frame::group(ui.style()).show(ui, |ui| {
                let question = conversation
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map_or("", |m| m.content.as_str());
                ui.label(format!(
                    "{} · {:.0}% alike: {}",
                    data.dataset.numbering.name(r),
                    n.similarity * 100.0,
                    question
                ));
                let original = conversation
                    .messages
                    .last()
                    .map_or(String::new(), |m| m.content.clone());
                let mut text = self
                    .edits
                    .answers
                    .get(&r)
                    .cloned()
                    .unwrap_or(original.clone());
                let edit = ui.add(
                    egui::TextEdit::multiline(&mut text)
                        .desired_rows(2)
                        .desired_width(f32::INFINITY),
                );
                widgets::describe_field(&edit, &format!("Answer of training row {r}"));
                if edit.changed() {
                    if text == original {
                        self.edits.answers.remove(&r);
                    } else {
                        self.edits.answers.insert(r, text);
                    }
                }
                let mut remove = self.edits.removed.contains(&r);
                if ui
                    .checkbox(&mut remove, format!("Remove training row {r}"))
                    .changed()
                {
                    if remove {
                        self.edits.removed.insert(r);
                    } else {
                        self.edits.removed.remove(&r);
                    }
                }
            });
        }
        // The failing example: from the training file itself (held out by the split), its row is
        // corrected; from another file, it is added with the corrected answer.
        let same_file = Path::new(eval_path) == data.spec.data;
        let mut add = self
            .correction
            .as_ref()
            .is_some_and(|(i, _)| *i == row.index);
        let label = if same_file {
            "Correct this example's answer in the data"
        } else {
            "Add this example to the training data, with this answer"
        };
        if ui.checkbox(&mut add, label).changed() {
            self.correction = add.then(|| (row.index, row.reference.clone()));
        }
        if let Some((_, answer)) = self.correction.as_mut().filter(|(i, _)| *i == row.index) {
            let edit = ui.add(
                egui::TextEdit::multiline(answer)
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            );
            widgets::describe_field(&edit, "Corrected answer");
        }
        let staged = self.staged(row, same_file);
        ui.horizontal(|ui| {
            let name = ui.label("Save as");
            ui.add(egui::TextEdit::singleline(&mut self.save_as).desired_width(420.0))
                .labelled_by(name.id);
            let ready =
                !staged.is_empty() && self.save_job.is_none() && !self.save_as.trim().is_empty();
            if ui
                .add_enabled(ready, egui::Button::new("Save new dataset"))
                .on_disabled_hover_text("Correct, remove or add an example first")
                .clicked()
            {
                self.save(&ctx, &data.spec.data, staged.clone());
            }
        });
        if let Some(saved) = &self.saved {
            if ui.button("Train again with this data").clicked() {
                action = Action::TrainAgain(saved.clone(), Box::new(data.spec.clone()));
            }
        }
        action
    }

    /// Every change so far, with this example's correction.
    fn staged(&self, row: &EvalRow, same_file: bool) -> DataEdits {
        let mut edits = self.edits.clone();
        if let Some((_, answer)) = self.correction.as_ref().filter(|(i, _)| *i == row.index) {
            match (same_file, row.row) {
                (true, Some(r)) => {
                    edits.answers.insert(r, answer.clone());
                }
                _ => {
                    let mut conversation: Vec<ChatMessage> = row.prompt.clone();
                    conversation.push(ChatMessage::new("assistant", answer));
                    edits.added.push(conversation);
                }
            }
        }
        edits
    }

    fn save(&mut self, ctx: &egui::Context, source: &Path, edits: DataEdits) {
        let source = source.to_path_buf();
        let dest = PathBuf::from(self.save_as.trim());
        self.message = None;
        self.save_job = Some(Job::spawn(ctx, "save-dataset", move |r| {
            let outcome = write_edited(&source, &edits, &dest)
                .map_err(|e| format!("could not save the new dataset: {e}"))
                .and_then(|summary| {
                    let checked = validate_file(
                        &dest,
                        &ValidateOptions::default(),
                        &mut |_| {},
                        r.cancel_flag(),
                    )
                    .map_err(|e| format!("saved, but it cannot be checked: {e}"))?;
                    let verdict = match checked.report.check_trainable(false) {
                        Ok(()) => {
                            format!("Checked: {} usable examples.", checked.report.usable_rows)
                        }
                        Err(e) => {
                            format!("Checked: {e} — open it on the Data step to see the rows.")
                        }
                    };
                    let next = next_version(&dest);
                    Ok((dest, summary, verdict, next))
                });
            r.send(outcome);
        }));
    }
}

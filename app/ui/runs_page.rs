//! The run history: every run folder with its status, date, model, data and final losses. Open one to
//! see its curves, resume an interrupted one, open its folder, or save a finished run's adapter.

use std::path::{Path, PathBuf};

use egui::{RichText, Ui};

use super::dialogs::{self, PathEntry, Picked};
use super::jobs::Job;
use super::widgets::{self, BAD, GOOD, WARN};
use crate::engine::train::runs::{list_runs, RunStatus, RunSummary};

/// What the page asks of the app.
pub enum Action {
    None,
    Resume(PathBuf),
    /// Compare this run with its base model on the Evaluate step.
    Evaluate(PathBuf),
}

#[derive(Default)]
pub struct RunsPage {
    pub runs: Option<Vec<RunSummary>>,
    list_job: Option<Job<Vec<RunSummary>>>,
    pub selected: Option<PathBuf>,
    save_job: Option<Job<Result<PathBuf, String>>>,
    /// The folder dialog of "Save adapter…", and the adapter it is for.
    save_dialog: Option<(Job<Picked>, PathBuf, String)>,
    /// Where no dialog can open: the destination folder typed by hand, and the adapter it is for.
    save_typed: PathEntry,
    save_typed_for: Option<(PathBuf, String)>,
    /// File managers started by "Open folder": each is waited for, so none is left a zombie, and a
    /// failure is shown.
    opened: Vec<Job<Result<(), String>>>,
    /// The program that shows a folder (None: the platform's own, e.g. xdg-open).
    opener: Option<PathBuf>,
    message: Option<(bool, String)>,
}

impl RunsPage {
    /// `opener`: the program that shows a run's folder (None: the platform's file manager).
    pub fn new(opener: Option<PathBuf>) -> RunsPage {
        RunsPage {
            opener,
            ..RunsPage::default()
        }
    }

    /// Read the runs folder again (in the background).
    pub fn reload(&mut self, ctx: &egui::Context, runs_dir: &Path) {
        let dir = runs_dir.to_path_buf();
        self.list_job = Some(Job::spawn(ctx, "list-runs", move |r| {
            r.send(list_runs(&dir))
        }));
    }

    pub fn poll(&mut self) {
        if let Some(job) = &mut self.list_job {
            if let Some(runs) = job.poll().pop() {
                self.runs = Some(runs);
            }
            if !job.is_running() {
                self.list_job = None;
            }
        }
        for job in &mut self.opened {
            if let Some(Err(e)) = job.poll().pop() {
                self.message = Some((false, e));
            }
        }
        self.opened.retain(Job::is_running);
        if let Some(job) = &mut self.save_job {
            if let Some(outcome) = job.poll().pop() {
                self.message = Some(match outcome {
                    Ok(p) => (true, format!("Adapter saved to {}", p.display())),
                    Err(e) => (false, e),
                });
            }
            if !job.is_running() {
                self.save_job = None;
            }
        }
    }

    pub fn ui(&mut self, ui: &mut Ui, runs_dir: &Path, running: Option<&Path>) -> Action {
        let ctx = ui.ctx().clone();
        let mut action = Action::None;
        widgets::heading(
            ui,
            "Runs",
            "Every training run, newest first. Each folder holds its settings (run.toml), its metrics and its adapter.",
        );
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("Folder: {}", runs_dir.display())).weak());
            if ui.button("Refresh").clicked() || (self.runs.is_none() && self.list_job.is_none()) {
                self.reload(&ctx, runs_dir);
            }
        });
        if let Some((ok, m)) = &self.message {
            ui.colored_label(if *ok { GOOD } else { BAD }, m);
        }
        self.save_ui(ui, &ctx);
        let Some(runs) = &self.runs else {
            ui.spinner();
            return action;
        };
        if runs.is_empty() {
            ui.label("No runs yet. Start one on the Train step.");
            return action;
        }
        egui::ScrollArea::vertical()
            .id_salt("runs-table")
            .max_height(260.0)
            .show(ui, |ui| {
                egui::Grid::new("runs")
                    .striped(true)
                    .num_columns(6)
                    .show(ui, |ui| {
                        for h in ["Run", "Status", "Model", "Data", "Loss", "Eval loss"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for run in runs {
                            let selected = self.selected.as_deref() == Some(run.path.as_path());
                            if ui.selectable_label(selected, run.name()).clicked() {
                                self.selected = Some(run.path.clone());
                            }
                            let live = running == Some(run.path.as_path());
                            let (status, color) = if live {
                                ("running".to_string(), GOOD)
                            } else {
                                status_text(&run.status)
                            };
                            ui.colored_label(color, status);
                            match &run.spec {
                                Ok(spec) => {
                                    ui.label(short(&spec.model));
                                    ui.label(short(&spec.data.display().to_string()));
                                }
                                Err(e) => {
                                    ui.colored_label(BAD, "run.toml unreadable")
                                        .on_hover_text(e);
                                    ui.label("");
                                }
                            }
                            ui.label(
                                run.curves
                                    .last_loss()
                                    .map_or("–".into(), |l| format!("{l:.4}")),
                            );
                            ui.label(
                                run.curves
                                    .last_eval_loss()
                                    .map_or("–".into(), |l| format!("{l:.4}")),
                            );
                            ui.end_row();
                        }
                    });
            });
        let Some(run) = self
            .selected
            .as_ref()
            .and_then(|p| runs.iter().find(|r| &r.path == p))
        else {
            return action;
        };
        ui.separator();
        ui.label(RichText::new(run.name()).strong());
        if let Ok(spec) = &run.spec {
            ui.label(format!(
                "{} · data {} · r={} alpha={} · lr {:.1e} · created {}",
                spec.model,
                spec.data.display(),
                spec.train.lora.r,
                spec.train.lora.alpha,
                spec.train.lr,
                spec.created
            ));
        }
        let busy = running.is_some();
        ui.horizontal(|ui| {
            if let RunStatus::Interrupted { .. } = run.status {
                if ui
                    .add_enabled(!busy, egui::Button::new("Resume"))
                    .on_disabled_hover_text("Another run is training")
                    .clicked()
                {
                    action = Action::Resume(run.path.clone());
                }
            }
            if run.status == RunStatus::Finished && ui.button("Evaluate").clicked() {
                action = Action::Evaluate(run.path.clone());
            }
            if ui.button("Open folder").clicked() {
                self.opened
                    .push(open_folder(&ctx, self.opener.as_deref(), &run.path));
            }
            let saving = self.save_dialog.is_some() || self.save_job.is_some();
            if run.status == RunStatus::Finished
                && ui
                    .add_enabled(!saving, egui::Button::new("Save adapter…"))
                    .clicked()
            {
                let job = dialogs::pick_folder(&ctx, "Save the adapter into…");
                self.save_dialog = Some((job, run.path.join("adapter"), run.name()));
            }
        });
        widgets::curves(
            ui,
            "run-loss",
            "Loss",
            200.0,
            &[
                ("training loss", &run.curves.loss),
                ("eval loss", &run.curves.eval_loss),
            ],
        );
        action
    }
}

impl RunsPage {
    /// Where "Save adapter…" puts the adapter: the folder picked in the dialog, or typed where no dialog
    /// could open.
    fn save_ui(&mut self, ui: &mut Ui, ctx: &egui::Context) {
        // The dialog's answer once it has come (None inside: it ended without one).
        let answer = match &mut self.save_dialog {
            Some((job, _, _)) => {
                let picked = job.poll().pop();
                (picked.is_some() || !job.is_running()).then_some(picked)
            }
            None => None,
        };
        let ended = answer.and_then(|picked| Some((picked, self.save_dialog.take()?)));
        if let Some((picked, (_, from, name))) = ended {
            match picked {
                Some(Picked::Paths(paths)) => {
                    if let Some(dest) = paths.into_iter().next() {
                        self.save_to(ctx, from, &name, dest);
                    }
                }
                Some(Picked::Nothing { unseen: true }) => {
                    self.save_typed.offer(dialogs::NO_DIALOG);
                    self.save_typed_for = Some((from, name));
                }
                Some(Picked::Nothing { unseen: false }) | None => {}
            }
        }
        let typed = self
            .save_typed
            .ui(ui, "Save the adapter into", "Save", |p| {
                dialogs::existing(p, true)
            });
        if let (Some(dest), Some((from, name))) = (typed, self.save_typed_for.take()) {
            self.save_typed.shown = false;
            self.save_to(ctx, from, &name, dest);
        }
    }

    fn save_to(&mut self, ctx: &egui::Context, from: PathBuf, name: &str, folder: PathBuf) {
        let dest = folder.join(format!("{name}-adapter"));
        self.save_job = Some(Job::spawn(ctx, "save-adapter", move |r| {
            r.send(save_adapter(&from, &dest));
        }));
    }
}

fn status_text(status: &RunStatus) -> (String, egui::Color32) {
    let color = match status {
        RunStatus::Finished => GOOD,
        RunStatus::Interrupted { .. } => WARN,
        RunStatus::NoCheckpoint => BAD,
    };
    (status.label(), color)
}

fn short(text: &str) -> String {
    let name = Path::new(text)
        .file_name()
        .map_or(text.to_string(), |n| n.to_string_lossy().into_owned());
    if name.chars().count() > 40 {
        format!(
            "…{}",
            name.chars()
                .rev()
                .take(39)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        )
    } else {
        name
    }
}

/// Copy an adapter folder to `dest`, which must not exist yet; `dest` ends up complete or absent.
pub fn save_adapter(from: &Path, dest: &Path) -> Result<PathBuf, String> {
    if dest.exists() {
        return Err(format!(
            "{} already exists; choose another folder",
            dest.display()
        ));
    }
    let copy = |partial: &Path| -> std::io::Result<()> {
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), partial.join(entry.file_name()))?;
            }
        }
        Ok(())
    };
    crate::engine::fsutil::produce_dir_atomic(dest, false, copy, |e| e)
        .map_err(|e| format!("could not save the adapter to {}: {e}", dest.display()))?;
    Ok(dest.to_path_buf())
}

/// Show a folder in the system's file manager (`opener`, or the platform's own). The program is waited
/// for on a worker, so it never lingers as a zombie, and a failure comes back as a message.
fn open_folder(ctx: &egui::Context, opener: Option<&Path>, path: &Path) -> Job<Result<(), String>> {
    let program = opener.map_or_else(
        || {
            PathBuf::from(if cfg!(target_os = "macos") {
                "open"
            } else if cfg!(windows) {
                "explorer"
            } else {
                "xdg-open"
            })
        },
        Path::to_path_buf,
    );
    let path = path.to_path_buf();
    Job::spawn(ctx, "open-folder", move |r| {
        let shown = program.display();
        let outcome = std::process::Command::new(&program)
            .arg(&path)
            .status()
            .map_err(|e| format!("could not start {shown} to open {}: {e}", path.display()))
            .and_then(|status| {
                // explorer.exe reports 1 even when it opened the folder.
                if status.success() || cfg!(windows) {
                    Ok(())
                } else {
                    Err(format!(
                        "{shown} could not open {} ({status}); open the folder yourself",
                        path.display()
                    ))
                }
            });
        r.send(outcome);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_an_adapter_copies_it_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("adapter");
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("adapter_config.json"), "{}").unwrap();
        let dest = dir.path().join("saved");
        save_adapter(&from, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("adapter_config.json")).unwrap(),
            "{}"
        );
        let again = save_adapter(&from, &dest).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        assert!(save_adapter(&dir.path().join("missing"), &dir.path().join("x")).is_err());
        assert!(!dir.path().join("x").exists());
    }
}

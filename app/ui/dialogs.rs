//! Native open dialogs (rfd), run off the UI thread so the window keeps painting while one is open, and
//! the way around them where none can open. rfd's async dialogs hand the work to the platform's own
//! thread where one is required (macOS).
//!
//! On Linux rfd asks the desktop's file-dialog portal, then zenity; on a plain X11 or Wayland session
//! with neither, it returns "nothing picked" at once, exactly as if the user had cancelled. A person
//! cannot open and cancel a dialog that fast, so an empty answer within [`UNSEEN_WITHIN`] means no dialog
//! was shown: the page then says so and offers a [`PathEntry`] to type or paste the path into.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{RichText, Ui};

use super::jobs::Job;
use super::widgets::{BAD, WARN};

/// An empty answer sooner than this cannot have come from a person.
const UNSEEN_WITHIN: Duration = Duration::from_millis(1000);

/// What a dialog gave back.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    Paths(Vec<PathBuf>),
    /// Nothing was picked; `unseen` when it came back too fast for any dialog to have been shown.
    Nothing {
        unseen: bool,
    },
}

impl Picked {
    fn from(paths: Vec<PathBuf>, waited: Duration) -> Picked {
        if paths.is_empty() {
            Picked::Nothing {
                unseen: waited < UNSEEN_WITHIN,
            }
        } else {
            Picked::Paths(paths)
        }
    }
}

/// What to tell the user when no dialog could be shown.
pub const NO_DIALOG: &str = "No file dialog could be opened here: this desktop runs no file-dialog service (xdg-desktop-portal, or zenity). Type or paste the path instead.";

/// Run `pick` (which waits for the dialog) on a worker and time it.
fn dialog_job(
    ctx: &egui::Context,
    pick: impl FnOnce() -> Vec<PathBuf> + Send + 'static,
) -> Job<Picked> {
    Job::spawn(ctx, "dialog", move |r| {
        let started = Instant::now();
        let paths = pick();
        r.send(Picked::from(paths, started.elapsed()));
    })
}

pub fn pick_folder(ctx: &egui::Context, title: &str) -> Job<Picked> {
    let dialog = rfd::AsyncFileDialog::new().set_title(title);
    dialog_job(ctx, move || {
        pollster::block_on(dialog.pick_folder())
            .map(|h| h.path().to_path_buf())
            .into_iter()
            .collect()
    })
}

fn file_dialog(title: &str, kind: &str, extensions: &[&str]) -> rfd::AsyncFileDialog {
    rfd::AsyncFileDialog::new()
        .set_title(title)
        .add_filter(kind, extensions)
}

pub fn pick_file(ctx: &egui::Context, title: &str, kind: &str, extensions: &[&str]) -> Job<Picked> {
    let dialog = file_dialog(title, kind, extensions);
    dialog_job(ctx, move || {
        pollster::block_on(dialog.pick_file())
            .map(|h| h.path().to_path_buf())
            .into_iter()
            .collect()
    })
}

pub fn pick_files(
    ctx: &egui::Context,
    title: &str,
    kind: &str,
    extensions: &[&str],
) -> Job<Picked> {
    let dialog = file_dialog(title, kind, extensions);
    dialog_job(ctx, move || {
        pollster::block_on(dialog.pick_files())
            .unwrap_or_default()
            .iter()
            .map(|h| h.path().to_path_buf())
            .collect()
    })
}

/// The answer of a dialog job once it has come: None while it is still open.
pub fn poll(job: &mut Option<Job<Picked>>) -> Option<Picked> {
    let running = job.as_mut()?;
    let picked = running.poll().pop();
    if !running.is_running() {
        *job = None;
    }
    picked
}

/// A path typed or pasted by hand, checked when confirmed: the way in where no dialog can open.
#[derive(Default)]
pub struct PathEntry {
    /// Whether the field is offered (after a dialog failed to show, or when asked for).
    pub shown: bool,
    pub text: String,
    /// Why the field is offered, shown above it.
    reason: Option<String>,
    error: Option<String>,
    focus: bool,
}

impl PathEntry {
    /// Offer the field, saying why, with the keyboard in it.
    pub fn offer(&mut self, reason: &str) {
        self.shown = true;
        self.reason = Some(reason.to_string());
        self.error = None;
        self.focus = true;
    }

    /// The field, its button and its messages. Returns the path when the user confirms one that
    /// `check` accepts; otherwise `check`'s message stays under the field.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        label: &str,
        button: &str,
        check: impl Fn(&Path) -> Result<(), String>,
    ) -> Option<PathBuf> {
        if !self.shown {
            return None;
        }
        if let Some(reason) = &self.reason {
            ui.colored_label(WARN, reason);
        }
        let mut confirmed = None;
        ui.horizontal(|ui| {
            let enter = super::widgets::entry_field(
                ui,
                label,
                &mut self.text,
                "/home/you/…",
                420.0,
                &mut self.focus,
            );
            if ui.button(button).clicked() || enter {
                match typed_path(&self.text).and_then(|p| check(&p).map(|()| p)) {
                    Ok(path) => {
                        self.error = None;
                        self.text.clear();
                        confirmed = Some(path);
                    }
                    Err(e) => self.error = Some(e),
                }
            }
        });
        if let Some(e) = &self.error {
            ui.colored_label(BAD, e);
        }
        if confirmed.is_some() {
            self.reason = None;
        }
        confirmed
    }

    /// A small link that offers the field without a dialog first.
    pub fn offer_link(&mut self, ui: &mut Ui, text: &str) {
        if !self.shown && ui.link(RichText::new(text).small()).clicked() {
            self.shown = true;
            self.focus = true;
        }
    }
}

/// The typed text as a path: trimmed, quotes from a paste removed, `~` as the home folder.
fn typed_path(text: &str) -> Result<PathBuf, String> {
    let text = text.trim().trim_matches(|c| c == '"' || c == '\'');
    if text.is_empty() {
        return Err("Type or paste a path first.".into());
    }
    let home = || directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
    match text.strip_prefix("~/").or((text == "~").then_some("")) {
        Some(rest) => home().map(|h| h.join(rest)).ok_or_else(|| {
            format!("{text}: cannot tell where your home folder is; give the full path.")
        }),
        None => Ok(PathBuf::from(text)),
    }
}

/// The checks every typed path gets: it exists, and is a file or a folder as asked.
pub fn existing(path: &Path, want_folder: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist. Check the spelling; a path that does not start with / is taken from {}.",
            path.display(),
            std::env::current_dir().map_or_else(|_| "the folder Loft was started in".into(), |d| d.display().to_string())
        )),
        Err(e) => Err(format!("cannot open {}: {e}", path.display())),
        Ok(m) if want_folder && !m.is_dir() => Err(format!(
            "{} is a file; give the folder instead.",
            path.display()
        )),
        Ok(m) if !want_folder && m.is_dir() => Err(format!(
            "{} is a folder; give a file inside it.",
            path.display()
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_answer_is_unseen_only_when_it_came_at_once() {
        assert_eq!(
            Picked::from(Vec::new(), Duration::from_millis(20)),
            Picked::Nothing { unseen: true }
        );
        assert_eq!(
            Picked::from(Vec::new(), Duration::from_secs(4)),
            Picked::Nothing { unseen: false }
        );
        let p = vec![PathBuf::from("/a")];
        assert_eq!(Picked::from(p.clone(), Duration::ZERO), Picked::Paths(p));
    }

    #[test]
    fn typed_paths_are_trimmed_unquoted_and_checked() {
        assert_eq!(
            typed_path("  '/tmp/a b.jsonl' "),
            Ok(PathBuf::from("/tmp/a b.jsonl"))
        );
        assert!(typed_path("   ").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.jsonl");
        std::fs::write(&file, "").unwrap();
        assert_eq!(existing(&file, false), Ok(()));
        assert!(existing(&file, true).unwrap_err().contains("is a file"));
        assert!(existing(dir.path(), false)
            .unwrap_err()
            .contains("is a folder"));
        let missing = existing(&dir.path().join("nope.jsonl"), false).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
    }
}

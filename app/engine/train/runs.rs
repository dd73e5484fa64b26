//! The run history: every run folder under a runs directory, what state it was left in, its final
//! losses and its curves — read from disk alone, so a run made by the CLI shows in the app and back.

use std::path::{Path, PathBuf};

use super::run::{RunDir, RunSpec};

/// How a run was left.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    /// The final adapter was written.
    Finished,
    /// Stopped (cancelled, failed or killed) after a checkpoint: it can be resumed.
    Interrupted { checkpoint_step: usize },
    /// Stopped before its first checkpoint: nothing to resume; start it again.
    NoCheckpoint,
}

impl RunStatus {
    pub fn label(&self) -> String {
        match self {
            RunStatus::Finished => "finished".into(),
            RunStatus::Interrupted { checkpoint_step } => {
                format!("interrupted (checkpoint at step {checkpoint_step})")
            }
            RunStatus::NoCheckpoint => "stopped before its first checkpoint".into(),
        }
    }
}

/// Loss, eval loss and learning-rate curves as (step, value) points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    pub loss: Vec<[f64; 2]>,
    pub eval_loss: Vec<[f64; 2]>,
    pub lr: Vec<[f64; 2]>,
}

impl Curves {
    /// From the lines of a metrics.jsonl.
    pub fn from_metrics(metrics: &[serde_json::Value]) -> Curves {
        let mut curves = Curves::default();
        for m in metrics {
            let Some(step) = m.get("step").and_then(|s| s.as_f64()) else {
                continue;
            };
            let push = |key: &str, into: &mut Vec<[f64; 2]>| {
                if let Some(v) = m.get(key).and_then(|v| v.as_f64()) {
                    into.push([step, v]);
                }
            };
            push("loss", &mut curves.loss);
            push("eval_loss", &mut curves.eval_loss);
            push("lr", &mut curves.lr);
        }
        curves
    }

    pub fn last_loss(&self) -> Option<f64> {
        self.loss.last().map(|p| p[1])
    }

    pub fn last_eval_loss(&self) -> Option<f64> {
        self.eval_loss.last().map(|p| p[1])
    }
}

/// One run folder as the history shows it.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub path: PathBuf,
    /// The run's configuration, or why its run.toml cannot be read.
    pub spec: Result<RunSpec, String>,
    pub status: RunStatus,
    pub curves: Curves,
}

impl RunSummary {
    pub fn read(path: &Path) -> RunSummary {
        let run = RunDir {
            path: path.to_path_buf(),
        };
        let spec = run.read_spec().map_err(|e| e.to_string());
        let finished = run
            .adapter_dir()
            .join(crate::engine::adapter::WEIGHTS_FILE)
            .is_file();
        let status = match run.checkpoints().last() {
            _ if finished => RunStatus::Finished,
            Some((step, _)) => RunStatus::Interrupted {
                checkpoint_step: *step,
            },
            None => RunStatus::NoCheckpoint,
        };
        RunSummary {
            path: path.to_path_buf(),
            spec,
            status,
            curves: Curves::from_metrics(&run.read_metrics()),
        }
    }

    /// The folder's name (date-time and run name).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Every run under `runs_dir` (folders holding a run.toml), newest first.
pub fn list_runs(runs_dir: &Path) -> Vec<RunSummary> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("run.toml").is_file())
        .collect();
    // Folder names start with the creation date-time, so name order is time order.
    paths.sort();
    paths.reverse();
    paths.iter().map(|p| RunSummary::read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn curves_pick_each_series_from_mixed_lines() {
        let metrics = vec![
            json!({"step": 1, "loss": 2.0, "lr": 0.1}),
            json!({"step": 2, "eval_loss": 1.5, "eval_perplexity": 4.4}),
            json!({"loss": 9.0}),
            json!({"step": 3, "loss": 1.0, "lr": 0.05}),
        ];
        let c = Curves::from_metrics(&metrics);
        assert_eq!(c.loss, vec![[1.0, 2.0], [3.0, 1.0]]);
        assert_eq!(c.eval_loss, vec![[2.0, 1.5]]);
        assert_eq!(c.lr, vec![[1.0, 0.1], [3.0, 0.05]]);
        assert_eq!(c.last_loss(), Some(1.0));
    }

    #[test]
    fn a_folder_without_run_toml_is_not_a_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("stray")).unwrap();
        assert!(list_runs(dir.path()).is_empty());
        assert!(list_runs(&dir.path().join("missing")).is_empty());
    }
}

//! A run on disk, the part users see and keep:
//!
//! ```text
//! <runs dir>/<date-time>-<name>/
//!   run.toml           everything needed to redo the run
//!   metrics.jsonl      one JSON object per logged step and per evaluation
//!   checkpoints/step-N/  adapter (PEFT format) + optimizer.safetensors + trainer_state.json
//!   adapter/           the final adapter (PEFT format)
//! ```
//! Every file is written atomically; a checkpoint folder appears only once it is complete, and is
//! flushed to disk (files, folder and parent) before training goes on. Only the last few checkpoints are
//! kept (`keep_checkpoints`); one that cannot be read when resuming is renamed `unreadable-step-N`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::TrainConfig;
use crate::engine::error::{ModelError, Result};
use crate::engine::fsutil::{produce_dir_atomic, sync_dir, sync_parent, write_atomic};

/// run.toml: the model, the data (with a content hash, so a changed file is noticed on resume) and
/// the whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    /// As the user gave it: a folder, a .gguf file or a hub repo id.
    pub model: String,
    pub data: PathBuf,
    pub data_sha256: String,
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    #[serde(default)]
    pub eval_data_sha256: Option<String>,
    /// Fraction (below 1) or count (1 and above) of rows held out for evaluation when there is no eval file.
    pub eval_split: f64,
    /// Loss on every token instead of only the assistant's.
    #[serde(default)]
    pub train_on_all_tokens: bool,
    /// Truncate overlong conversations instead of dropping them.
    #[serde(default)]
    pub truncate_overlong: bool,
    /// Leave out the rows with errors (the user's explicit choice) instead of refusing the data.
    #[serde(default)]
    pub skip_error_rows: bool,
    pub created: String,
    pub loft_version: String,
    pub train: TrainConfig,
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The default home of runs: the platform's data folder (`~/.local/share/loft/runs` on Linux).
pub fn default_runs_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "loft")
        .map(|d| d.data_dir().join("runs"))
        .unwrap_or_else(|| PathBuf::from("loft-runs"))
}

/// UTC date and time as `YYYYMMDD-HHMMSS` (sortable folder names) from the system clock.
pub fn timestamp() -> String {
    let (y, m, d, hh, mm, ss) = crate::engine::clock::utc_now();
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
}

/// Keep folder names portable: letters, digits, '-' and '_' only.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() {
        "run".into()
    } else {
        s.chars().take(48).collect()
    }
}

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// A new run folder under `runs_dir`, with its run.toml.
    pub fn create(runs_dir: &Path, spec: &RunSpec) -> Result<RunDir> {
        std::fs::create_dir_all(runs_dir).map_err(|e| ModelError::io(runs_dir, e))?;
        let base = format!("{}-{}", timestamp(), slug(&spec.name));
        let mut path = runs_dir.join(&base);
        let mut n = 2;
        while path.exists() {
            path = runs_dir.join(format!("{base}-{n}"));
            n += 1;
        }
        std::fs::create_dir_all(&path).map_err(|e| ModelError::io(&path, e))?;
        let run = RunDir { path };
        run.write_spec(spec)?;
        Ok(run)
    }

    pub fn open(path: &Path) -> Result<(RunDir, RunSpec)> {
        let run = RunDir {
            path: path.to_path_buf(),
        };
        let spec = run.read_spec()?;
        Ok((run, spec))
    }

    pub fn spec_path(&self) -> PathBuf {
        self.path.join("run.toml")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    pub fn adapter_dir(&self) -> PathBuf {
        self.path.join("adapter")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn write_spec(&self, spec: &RunSpec) -> Result<()> {
        let path = self.spec_path();
        let text = toml::to_string_pretty(spec)
            .map_err(|e| ModelError::field(&path, "run.toml", e.to_string()))?;
        write_atomic(&path, text.as_bytes()).map_err(|e| ModelError::io(&path, e))
    }

    pub fn read_spec(&self) -> Result<RunSpec> {
        let path = self.spec_path();
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
            ModelError::Json {
                path: path.clone(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }

    /// Append one JSON line to metrics.jsonl (a line is written whole, in one call).
    pub fn log_metrics(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut line = value.to_string();
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ModelError::io(&path, e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| ModelError::io(&path, e))
    }

    /// Every metrics line, skipping a last line cut short by a crash.
    pub fn read_metrics(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.metrics_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Drop metrics logged after `step` (they belong to work lost when the run stopped), so a resumed
    /// run continues one clean curve.
    pub fn truncate_metrics_after(&self, step: usize) -> Result<()> {
        let kept: String = self
            .read_metrics()
            .into_iter()
            .filter(|m| {
                m.get("step")
                    .and_then(|s| s.as_u64())
                    .is_none_or(|s| s as usize <= step)
            })
            .map(|m| format!("{m}\n"))
            .collect();
        let path = self.metrics_path();
        write_atomic(&path, kept.as_bytes()).map_err(|e| ModelError::io(&path, e))
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(self.checkpoints_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse().ok()?;
                let path = e.path();
                path.join(TRAINER_STATE).is_file().then_some((step, path))
            })
            .collect();
        found.sort();
        found
    }

    /// Write a checkpoint: `fill` writes the files into a hidden folder, which is then renamed to
    /// `step-N` — so a checkpoint folder is complete or absent, never half-written.
    pub fn save_checkpoint(
        &self,
        step: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let dir = self.checkpoints_dir();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .and_then(|()| sync_parent(&dir))
                .map_err(|e| ModelError::io(&dir, e))?;
        }
        let done = dir.join(format!("step-{step}"));
        produce_dir_atomic(&done, true, fill, |e| ModelError::io(&done, e))?;
        Ok(done)
    }

    /// Delete the oldest checkpoints so that at most `keep` remain (0 keeps all); the newest is never
    /// deleted. Returns the steps deleted.
    pub fn prune_checkpoints(&self, keep: usize) -> Result<Vec<usize>> {
        let all = self.checkpoints();
        if keep == 0 || all.len() <= keep {
            return Ok(Vec::new());
        }
        let mut deleted = Vec::new();
        for (step, path) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(path).map_err(|e| ModelError::io(path, e))?;
            deleted.push(*step);
        }
        let dir = self.checkpoints_dir();
        sync_dir(&dir).map_err(|e| ModelError::io(&dir, e))?;
        Ok(deleted)
    }

    /// Move a checkpoint that cannot be read out of the way (to `unreadable-step-N`, replacing an older
    /// one of that name), so that it is neither resumed from nor counted as one of the kept checkpoints,
    /// yet is still there to look at.
    pub fn set_aside_checkpoint(&self, path: &Path) -> Result<PathBuf> {
        let name = path
            .file_name()
            .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
        let aside = path.with_file_name(format!("unreadable-{name}"));
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(path, &aside)
            .and_then(|()| sync_parent(&aside))
            .map_err(|e| ModelError::io(path, e))?;
        Ok(aside)
    }
}

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_portable() {
        assert_eq!(slug("My run: v2/final"), "My-run--v2-final");
        assert_eq!(slug("///"), "run");
    }

    #[test]
    fn checkpoints_appear_whole_and_metrics_truncate() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: tmp.path().to_path_buf(),
        };
        let failed = run.save_checkpoint(3, |_| Err(ModelError::Cancelled));
        assert!(failed.is_err());
        assert!(
            run.checkpoints().is_empty(),
            "a failed checkpoint leaves nothing that looks complete"
        );
        run.save_checkpoint(4, |dir| {
            std::fs::write(dir.join(TRAINER_STATE), "{}").map_err(|e| ModelError::io(dir, e))
        })
        .unwrap();
        assert_eq!(run.checkpoints().len(), 1);
        for step in 1..=6 {
            run.log_metrics(&serde_json::json!({"step": step, "loss": 1.0}))
                .unwrap();
        }
        run.truncate_metrics_after(4).unwrap();
        assert_eq!(run.read_metrics().len(), 4);
    }
}

//! What Loft remembers between launches, and how it survives upgrades. eframe keeps it (as RON) beside
//! the window's size and position. A newer Loft may have renamed, removed or retyped a setting; reading
//! an older copy must then keep everything it still can — the model, the data, every setting that still
//! fits — and say what it reset, never drop the whole state because one field changed.
//!
//! It is stored as a self-describing tree (string keys, enums as strings), so it can be read field by
//! field whatever the types have become. Copies written before this format (a RON struct) are read
//! exactly when they still match, and field by field otherwise.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::app::Page;
use super::data_page::EvalChoice;
use crate::engine::train::TrainConfig;

/// The storage key (eframe's own key for the app, so copies from earlier versions are found).
const KEY: &str = eframe::APP_KEY;

/// What Loft remembers between launches. `Config` is the training settings' type: `TrainConfig`,
/// or while reading an older copy a tree ([`Value`]) that is laid over today's defaults one setting at a
/// time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Remembered<Config = TrainConfig> {
    pub page: Page,
    pub model: Option<String>,
    pub data_files: Vec<PathBuf>,
    pub train_file: usize,
    pub eval: Option<EvalChoice>,
    pub skip_error_rows: bool,
    pub truncate_overlong: bool,
    pub train_on_all_tokens: bool,
    pub config: Option<Config>,
}

/// A remembered state as read back, with what could not be kept.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub remembered: Remembered,
    /// Settings that were reset to their defaults or ignored, in words ("config.lora.old_knob").
    pub reset: Vec<String>,
}

impl Restored {
    /// One sentence for the status bar, when something was reset.
    pub fn notice(&self) -> Option<String> {
        (!self.reset.is_empty()).then(|| {
            format!(
                "This version of Loft could not keep some remembered settings and uses its defaults for them: {}. Check the Method step.",
                self.reset.join(", ")
            )
        })
    }
}

impl Remembered {
    /// Write into eframe's storage (called from `App::save`).
    pub fn store(&self, storage: &mut dyn eframe::Storage) {
        match serde_json::to_value(self) {
            Ok(tree) => eframe::set_value(storage, KEY, &tree),
            // Plain data with string keys cannot fail to serialise; if it ever did, keep the old copy.
            Err(e) => eprintln!("warning: the window's state could not be saved: {e}"),
        }
    }

    /// Read what an earlier launch stored (None when nothing was, or it is not Loft's).
    pub fn load(storage: &dyn eframe::Storage) -> Option<Restored> {
        // A RON struct (Loft 0.1's layout) whose settings still match reads exactly…
        if let Some(exact) = eframe::get_value::<Remembered>(storage, KEY) {
            return Some(Restored {
                remembered: exact,
                reset: Vec::new(),
            });
        }
        // …one whose settings changed keeps every other field exactly and its settings one by one
        // (RON names enum values only in a typed read: a setting that is one, such as the schedule,
        // comes back from a tree without its value and keeps its default)…
        if let Some(outer) = eframe::get_value::<Remembered<Value>>(storage, KEY) {
            return Some(outer.with_lenient_config(Vec::new()));
        }
        // …and a tree (this version's layout) is read field by field.
        let tree = eframe::get_value::<Value>(storage, KEY)?;
        Some(Remembered::from_tree(&tree))
    }

    /// Keep every field that still decodes; the rest take their defaults and are listed.
    pub fn from_tree(tree: &Value) -> Restored {
        let Value::Object(fields) = tree else {
            return Restored {
                remembered: Remembered::default(),
                reset: vec!["everything (the stored state is not a set of fields)".into()],
            };
        };
        let mut reset = Vec::new();
        let mut kept = Map::new();
        for (name, value) in fields {
            let alone = Value::Object(Map::from_iter([(name.clone(), value.clone())]));
            if serde_json::from_value::<Remembered<Value>>(alone).is_ok() {
                kept.insert(name.clone(), value.clone());
            } else {
                reset.push(name.clone());
            }
        }
        match serde_json::from_value::<Remembered<Value>>(Value::Object(kept)) {
            Ok(outer) => outer.with_lenient_config(reset),
            Err(e) => Restored {
                remembered: Remembered::default(),
                reset: vec![format!("everything ({e})")],
            },
        }
    }
}

impl Remembered<Value> {
    /// The same state with its settings laid over today's defaults.
    fn with_lenient_config(self, mut reset: Vec<String>) -> Restored {
        let config = match &self.config {
            None | Some(Value::Null) => None,
            Some(stored) => Some(lenient_config(stored, &mut reset)),
        };
        let remembered = Remembered {
            page: self.page,
            model: self.model,
            data_files: self.data_files,
            train_file: self.train_file,
            eval: self.eval,
            skip_error_rows: self.skip_error_rows,
            truncate_overlong: self.truncate_overlong,
            train_on_all_tokens: self.train_on_all_tokens,
            config,
        };
        Restored { remembered, reset }
    }
}

/// The stored settings laid over today's defaults, one setting at a time: a setting this version no
/// longer has is ignored, one it gained keeps its default, and one whose type changed is reset.
fn lenient_config(stored: &Value, reset: &mut Vec<String>) -> TrainConfig {
    let defaults = TrainConfig::default();
    let Ok(mut merged) = serde_json::to_value(&defaults) else {
        return defaults;
    };
    let mut leaves = Vec::new();
    collect_leaves(stored, String::new(), &mut leaves);
    for (pointer, value) in leaves {
        let name = format!("config{}", pointer.replace('/', "."));
        let Some(slot) = merged.pointer_mut(&pointer) else {
            reset.push(format!("{name} (no longer a setting)"));
            continue;
        };
        let before = std::mem::replace(slot, value);
        if serde_json::from_value::<TrainConfig>(merged.clone()).is_err() {
            if let Some(slot) = merged.pointer_mut(&pointer) {
                *slot = before;
            }
            reset.push(name);
        }
    }
    serde_json::from_value(merged).unwrap_or(defaults)
}

/// JSON pointers to every value below `tree` that is not itself a set of fields (lists are values).
fn collect_leaves(tree: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match tree {
        Value::Object(fields) => {
            for (key, value) in fields {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                collect_leaves(value, format!("{at}/{escaped}"), out);
            }
        }
        // A whole config that is not a set of fields has no leaf to keep.
        _ if at.is_empty() => {}
        other => out.push((at, other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_config_with_a_removed_a_new_and_a_retyped_setting_keeps_the_rest() {
        let stored = json!({
            "lora": { "r": 8, "old_knob": 3, "targets": ["q_proj"] },
            "epochs": 2.0,
            "renamed_lr": 1e-3,
            "micro_batch_size": "four",
        });
        let mut reset = Vec::new();
        let config = lenient_config(&stored, &mut reset);
        let defaults = TrainConfig::default();
        assert_eq!(config.lora.r, 8);
        assert_eq!(config.lora.targets, ["q_proj"]);
        assert_eq!(config.epochs, 2.0);
        assert_eq!(config.lr, defaults.lr);
        assert_eq!(config.micro_batch_size, defaults.micro_batch_size);
        assert_eq!(config.lora.alpha, defaults.lora.alpha, "missing: default");
        assert_eq!(
            reset,
            [
                "config.lora.old_knob (no longer a setting)",
                "config.renamed_lr (no longer a setting)",
                "config.micro_batch_size",
            ]
        );
    }

    #[test]
    fn a_field_that_no_longer_decodes_resets_only_itself() {
        let tree = json!({
            "page": "NoSuchPage",
            "model": "/models/tiny",
            "data_files": ["/data/a.jsonl"],
            "eval": { "Split": 20.0 },
            "config": { "lora": { "r": 4 } },
        });
        let restored = Remembered::from_tree(&tree);
        let r = &restored.remembered;
        assert_eq!(r.page, Page::Model);
        assert_eq!(r.model.as_deref(), Some("/models/tiny"));
        assert_eq!(r.data_files, [PathBuf::from("/data/a.jsonl")]);
        assert_eq!(r.eval, Some(EvalChoice::Split(20.0)));
        assert_eq!(r.config.as_ref().map(|c| c.lora.r), Some(4));
        assert_eq!(restored.reset, ["page"]);
        assert!(restored.notice().is_some_and(|n| n.contains("page")));
    }
}

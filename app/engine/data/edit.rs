//! A new version of a dataset file with some answers corrected, some rows removed and some examples
//! added — what evaluation's failures suggest. The original is never touched: the new file gets a new
//! name (`support.v2.jsonl`), is written whole or not at all, and keeps every other record exactly as
//! it was (fields Loft does not read included), one record per line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{DataError, Format};
use crate::engine::chat::ChatMessage;
use crate::engine::fsutil::write_atomic;

/// Changes to a dataset, by row (the 1-based line of a .jsonl file, or the 0-based index of a record in
/// a .json array, as [`super::Conversation::row`] numbers them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataEdits {
    /// Row → its new final answer.
    pub answers: BTreeMap<usize, String>,
    pub removed: BTreeSet<usize>,
    /// Whole new conversations (ending with the assistant's answer), appended.
    pub added: Vec<Vec<ChatMessage>>,
}

impl DataEdits {
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.removed.is_empty() && self.added.is_empty()
    }
}

/// What a new version holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditSummary {
    pub records: usize,
    pub changed: usize,
    pub removed: usize,
    pub added: usize,
}

/// The name the next version of `path` gets: `name.v2.jsonl` for `name.json(l)`, `name.v3.jsonl` for
/// `name.v2.jsonl`, and so on past any that exist already.
pub fn next_version(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    let (base, mut version) = match stem.rsplit_once(".v") {
        Some((base, n)) if n.parse::<u32>().is_ok_and(|n| n >= 2) => {
            (base.to_string(), n.parse::<u32>().unwrap_or(1) + 1)
        }
        _ => (stem, 2),
    };
    loop {
        let candidate = path.with_file_name(format!("{base}.v{version}.jsonl"));
        if !candidate.exists() {
            return candidate;
        }
        version += 1;
    }
}

/// Write `source` with `edits` applied to `dest`, a file that must not exist yet, as JSON lines.
pub fn write_edited(
    source: &Path,
    edits: &DataEdits,
    dest: &Path,
) -> Result<EditSummary, DataError> {
    let refuse = |message: String| DataError::NotData {
        path: dest.to_path_buf(),
        offset: None,
        message,
    };
    if dest.exists() {
        return Err(refuse(
            "a file with this name exists already; Loft never overwrites a dataset — choose another name"
                .into(),
        ));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let text = std::fs::read_to_string(source).map_err(io(source))?;
    let records = records(&text).map_err(|message| DataError::NotData {
        path: source.to_path_buf(),
        offset: None,
        message,
    })?;
    let format = records
        .iter()
        .find_map(|r| r.value.as_ref().and_then(format_of))
        .unwrap_or(Format::Chat);
    let mut out = String::with_capacity(text.len() + 1024);
    let mut summary = EditSummary {
        records: 0,
        changed: 0,
        removed: 0,
        added: 0,
    };
    for record in &records {
        let row = record.row;
        if edits.removed.contains(&row) {
            summary.removed += 1;
            continue;
        }
        match (edits.answers.get(&row), &record.value) {
            (Some(answer), Some(value)) => {
                let mut value = value.clone();
                if !set_answer(&mut value, answer) {
                    return Err(refuse(format!(
                        "row {row} of {} has no answer to replace",
                        source.display()
                    )));
                }
                summary.changed += 1;
                out.push_str(&value.to_string());
            }
            _ => out.push_str(&record.line),
        }
        out.push('\n');
        summary.records += 1;
    }
    for conversation in &edits.added {
        let value = record_for(format, conversation).ok_or_else(|| {
            refuse("an added example must end with the assistant's answer".into())
        })?;
        out.push_str(&value.to_string());
        out.push('\n');
        summary.records += 1;
        summary.added += 1;
    }
    write_atomic(dest, out.as_bytes()).map_err(io(dest))?;
    Ok(summary)
}

/// One record of a file: its row, its text on one line, and its value when it is JSON.
struct Record {
    row: usize,
    line: String,
    value: Option<Value>,
}

/// The records of a file by row. A .jsonl line keeps its text exactly (one with an error too, for the
/// validator to report again); a .json array's records are written one per line.
fn records(text: &str) -> Result<Vec<Record>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            format!("not a JSON array of records ({e}); fix it with `loft validate` first")
        })?;
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(row, value)| Record {
                row,
                line: value.to_string(),
                value: Some(value),
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let line = line.trim_end_matches('\r');
            Record {
                row: i + 1,
                line: line.to_string(),
                value: serde_json::from_str(line).ok(),
            }
        })
        .collect())
}

fn format_of(value: &Value) -> Option<Format> {
    if value.get("messages").is_some() {
        Some(Format::Chat)
    } else if value.get("conversations").is_some() {
        Some(Format::Sharegpt)
    } else if value.get("instruction").is_some() {
        Some(Format::Instruction)
    } else {
        None
    }
}

/// Replace the record's final answer; false when it has none.
fn set_answer(value: &mut Value, answer: &str) -> bool {
    let (list, role_key, content_key, roles): (&str, &str, &str, &[&str]) = match format_of(value) {
        Some(Format::Instruction) => {
            value["output"] = Value::String(answer.into());
            return true;
        }
        Some(Format::Chat) => ("messages", "role", "content", &["assistant"]),
        Some(Format::Sharegpt) => ("conversations", "from", "value", &["gpt", "assistant"]),
        None => return false,
    };
    let Some(items) = value.get_mut(list).and_then(Value::as_array_mut) else {
        return false;
    };
    let last = items.iter_mut().rev().find(|m| {
        m.get(role_key)
            .and_then(Value::as_str)
            .is_some_and(|r| roles.contains(&r))
    });
    match last {
        Some(message) => {
            message[content_key] = Value::String(answer.into());
            true
        }
        None => false,
    }
}

/// A new record in the file's own format.
fn record_for(format: Format, conversation: &[ChatMessage]) -> Option<Value> {
    let (answer, prompt) = conversation.split_last()?;
    if answer.role != "assistant" {
        return None;
    }
    let text = |role: &str| {
        prompt
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    Some(match format {
        Format::Instruction => {
            let mut value = json!({"instruction": text("user"), "output": answer.content});
            let system = text("system");
            if !system.is_empty() {
                value["system"] = Value::String(system);
            }
            value
        }
        Format::Chat => json!({"messages": conversation}),
        Format::Sharegpt => {
            let turns: Vec<Value> = conversation
                .iter()
                .map(|m| {
                    let from = match m.role.as_str() {
                        "user" => "human",
                        "assistant" => "gpt",
                        other => other,
                    };
                    json!({"from": from, "value": m.content})
                })
                .collect();
            json!({ "conversations": turns })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits() -> DataEdits {
        DataEdits {
            answers: BTreeMap::from([(2, "Fixed answer.".to_string())]),
            removed: BTreeSet::from([3]),
            added: vec![vec![
                ChatMessage::new("user", "New question?"),
                ChatMessage::new("assistant", "New answer."),
            ]],
        }
    }

    #[test]
    fn a_new_version_changes_only_what_was_edited_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("chat.jsonl");
        let original = concat!(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"}], "id": 1}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}], "id": 2}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "C"}], "id": 3}"#,
            "\n",
            "{not json\n",
        );
        std::fs::write(&source, original).unwrap();
        let dest = next_version(&source);
        assert_eq!(dest, dir.path().join("chat.v2.jsonl"));
        let summary = write_edited(&source, &edits(), &dest).unwrap();
        assert_eq!(
            summary,
            EditSummary {
                records: 4,
                changed: 1,
                removed: 1,
                added: 1
            }
        );
        assert_eq!(std::fs::read_to_string(&source).unwrap(), original);
        let lines: Vec<String> = std::fs::read_to_string(&dest)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(
            lines[0],
            original.lines().next().unwrap(),
            "untouched rows stay as they were"
        );
        assert!(
            lines[1].contains(r#""content":"Fixed answer."}],"id":2"#),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2], "{not json",
            "a broken line stays for the validator"
        );
        assert!(lines[3].contains("New question?"));
        // The next version goes past the one just written; a name that exists is refused.
        assert_eq!(next_version(&dest), dir.path().join("chat.v3.jsonl"));
        let again = write_edited(&source, &edits(), &dest).unwrap_err();
        assert!(again.to_string().contains("never overwrites"), "{again}");
    }

    #[test]
    fn instruction_and_sharegpt_records_keep_their_format() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("inst.json");
        std::fs::write(
            &source,
            r#"[{"instruction": "q0", "output": "o0"}, {"instruction": "q1", "input": "x", "output": "o1"},
               {"instruction": "q2", "output": "o2"}, {"instruction": "q3", "output": "o3"}]"#,
        )
        .unwrap();
        let dest = next_version(&source);
        assert_eq!(dest, dir.path().join("inst.v2.jsonl"));
        write_edited(&source, &edits(), &dest).unwrap();
        let values: Vec<Value> = std::fs::read_to_string(&dest)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values.len(), 4);
        assert_eq!(values[2]["output"], "Fixed answer.");
        assert_eq!(
            values[3],
            json!({"instruction": "New question?", "output": "New answer."})
        );

        let mut turns = json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "old"}]});
        assert!(set_answer(&mut turns, "new"));
        assert_eq!(turns["conversations"][1]["value"], "new");
        assert!(!set_answer(
            &mut json!({"messages": [{"role": "user", "content": "x"}]}),
            "y"
        ));
    }
}

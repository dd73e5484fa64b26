//! Validation: read every record, turn it into a conversation, check it on its own (fields, roles, empty
//! answers…) and against the others (duplicates, near-duplicates, contradictions, outlier lengths), and
//! gather statistics. Cross-row checks keep one small fixed-size summary per row (hashes and lengths),
//! never a second copy of the text.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::read::{read_records, Event, ReadOptions};
use super::record::{interpret, Parsed, Problem};
use super::report::{
    Distribution, ErrorKind, Findings, Histogram, RowError, ValidationReport, Warning, WarningKind,
};
use super::{Conversation, DataError, Dataset, Format, Layout, Progress, RowNumbering, Stage};
use crate::engine::chat::ChatMessage;

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The largest single record (one line of .jsonl, one element of a .json array), in bytes.
    pub max_record_bytes: usize,
    /// At most this many findings of each kind are listed (all are counted).
    pub max_listed: usize,
    /// Keep the conversations in memory for encoding (off: validation only, memory independent of file size).
    pub keep_conversations: bool,
    /// Keep exact duplicates instead of removing them (they are reported either way).
    pub keep_duplicates: bool,
    /// Fewer usable rows than this gets a warning.
    pub few_rows: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            max_record_bytes: 16 << 20,
            max_listed: super::MAX_LISTED,
            keep_conversations: true,
            keep_duplicates: false,
            few_rows: 100,
        }
    }
}

/// The report, and the usable conversations (empty when `keep_conversations` was off).
#[derive(Debug, Clone)]
pub struct Validated {
    pub report: ValidationReport,
    pub dataset: Dataset,
}

/// Validate a .json or .jsonl file. `Err` only when the file cannot be read at all (missing, a folder,
/// binary, another file type, an I/O failure) or on cancel; everything else is a finding in the report.
pub fn validate_file(
    path: &Path,
    options: &ValidateOptions,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Validated, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return Err(DataError::NotData {
            path: path.to_path_buf(),
            offset: None,
            message: "this is a folder; pick a .json or .jsonl file".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    validate_reader(file, path, Some(meta.len()), options, progress, cancel)
}

/// What is kept of each row for the checks across rows.
struct RowInfo {
    row: usize,
    line: u64,
    format: Format,
    usable: bool,
    exact: u64,
    near: u64,
    prompt: u64,
    answer: u64,
    chars: u64,
    answer_chars: u64,
    turns: u32,
    roles: [u32; 3],
    /// Index into the kept conversations.
    conversation: Option<usize>,
}

/// Validate records from any reader; `path` names them in messages.
pub fn validate_reader<R: Read>(
    reader: R,
    path: &Path,
    size: Option<u64>,
    options: &ValidateOptions,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Validated, DataError> {
    let mut report = ValidationReport::new(path.to_path_buf());
    let mut findings = Findings::new(options.max_listed.max(1));
    let mut infos: Vec<RowInfo> = Vec::new();
    let mut conversations: Vec<Conversation> = Vec::new();
    let mut rows = 0usize;
    let mut error_rows = 0usize;
    let mut scratch = Vec::new();

    let read_options = ReadOptions {
        max_record_bytes: options.max_record_bytes.max(1),
    };
    let mut sink = |event: Event| -> bool {
        match event {
            Event::Problem(error) => {
                if error.row.is_some() {
                    rows += 1;
                    error_rows += 1;
                }
                findings.error(error);
            }
            Event::Record { row, line, json } => {
                rows += 1;
                for key in json.duplicate_keys() {
                    findings.warn(Warning {
                        kind: WarningKind::DuplicateKey,
                        rows: vec![row],
                        line: Some(line),
                        message: format!(
                            "the key `{}` appears twice in one object; the last value is used (as Python's json does) — remove the other",
                            key.rsplit('.').next().unwrap_or(&key)
                        ),
                        field: Some(key),
                    });
                }
                let (format, parsed) = interpret(&json);
                drop(json);
                let row_error = |p: Problem| RowError {
                    kind: p.kind,
                    row: Some(row),
                    line: Some(line),
                    column: None,
                    offset: None,
                    field: p.field,
                    message: p.message,
                };
                let parsed = match parsed.and_then(|p| {
                    let problems = conversation_errors(&p, format);
                    if problems.is_empty() {
                        Ok(p)
                    } else {
                        Err(problems)
                    }
                }) {
                    Ok(p) => p,
                    Err(problems) => {
                        error_rows += 1;
                        for p in problems {
                            findings.error(row_error(p));
                        }
                        if let Some(format) = format {
                            infos.push(RowInfo::unusable(row, line, format));
                        }
                        return true;
                    }
                };
                let Some(format) = format else {
                    return true;
                };
                for (kind, field, message) in conversation_warnings(&parsed) {
                    findings.warn(Warning {
                        kind,
                        rows: vec![row],
                        line: Some(line),
                        field,
                        message,
                    });
                }
                let mut info = summarize(row, line, format, &parsed.messages, &mut scratch);
                if options.keep_conversations {
                    info.conversation = Some(conversations.len());
                    conversations.push(Conversation {
                        row,
                        line,
                        format,
                        messages: parsed.messages,
                    });
                }
                infos.push(info);
            }
        }
        true
    };
    let layout = read_records(
        reader,
        path,
        size,
        &read_options,
        &mut sink,
        progress,
        cancel,
    )?;
    // Rows are numbered by line in .jsonl files and by array index in .json files.
    let numbering = if layout == Some(Layout::Json) {
        RowNumbering::Index
    } else {
        RowNumbering::Line
    };
    report.layout = layout;
    report.numbering = numbering;

    // The file's format is its most common one; rows in another format are errors.
    let mut counts: Vec<(Format, usize, usize)> = Vec::new(); // format, count, first position
    for (i, info) in infos.iter().enumerate() {
        match counts.iter_mut().find(|(f, _, _)| *f == info.format) {
            Some(entry) => entry.1 += 1,
            None => counts.push((info.format, 1, i)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    let format = counts.first().map(|c| c.0);
    report.format = format;
    if let Some(main) = format {
        if counts.len() > 1 {
            let main_count = counts[0].1;
            for info in infos.iter_mut().filter(|i| i.format != main) {
                if info.usable {
                    info.usable = false;
                    error_rows += 1;
                }
                findings.error(RowError {
                    kind: ErrorKind::MixedFormats,
                    row: Some(info.row),
                    line: Some(info.line),
                    column: None,
                    offset: None,
                    field: None,
                    message: format!(
                        "this record is in {} format but most of the file ({main_count} rows) is {}; one file must use one format — convert this row, or move it to a file of its own",
                        info.format.label(),
                        main.label()
                    ),
                });
            }
        }
    }

    // Duplicates, near-duplicates and contradictions, in file order.
    (progress)(Progress {
        stage: Stage::Checking,
        done: 0,
        total: Some(infos.len() as u64),
    });
    let mut removed = vec![false; infos.len()];
    let mut exact_seen: HashMap<u64, usize> = HashMap::new();
    let mut near_seen: HashMap<u64, usize> = HashMap::new();
    let mut prompt_seen: HashMap<u64, (u64, usize)> = HashMap::new();
    let mut duplicates_removed = 0usize;
    for (i, info) in infos.iter().enumerate() {
        if i % 65536 == 0 && cancel.load(Ordering::Relaxed) {
            return Err(DataError::Cancelled);
        }
        if !info.usable {
            continue;
        }
        if let Some(&first) = exact_seen.get(&info.exact) {
            let action = if options.keep_duplicates {
                "kept, as asked"
            } else {
                duplicates_removed += 1;
                removed[i] = true;
                "removed (the first copy is kept)"
            };
            findings.warn(Warning {
                kind: WarningKind::Duplicate,
                rows: vec![info.row, first],
                line: Some(info.line),
                field: None,
                message: format!(
                    "repeats {} exactly; this copy is {action}. Repeated rows make the model over-learn them",
                    numbering.name(first)
                ),
            });
            continue;
        }
        exact_seen.insert(info.exact, info.row);
        if let Some(&first) = near_seen.get(&info.near) {
            findings.warn(Warning {
                kind: WarningKind::NearDuplicate,
                rows: vec![info.row, first],
                line: Some(info.line),
                field: None,
                message: format!(
                    "is the same as {} apart from case, spacing or punctuation; near-copies make the model over-learn one example — keep one",
                    numbering.name(first)
                ),
            });
            continue;
        }
        near_seen.insert(info.near, info.row);
        match prompt_seen.get(&info.prompt) {
            Some(&(answer, first)) if answer != info.answer => {
                findings.warn(Warning {
                    kind: WarningKind::Contradiction,
                    rows: vec![info.row, first],
                    line: Some(info.line),
                    field: None,
                    message: format!(
                        "asks the same as {} but gets a different answer; the model learns a blend of both — keep the right one, or make the prompts say what differs (if varied answers are intended, ignore this)",
                        numbering.name(first)
                    ),
                });
            }
            Some(_) => {}
            None => {
                prompt_seen.insert(info.prompt, (info.answer, info.row));
            }
        }
    }
    drop((exact_seen, near_seen, prompt_seen));

    let kept: Vec<&RowInfo> = infos
        .iter()
        .zip(&removed)
        .filter(|(info, removed)| info.usable && !**removed)
        .map(|(info, _)| info)
        .collect();

    // Outlier lengths, against the medians of this file.
    let chars: Vec<u64> = kept.iter().map(|i| i.chars).collect();
    let answers: Vec<u64> = kept.iter().map(|i| i.answer_chars).collect();
    let char_dist = Distribution::of(&chars);
    let answer_dist = Distribution::of(&answers);
    if let (Some(cd), Some(ad)) = (&char_dist, &answer_dist) {
        for info in &kept {
            if info.chars > 4000 && info.chars > 8 * cd.median {
                findings.warn(Warning {
                    kind: WarningKind::ExtremeLength,
                    rows: vec![info.row],
                    line: Some(info.line),
                    field: None,
                    message: format!(
                        "very long: {} characters, {:.0}× the median conversation ({}); it may not fit the model's context and dominates its batches — check it is one real conversation, or shorten it",
                        info.chars,
                        info.chars as f64 / cd.median.max(1) as f64,
                        cd.median
                    ),
                });
            } else if ad.median >= 100 && info.answer_chars * 20 < ad.median {
                findings.warn(Warning {
                    kind: WarningKind::ExtremeLength,
                    rows: vec![info.row],
                    line: Some(info.line),
                    field: None,
                    message: format!(
                        "a very short answer: {} characters where answers are usually about {}; check it is complete",
                        info.answer_chars, ad.median
                    ),
                });
            }
        }
    }
    let usable = kept.len();
    if usable > 0 && usable < options.few_rows {
        findings.warn(Warning {
            kind: WarningKind::FewRows,
            rows: Vec::new(),
            line: None,
            field: None,
            message: format!(
                "only {usable} usable rows; LoRA usually needs a few hundred good, varied examples to change behaviour reliably (a few dozen can teach a format or tone) — add more if you can"
            ),
        });
    }

    // Statistics.
    let turns: Vec<u64> = kept.iter().map(|i| i.turns as u64).collect();
    let stats = &mut report.stats;
    stats.rows = rows;
    stats.usable_rows = usable;
    stats.duplicates_removed = duplicates_removed;
    stats.turns = Distribution::of(&turns);
    stats.characters = char_dist;
    stats.histogram = Histogram::of(&chars, "characters", 30, None);
    for info in &kept {
        stats.roles.system += info.roles[0] as usize;
        stats.roles.user += info.roles[1] as usize;
        stats.roles.assistant += info.roles[2] as usize;
    }

    let keep_index: Vec<bool> = {
        let mut keep = vec![false; conversations.len()];
        for info in &kept {
            if let Some(c) = info.conversation {
                keep[c] = true;
            }
        }
        keep
    };
    let mut k = keep_index.iter();
    conversations.retain(|_| *k.next().unwrap_or(&false));

    let Findings {
        mut errors,
        mut warnings,
        error_counts,
        warning_counts,
        ..
    } = findings;
    errors.sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    warnings.sort_by_key(|w| (w.kind, w.rows.first().copied().unwrap_or(0)));
    report.rows = rows;
    report.usable_rows = usable;
    report.error_rows = error_rows;
    report.errors = errors;
    report.warnings = warnings;
    report.error_counts = error_counts;
    report.warning_counts = warning_counts;
    Ok(Validated {
        dataset: Dataset {
            path: path.to_path_buf(),
            format,
            numbering,
            conversations,
        },
        report,
    })
}

/// Warn, in the evaluation file's report, about its rows that are also in the training data (exactly, or
/// apart from case, spacing and punctuation): evaluating on rows the model trained on overstates how well
/// it does.
pub fn warn_overlap(train: &Dataset, eval: &Dataset, eval_report: &mut ValidationReport) {
    let mut scratch = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(train.len());
    for c in &train.conversations {
        let h = summarize(c.row, c.line, c.format, &c.messages, &mut scratch).near;
        seen.entry(h).or_insert(c.row);
    }
    let cap = 1000;
    for c in &eval.conversations {
        let h = summarize(c.row, c.line, c.format, &c.messages, &mut scratch).near;
        if let Some(&train_row) = seen.get(&h) {
            let n = eval_report
                .warning_counts
                .entry(WarningKind::EvalOverlap)
                .or_insert(0);
            *n += 1;
            if *n <= cap {
                eval_report.warnings.push(Warning {
                    kind: WarningKind::EvalOverlap,
                    rows: vec![c.row, train_row],
                    line: Some(c.line),
                    field: None,
                    message: format!(
                        "also in the training data ({} of {}); evaluating on rows the model trained on overstates how well it does — remove it from one of the files",
                        train.numbering.name(train_row),
                        train.path.display()
                    ),
                });
            }
        }
    }
    eval_report
        .warnings
        .sort_by_key(|w| (w.kind, w.rows.first().copied().unwrap_or(0)));
}

impl RowInfo {
    fn unusable(row: usize, line: u64, format: Format) -> RowInfo {
        RowInfo {
            row,
            line,
            format,
            usable: false,
            exact: 0,
            near: 0,
            prompt: 0,
            answer: 0,
            chars: 0,
            answer_chars: 0,
            turns: 0,
            roles: [0; 3],
            conversation: None,
        }
    }
}

fn list_field(format: Option<Format>) -> &'static str {
    match format {
        Some(Format::Sharegpt) => "conversations",
        Some(Format::Instruction) => "output",
        _ => "messages",
    }
}

/// Problems that make a well-formed conversation useless for training.
fn conversation_errors(p: &Parsed, format: Option<Format>) -> Vec<Problem> {
    let mut problems = Vec::new();
    if p.messages.is_empty() {
        problems.push(Problem {
            kind: ErrorKind::NoAssistant,
            field: Some(list_field(format).into()),
            message: "the conversation has no messages; add a user message and the assistant's answer, or remove the row".into(),
        });
        return problems;
    }
    if !p.messages.iter().any(|m| m.role == "assistant") {
        let assistant = if format == Some(Format::Sharegpt) {
            "gpt"
        } else {
            "assistant"
        };
        problems.push(Problem {
            kind: ErrorKind::NoAssistant,
            field: Some(list_field(format).into()),
            message: format!(
                "no {assistant} message: there is nothing for the model to learn; add the answer as an {assistant} message, or remove the row"
            ),
        });
    }
    for (m, field) in p.messages.iter().zip(&p.fields) {
        if m.role == "assistant" && m.content.trim().is_empty() {
            problems.push(Problem {
                kind: ErrorKind::EmptyAssistant,
                field: Some(field.clone()),
                message: "the answer is empty; training on it teaches the model to say nothing — write the answer, or remove the row".into(),
            });
        }
    }
    problems
}

fn is_suspicious_char(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t' | '\r')) || c == '\u{FFFD}'
}

/// Advice about one conversation: (kind, field, message).
fn conversation_warnings(p: &Parsed) -> Vec<(WarningKind, Option<String>, String)> {
    let mut out = Vec::new();
    let msgs = &p.messages;
    let field = |i: usize| Some(p.fields[i].clone());
    if let Some(last) = msgs.last() {
        if last.role == "user" {
            out.push((
                WarningKind::EndsWithUser,
                field(msgs.len() - 1),
                "the conversation ends on a user message that nothing answers; it teaches nothing (only assistant turns are trained) — add the answer, or remove that message".to_string(),
            ));
        }
    }
    let same: Vec<usize> = (1..msgs.len())
        .filter(|&i| msgs[i].role == msgs[i - 1].role)
        .collect();
    if let Some(&i) = same.first() {
        let more = if same.len() > 1 {
            format!(" ({} times in this conversation)", same.len())
        } else {
            String::new()
        };
        out.push((
            WarningKind::ConsecutiveRoles,
            field(i),
            format!(
                "two {} messages in a row{more}; chat templates expect turns to alternate, and some refuse such conversations — merge them into one message",
                msgs[i].role
            ),
        ));
    }
    if let Some(i) = (1..msgs.len()).find(|&i| msgs[i].role == "system") {
        out.push((
            WarningKind::RoleOrder,
            field(i),
            "a system message after the start; chat templates place the system message first — move it to the start".to_string(),
        ));
    }
    if let Some(i) = msgs.iter().position(|m| m.role != "system") {
        if msgs[i].role == "assistant" {
            out.push((
                WarningKind::RoleOrder,
                field(i),
                "the conversation starts with the assistant, before any user message; many chat templates expect the user first — add the user's message before it".to_string(),
            ));
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" && m.content.trim().is_empty() {
            let what = if m.role == "system" {
                "system message"
            } else {
                "user message"
            };
            out.push((
                WarningKind::EmptyInput,
                field(i),
                format!("an empty {what}: the model learns to answer nothing in particular — write it, or remove it"),
            ));
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        if let Some((at, c)) = first_suspicious_char(&m.content) {
            let message = if c == '\u{FFFD}' {
                format!("contains U+FFFD (the replacement character �) at character {}: the text was decoded with the wrong encoding at some point — fix it at the source", at + 1)
            } else {
                format!(
                    "contains the control character U+{:04X} at character {}: usually left over from a broken export — remove it",
                    c as u32,
                    at + 1
                )
            };
            out.push((WarningKind::ControlCharacters, field(i), message));
            break;
        }
    }
    out
}

/// The text normalised for near-duplicate detection: lowercase, with punctuation and whitespace runs as
/// one separator. ASCII takes a fast path on bytes.
pub(crate) fn normalised_into(text: &str, out: &mut Vec<u8>) {
    out.clear();
    let bytes = text.as_bytes();
    let mut gap = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            i += 1;
            if b.is_ascii_alphanumeric() {
                if gap && !out.is_empty() {
                    out.push(b' ');
                }
                gap = false;
                out.push(b.to_ascii_lowercase());
            } else {
                gap = true;
            }
            continue;
        }
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(b' ');
            }
            gap = false;
            for lower in c.to_lowercase() {
                let mut buf = [0u8; 4];
                out.extend_from_slice(lower.encode_utf8(&mut buf).as_bytes());
            }
        } else {
            gap = true;
        }
    }
}

/// The first control character (other than tab and newlines) or U+FFFD in `text`: (character index, char).
fn first_suspicious_char(text: &str) -> Option<(usize, char)> {
    // Fast path on bytes: C0 controls and DEL are single bytes, C1 controls start with C2, U+FFFD with EF.
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b < 0x20 || b == 0x7F || b == 0xC2 || b == 0xEF)
    {
        return None;
    }
    text.chars()
        .enumerate()
        .find(|(_, c)| is_suspicious_char(*c))
}

fn summarize(
    row: usize,
    line: u64,
    format: Format,
    messages: &[ChatMessage],
    scratch: &mut Vec<u8>,
) -> RowInfo {
    let mut exact = DefaultHasher::new();
    let mut near = DefaultHasher::new();
    let mut prompt = 0u64;
    let mut answer = 0u64;
    let mut chars = 0u64;
    let mut answer_chars = 0u64;
    let mut roles = [0u32; 3];
    let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
    for (i, m) in messages.iter().enumerate() {
        if Some(i) == last_assistant {
            prompt = near.clone().finish();
        }
        exact.write(m.role.as_bytes());
        exact.write_u8(0xFF);
        exact.write(m.content.as_bytes());
        exact.write_u8(0xFE);
        normalised_into(&m.content, scratch);
        near.write(m.role.as_bytes());
        near.write_u8(0xFF);
        near.write(scratch);
        near.write_u8(0xFE);
        if Some(i) == last_assistant {
            let mut h = DefaultHasher::new();
            h.write(scratch);
            answer = h.finish();
        }
        let n = m.content.chars().count() as u64;
        chars += n;
        match m.role.as_str() {
            "system" => roles[0] += 1,
            "user" => roles[1] += 1,
            _ => {
                roles[2] += 1;
                answer_chars += n;
            }
        }
    }
    RowInfo {
        row,
        line,
        format,
        usable: true,
        exact: exact.finish(),
        near: near.finish(),
        prompt,
        answer,
        chars,
        answer_chars,
        turns: messages.len() as u32,
        roles,
        conversation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_spacing_and_punctuation() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        normalised_into("Hello,   World!", &mut a);
        normalised_into("hello world", &mut b);
        assert_eq!(a, b);
        normalised_into("  ¿Qué TAL?  ", &mut a);
        assert_eq!(a, "qué tal".as_bytes());
    }

    #[test]
    fn suspicious_characters_are_found_by_character_index() {
        assert_eq!(first_suspicious_char("plain\ttext\r\n"), None);
        assert_eq!(first_suspicious_char("ab\u{7}"), Some((2, '\u{7}')));
        assert_eq!(first_suspicious_char("éé\u{85}"), Some((2, '\u{85}')));
        assert_eq!(first_suspicious_char("x\u{fffd}"), Some((1, '\u{fffd}')));
        assert_eq!(first_suspicious_char("\u{7f}"), Some((0, '\u{7f}')));
        assert_eq!(first_suspicious_char("日本語 ¢"), None);
    }
}

//! What validation found: errors (block training), warnings (advise), and statistics — plain data the
//! CLI prints and the app shows. Every finding names its row and field and says what to do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{Format, Layout, RowNumbering};

/// Problems that block training: the row (or the file) cannot be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file cannot be read at all (missing, a folder, binary, UTF-16, another file type).
    Unreadable,
    /// The file holds no records (zero bytes, only whitespace, or `[]`).
    Empty,
    /// Not valid JSON: a syntax error, NaN/Infinity, a raw control character in a string, too deep.
    InvalidJson,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// The file is not an array of records nor one record per line.
    TopLevelShape,
    /// A .json array was cut off: the file ends before its closing `]`.
    Truncated,
    /// Something other than whitespace after the closing `]` of a .json array.
    TrailingContent,
    /// A record larger than the limit for one record (16 MiB by default).
    RecordTooLarge,
    /// A record that is not a JSON object.
    RecordShape,
    /// A record in none of the formats Loft reads.
    UnknownFormat,
    /// A record with the fields of two formats at once.
    AmbiguousFormat,
    /// Records of different formats in one file.
    MixedFormats,
    MissingField,
    WrongType,
    UnknownRole,
    /// A conversation without any assistant message: nothing to learn.
    NoAssistant,
    /// An assistant message with no text: it would teach the model to say nothing.
    EmptyAssistant,
    /// The model's chat template failed on this conversation, or hides where the assistant turns are.
    Template,
    /// More problems than Loft lists; reading stopped.
    TooManyErrors,
}

/// Findings that do not block training but usually make the result worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A row identical to an earlier one (removed; the first copy is kept).
    Duplicate,
    /// A row equal to an earlier one once case, whitespace and punctuation are ignored.
    NearDuplicate,
    /// The same prompt with a different answer.
    Contradiction,
    /// The conversation ends on a user message, which nothing answers.
    EndsWithUser,
    /// Two messages in a row from the same role.
    ConsecutiveRoles,
    /// A system message after the start, or a conversation that starts with the assistant.
    RoleOrder,
    /// An empty user message, instruction or system message.
    EmptyInput,
    /// Control characters or U+FFFD replacement characters in text.
    ControlCharacters,
    /// The same key twice in one JSON object (the last one is used).
    DuplicateKey,
    /// A conversation far longer than the rest, or an answer far shorter.
    ExtremeLength,
    /// Conversations longer than the maximum sequence length.
    TooLong,
    /// Conversations that keep no trained token after truncation.
    NothingToLearn,
    /// Evaluation rows that are also in the training data.
    EvalOverlap,
    /// Fewer rows than LoRA usually needs.
    FewRows,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Unreadable => "unreadable file",
            ErrorKind::Empty => "no records",
            ErrorKind::InvalidJson => "invalid JSON",
            ErrorKind::InvalidUtf8 => "invalid UTF-8",
            ErrorKind::TopLevelShape => "wrong file shape",
            ErrorKind::Truncated => "truncated file",
            ErrorKind::TrailingContent => "content after the data",
            ErrorKind::RecordTooLarge => "record too large",
            ErrorKind::RecordShape => "record is not an object",
            ErrorKind::UnknownFormat => "unknown record format",
            ErrorKind::AmbiguousFormat => "two formats in one record",
            ErrorKind::MixedFormats => "mixed formats",
            ErrorKind::MissingField => "missing field",
            ErrorKind::WrongType => "wrong type",
            ErrorKind::UnknownRole => "unknown role",
            ErrorKind::NoAssistant => "no assistant turn",
            ErrorKind::EmptyAssistant => "empty assistant message",
            ErrorKind::Template => "chat template",
            ErrorKind::TooManyErrors => "too many errors",
        }
    }
}

impl WarningKind {
    pub fn label(self) -> &'static str {
        match self {
            WarningKind::Duplicate => "exact duplicates",
            WarningKind::NearDuplicate => "near-duplicates",
            WarningKind::Contradiction => "contradictions",
            WarningKind::EndsWithUser => "ends on a user turn",
            WarningKind::ConsecutiveRoles => "consecutive same-role turns",
            WarningKind::RoleOrder => "unusual role order",
            WarningKind::EmptyInput => "empty inputs",
            WarningKind::ExtremeLength => "extreme lengths",
            WarningKind::FewRows => "few rows",
            WarningKind::ControlCharacters => "control characters",
            WarningKind::DuplicateKey => "duplicate keys",
            WarningKind::TooLong => "longer than the maximum sequence length",
            WarningKind::NothingToLearn => "nothing left to learn",
            WarningKind::EvalOverlap => "evaluation rows also in the training data",
        }
    }
}

/// One problem that blocks training. `row` is the record (see [`RowNumbering`]); `None` for the file as a whole.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowError {
    pub kind: ErrorKind,
    pub row: Option<usize>,
    /// 1-based line in the file.
    pub line: Option<u64>,
    /// 1-based column, counted in characters.
    pub column: Option<u64>,
    /// Byte offset from the start of the file (for encoding problems).
    pub offset: Option<u64>,
    /// Where in the record: `messages[2].content`, `output`…
    pub field: Option<String>,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// One piece of advice. `rows` are the rows involved (for duplicates: the copy, then the earlier row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub rows: Vec<usize>,
    pub line: Option<u64>,
    pub field: Option<String>,
    pub message: String,
}

/// min / median / p95 / max (nearest-rank percentiles) and the mean of a set of lengths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub min: u64,
    pub median: u64,
    pub p95: u64,
    pub max: u64,
    pub mean: f64,
    pub total: u64,
}

impl Distribution {
    pub fn of(values: &[u64]) -> Option<Distribution> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let total: u64 = sorted.iter().sum();
        Some(Distribution {
            count: sorted.len(),
            min: sorted[0],
            median: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            max: sorted[sorted.len() - 1],
            mean: total as f64 / sorted.len() as f64,
            total,
        })
    }
}

/// Nearest-rank percentile of sorted values (the default value, e.g. 0, when there are none).
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Lengths in equal bins from 0: bin `i` counts lengths in `[i·bin_width, (i+1)·bin_width)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// "characters" or "tokens".
    pub unit: String,
    pub bin_width: u64,
    pub counts: Vec<u64>,
    /// A limit worth drawing on the plot (the maximum sequence length), if any.
    pub limit: Option<u64>,
}

impl Histogram {
    /// At most `max_bins` bins of a round width (1, 2 or 5 × 10ⁿ).
    pub fn of(
        values: &[u64],
        unit: &str,
        max_bins: usize,
        limit: Option<u64>,
    ) -> Option<Histogram> {
        let max = *values.iter().max()?;
        let max_bins = max_bins.max(1) as u64;
        let mut width = 1u64;
        'search: for exp in 0..20u32 {
            for m in [1u64, 2, 5] {
                width = m.saturating_mul(10u64.saturating_pow(exp));
                if max / width < max_bins {
                    break 'search;
                }
            }
        }
        let mut counts = vec![0u64; (max / width + 1) as usize];
        for &v in values {
            counts[(v / width) as usize] += 1;
        }
        Some(Histogram {
            unit: unit.to_string(),
            bin_width: width,
            counts,
            limit,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoleCounts {
    pub system: usize,
    pub user: usize,
    pub assistant: usize,
}

/// What encoding with a model's tokenizer and chat template found (present when a model was given).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodeSummary {
    pub max_seq_len: usize,
    /// "assistant" (only assistant tokens carry loss) or "all".
    pub train_on: String,
    /// "drop" or "truncate": what happens to rows longer than `max_seq_len`.
    pub overlong: String,
    /// Rows turned into tokens.
    pub encoded_rows: usize,
    /// Rows longer than `max_seq_len` before any truncation.
    pub over_max_seq_len: usize,
    pub dropped: usize,
    pub truncated: usize,
    /// Rows the chat template could not render.
    pub failed: usize,
    /// Tokens that will be trained on (after truncation and drops).
    pub tokens: u64,
    /// Tokens that carry loss.
    pub trained_tokens: u64,
    /// Share of padding when batching rows of similar length (and in random order, for comparison).
    pub batch_size: usize,
    pub padding_waste: Option<f64>,
    pub padding_waste_random_order: Option<f64>,
}

/// The train/eval split as it will be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSummary {
    /// "fraction", "count" or "file".
    pub method: String,
    pub seed: u64,
    pub train_rows: usize,
    pub eval_rows: usize,
    pub eval_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub rows: usize,
    pub usable_rows: usize,
    pub duplicates_removed: usize,
    /// Messages per conversation.
    pub turns: Option<Distribution>,
    /// Characters per conversation (all message contents).
    pub characters: Option<Distribution>,
    /// Tokens per conversation as the model will see them (with a model).
    pub tokens: Option<Distribution>,
    pub roles: RoleCounts,
    /// Conversation lengths, in tokens when a model was given, else in characters.
    pub histogram: Option<Histogram>,
    pub encoding: Option<EncodeSummary>,
    pub split: Option<SplitSummary>,
}

/// Everything validation found about one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub path: PathBuf,
    /// "json" (an array of records) or "jsonl" (one record per line); null when unreadable.
    pub layout: Option<Layout>,
    /// What `row` means: "line" (1-based line, .jsonl) or "index" (0-based array index, .json).
    pub numbering: RowNumbering,
    pub format: Option<Format>,
    /// Records read, with or without errors.
    pub rows: usize,
    /// Rows that will be trained on: no errors, duplicates removed.
    pub usable_rows: usize,
    /// Rows with at least one error.
    pub error_rows: usize,
    /// Set when the file cannot be read at all (the CLI exits with 2).
    pub fatal: Option<String>,
    /// Errors, in row order; at most `max_listed` of each kind (see `error_counts` for all).
    pub errors: Vec<RowError>,
    pub warnings: Vec<Warning>,
    pub error_counts: BTreeMap<ErrorKind, usize>,
    pub warning_counts: BTreeMap<WarningKind, usize>,
    pub stats: Stats,
}

impl ValidationReport {
    pub(crate) fn new(path: PathBuf) -> ValidationReport {
        ValidationReport {
            path,
            layout: None,
            numbering: RowNumbering::Line,
            format: None,
            rows: 0,
            usable_rows: 0,
            error_rows: 0,
            fatal: None,
            errors: Vec::new(),
            warnings: Vec::new(),
            error_counts: BTreeMap::new(),
            warning_counts: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// The report of a file that cannot be read at all.
    pub fn unreadable(path: PathBuf, error: &super::DataError) -> ValidationReport {
        let mut report = ValidationReport::new(path);
        let message = error.to_string();
        report.fatal = Some(message.clone());
        report.error_counts.insert(ErrorKind::Unreadable, 1);
        report.errors.push(RowError {
            kind: ErrorKind::Unreadable,
            row: None,
            line: None,
            column: None,
            offset: error.offset(),
            field: None,
            message,
        });
        report
    }

    /// No errors: the data can be trained on as it is (warnings allowed).
    pub fn is_usable(&self) -> bool {
        self.fatal.is_none() && self.error_counts.is_empty() && self.usable_rows > 0
    }

    /// Whether training may start. With `skip_error_rows` the rows with errors are left out — the user's
    /// explicit choice — but problems with the file as a whole (cut off, unreadable) still block.
    pub fn check_trainable(&self, skip_error_rows: bool) -> Result<(), super::DataError> {
        let total: usize = self.error_counts.values().sum();
        if self.fatal.is_some() {
            return Err(super::DataError::Blocked {
                errors: total,
                reason: "the file cannot be read".into(),
            });
        }
        let file_level = self.errors.iter().any(|e| e.row.is_none());
        if total > 0 && (!skip_error_rows || file_level) {
            let reason = if file_level {
                "the file as a whole has a problem; fix it and validate again".into()
            } else {
                "fix the rows with errors, or choose to skip them".into()
            };
            return Err(super::DataError::Blocked {
                errors: total,
                reason,
            });
        }
        if self.usable_rows == 0 {
            return Err(super::DataError::Blocked {
                errors: total,
                reason: "no usable rows".into(),
            });
        }
        Ok(())
    }

    /// All errors found, listed or not.
    pub fn error_count(&self) -> usize {
        self.error_counts.values().sum()
    }

    pub fn warning_count(&self) -> usize {
        self.warning_counts.values().sum()
    }

    /// "line 12" or "record [3]", as rows are numbered in this file.
    pub fn row_name(&self, row: usize) -> String {
        self.numbering.name(row)
    }
}

/// Collects findings, listing at most `cap` of each kind while counting them all.
#[derive(Debug)]
pub(crate) struct Findings {
    pub cap: usize,
    pub errors: Vec<RowError>,
    pub warnings: Vec<Warning>,
    pub error_counts: BTreeMap<ErrorKind, usize>,
    pub warning_counts: BTreeMap<WarningKind, usize>,
}

impl Findings {
    pub fn new(cap: usize) -> Findings {
        Findings {
            cap,
            errors: Vec::new(),
            warnings: Vec::new(),
            error_counts: BTreeMap::new(),
            warning_counts: BTreeMap::new(),
        }
    }

    pub fn error(&mut self, error: RowError) {
        let n = self.error_counts.entry(error.kind).or_insert(0);
        *n += 1;
        if *n <= self.cap {
            self.errors.push(error);
        }
    }

    pub fn warn(&mut self, warning: Warning) {
        let n = self.warning_counts.entry(warning.kind).or_insert(0);
        *n += 1;
        if *n <= self.cap {
            self.warnings.push(warning);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let d = Distribution::of(&[5, 1, 4, 2, 3]).unwrap();
        assert_eq!((d.min, d.median, d.p95, d.max, d.total), (1, 3, 5, 5, 15));
        let v: Vec<u64> = (1..=100).collect();
        let d = Distribution::of(&v).unwrap();
        assert_eq!((d.median, d.p95), (50, 95));
        assert!(Distribution::of(&[]).is_none());
    }

    #[test]
    fn histogram_uses_round_bins() {
        let h = Histogram::of(&[0, 5, 99, 250], "characters", 30, None).unwrap();
        assert_eq!(h.bin_width, 10);
        assert_eq!(h.counts.len(), 26);
        assert_eq!(h.counts.iter().sum::<u64>(), 4);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[25], 1);
    }

    #[test]
    fn findings_are_capped_but_counted() {
        let mut f = Findings::new(2);
        for row in 0..5 {
            f.warn(Warning {
                kind: WarningKind::Duplicate,
                rows: vec![row],
                line: None,
                field: None,
                message: String::new(),
            });
        }
        assert_eq!(f.warnings.len(), 2);
        assert_eq!(f.warning_counts[&WarningKind::Duplicate], 5);
    }
}

//! Fine-tuning datasets: read .json / .jsonl files (instruction, chat and ShareGPT records), validate them
//! into a [`ValidationReport`] a non-specialist can act on, and encode conversations into the exact
//! tokens and loss masks the model trains on.
//!
//! ```text
//! validate_file ─▶ Validated { report, dataset } ─▶ split ─▶ encode_dataset(tokenizer, template) ─▶ Encoded
//! ```
//! Everything here is blocking and UI-free; long operations take a progress callback and a cancel flag so
//! the app can run them on a worker thread.
//!
//! Memory stays bounded while reading: .jsonl is read line by line and .json arrays element by element
//! (never the whole file as one string), one record is capped (16 MiB by default), nesting depth is capped
//! by serde_json (128), and the report lists at most `max_listed` findings of each kind while counting all.

mod align;
pub mod edit;
mod encode;
mod json;
mod read;
mod record;
mod report;
mod split;
pub(crate) mod validate;

use std::path::PathBuf;

use serde::Serialize;

use super::chat::ChatMessage;

pub use crate::engine::source::TextTools;
pub use encode::{
    encode_conversation, encode_dataset, load_text_tools, render_with_spans, EncodeOptions,
    Encoded, Example, Overlong, Rendered, TrainOn, MAX_LISTED,
};
pub(crate) use report::percentile;
pub use report::{
    Distribution, EncodeSummary, ErrorKind, Histogram, RoleCounts, RowError, SplitSummary, Stats,
    ValidationReport, Warning, WarningKind,
};
pub use split::{length_grouped_batches, padding_waste, split_indices, Batches, SplitSpec};
pub use validate::{validate_file, validate_reader, warn_overlap, ValidateOptions, Validated};

/// Validate a file and, when the model's text tools are given, encode it exactly as training will (token
/// lengths, truncation, loss masks). A file that cannot be read becomes a report with a fatal error, so
/// the only `Err` is `Cancelled`.
pub fn check_file(
    path: &std::path::Path,
    options: &ValidateOptions,
    encode: Option<(&TextTools, &EncodeOptions)>,
    progress: &mut dyn FnMut(Progress),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<(ValidationReport, Option<Dataset>), DataError> {
    check_file_encoded(path, options, encode, progress, cancel).map(|(r, d, _)| (r, d))
}

/// [`check_file`], also giving the encoded examples when it encoded them (the app sizes a run's
/// memory by them without encoding the file twice).
pub fn check_file_encoded(
    path: &std::path::Path,
    options: &ValidateOptions,
    encode: Option<(&TextTools, &EncodeOptions)>,
    progress: &mut dyn FnMut(Progress),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<(ValidationReport, Option<Dataset>, Option<Encoded>), DataError> {
    match validate_file(path, options, progress, cancel) {
        Ok(Validated {
            mut report,
            dataset,
        }) => {
            let encoded = match encode {
                Some((tools, encode)) => {
                    let encoded = encode_dataset(
                        &dataset,
                        &tools.tokenizer,
                        &tools.template,
                        encode,
                        progress,
                        cancel,
                    )?;
                    report.add_encoding(&encoded);
                    Some(encoded)
                }
                None => None,
            };
            Ok((report, Some(dataset), encoded))
        }
        Err(DataError::Cancelled) => Err(DataError::Cancelled),
        Err(e) => Ok((
            ValidationReport::unreadable(path.to_path_buf(), &e),
            None,
            None,
        )),
    }
}

/// How records are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One JSON array of records (`.json`).
    Json,
    /// One record per line (JSON Lines, `.jsonl`).
    Jsonl,
}

/// The record formats Loft reads; all become a [`Conversation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"instruction", "input"?, "output", "system"?}` (Alpaca style).
    Instruction,
    /// `{"messages": [{"role", "content"}]}` (OpenAI style).
    Chat,
    /// `{"conversations": [{"from", "value"}]}`.
    Sharegpt,
}

impl Format {
    pub fn label(self) -> &'static str {
        match self {
            Format::Instruction => "instruction",
            Format::Chat => "chat",
            Format::Sharegpt => "ShareGPT",
        }
    }
}

/// What a row number means in a file: the 1-based line of a .jsonl file, or the 0-based index of a record
/// in a .json array (`data[3]` in Python).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowNumbering {
    Line,
    Index,
}

impl RowNumbering {
    /// "line 12" or "record [3]".
    pub fn name(self, row: usize) -> String {
        match self {
            RowNumbering::Line => format!("line {row}"),
            RowNumbering::Index => format!("record [{row}]"),
        }
    }
}

/// One training example: a conversation in the internal form every format becomes.
/// Instruction rows become system? + user (instruction, a blank line, input) + assistant (output).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The row it came from (see [`RowNumbering`]).
    pub row: usize,
    /// The 1-based line where the record starts.
    pub line: u64,
    pub format: Format,
    pub messages: Vec<ChatMessage>,
}

/// The usable conversations of a file, in file order.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub format: Option<Format>,
    pub numbering: RowNumbering,
    pub conversations: Vec<Conversation>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }

    /// Split into (train, eval) with a seeded shuffle; the same seed always gives the same split.
    pub fn split(&self, spec: &SplitSpec, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        let (train, eval) = split_indices(self.len(), spec, seed)?;
        let pick = |idx: &[usize]| Dataset {
            path: self.path.clone(),
            format: self.format,
            numbering: self.numbering,
            conversations: idx.iter().map(|&i| self.conversations[i].clone()).collect(),
        };
        Ok((pick(&train), pick(&eval)))
    }
}

/// Where a long operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading and checking records; `done`/`total` count bytes.
    Reading,
    /// Cross-row checks (duplicates, contradictions, lengths); `done`/`total` count rows.
    Checking,
    /// Rendering and tokenizing; `done`/`total` count rows.
    Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: Option<u64>,
}

/// Problems that stop a data operation as a whole. Problems with rows are findings in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    NotData {
        path: PathBuf,
        offset: Option<u64>,
        message: String,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("training is blocked by {errors} error(s): {reason}")]
    Blocked { errors: usize, reason: String },
    #[error("{0}")]
    Split(String),
    #[error("{0}")]
    Model(#[from] super::error::ModelError),
}

impl DataError {
    /// The byte offset the problem was found at, when there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            DataError::NotData { offset, .. } => *offset,
            _ => None,
        }
    }
}

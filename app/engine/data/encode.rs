//! Encoding: render each conversation with the model's chat template, tokenize it, and mark which tokens
//! carry loss. By default only the assistant's tokens do (the prompt and system are masked, as TRL's
//! completion-only / assistant-only training does).
//!
//! Where the assistant's text is, without knowing the template: [`super::align`] renders the conversation
//! once more with placeholders for the contents, so the template's markup is known exactly and each
//! content's byte range in the real rendering follows from it — never a search for the answer's text,
//! which could land inside a special token or a role header. A template that rewrites a content beyond
//! trimming it, or leaves out an assistant turn, makes the row an error (training on all tokens needs no
//! spans and still works).
//!
//! The trained span of a turn is the assistant's content as the template wrote it (anything the template
//! puts between the generation prompt and the content, like a role header or an empty think block, is
//! not trained; reasoning the template shows is part of the content), plus the end-of-turn token when
//! the template writes one right after it (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`: the first
//! special token after the content, whitespace between included) — so the model learns to stop. Text
//! after that token (the newline ChatML puts between turns) is not trained, as in TRL's templates with
//! `{% generation %}` blocks. A token is trained when its character span overlaps a trained span.
//! Tokenizing uses `add_special_tokens = false`: the template already writes the BOS token where the
//! model wants one.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::align::align;
use super::report::{
    Distribution, EncodeSummary, ErrorKind, Histogram, RowError, ValidationReport, Warning,
    WarningKind,
};
use super::split::{length_grouped_batches, random_batches};
use super::{Conversation, DataError, Dataset, Progress, Stage};
use crate::engine::chat::{ChatMessage, ChatTemplate};
use crate::engine::error::ModelError;
use crate::engine::source::{ModelFiles, TextTools};

/// Which tokens carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOn {
    /// Only the assistant's turns (default).
    #[default]
    Assistant,
    /// Every token, prompt and system included.
    All,
}

impl TrainOn {
    /// `All` when every token should be learned (the CLI's `--train-on-all`), else `Assistant`.
    pub fn all_tokens(all: bool) -> TrainOn {
        if all {
            TrainOn::All
        } else {
            TrainOn::Assistant
        }
    }
}

/// What happens to conversations longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Leave them out, with a warning (default): a cut conversation can teach an answer that stops mid-way.
    #[default]
    Drop,
    /// Keep the first `max_seq_len` tokens (truncate from the right).
    Truncate,
}

impl Overlong {
    /// `Truncate` when long conversations should be cut to fit (the CLI's `--truncate`), else `Drop`.
    pub fn truncate(truncate: bool) -> Overlong {
        if truncate {
            Overlong::Truncate
        } else {
            Overlong::Drop
        }
    }
}

#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub max_seq_len: usize,
    pub train_on: TrainOn,
    pub overlong: Overlong,
    /// Batch size used to report padding waste.
    pub batch_size: usize,
    /// Seed for the batch order in the padding report.
    pub seed: u64,
    /// At most this many findings of each kind are listed.
    pub max_listed: usize,
}

/// At most this many findings of each kind are listed by default (all are counted).
pub const MAX_LISTED: usize = 1000;

impl Default for EncodeOptions {
    /// A run's defaults, so that encoding with no settings counts and masks tokens as training with no
    /// settings does.
    fn default() -> Self {
        crate::engine::train::prepare::encode_options(
            &crate::engine::train::TrainConfig::default(),
            false,
            false,
        )
    }
}

/// One training example. `mask[i]` is true when `ids[i]` is a training target (the model learns to
/// predict it from the tokens before it; the trainer shifts labels by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub row: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
    pub truncated: bool,
}

impl Example {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn trained_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// The examples of a dataset and what encoding found.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub examples: Vec<Example>,
    pub summary: EncodeSummary,
    /// Token length of every conversation that rendered (before truncation or dropping).
    pub token_lengths: Vec<u64>,
    pub errors: Vec<RowError>,
    pub warnings: Vec<Warning>,
    /// Findings of each kind, including those beyond `max_listed`.
    pub error_count: usize,
    pub warning_count: usize,
}

/// The text of a conversation as the model sees it, and the byte ranges that are trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub spans: Vec<Range<usize>>,
}

/// Renders and tokenizes with one tokenizer and template.
struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    /// Strings of special tokens (longest first): candidates for the end-of-turn marker.
    specials: Vec<String>,
}

impl<'a> Encoder<'a> {
    fn new(tokenizer: &'a Tokenizer, template: &'a ChatTemplate) -> Encoder<'a> {
        // End-of-turn markers: the eos token, and special tokens named like one (`<|im_end|>`, `<|eot_id|>`,
        // `<end_of_turn>`, `</s>`, `<|end|>`, `<|END_OF_TURN_TOKEN|>`…) — never a start marker such as
        // `<|im_start|>`, which belongs to the next turn.
        let mut specials: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && is_end_marker(&t.content))
            .map(|t| t.content.clone())
            .collect();
        if !template.eos_token.is_empty() {
            specials.push(template.eos_token.clone());
        }
        specials.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        specials.dedup();
        Encoder {
            tokenizer,
            template,
            specials,
        }
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        self.template.render(messages, false).map_err(|e| match e {
            // Already says that the template refuses or cannot render this conversation, and why.
            ModelError::Template(message) => message,
            other => format!("the model's chat template failed on this conversation: {other}"),
        })
    }

    /// End of a trained span whose content ends at `content_end` in `text`: include the end-of-turn
    /// special token if one follows (after optional whitespace).
    fn span_end(&self, text: &str, content_end: usize) -> usize {
        let tail = &text[content_end..];
        let rest = tail.trim_start();
        let gap = tail.len() - rest.len();
        match self.specials.iter().find(|s| rest.starts_with(s.as_str())) {
            Some(s) => content_end + gap + s.len(),
            None => content_end,
        }
    }

    /// The rendering and its trained spans: each assistant turn's content as the template wrote it (from
    /// the `<think>` that opens its reasoning, when the template shows the reasoning), plus the
    /// end-of-turn token after it.
    fn render_spans(&self, messages: &[ChatMessage]) -> Result<Rendered, String> {
        let is_answer = |m: &ChatMessage| m.role == "assistant";
        let aligned = align(self.template, messages, &is_answer, &|m| self.render(m))?;
        let text = aligned.text;
        let mut spans: Vec<Range<usize>> = messages
            .iter()
            .zip(&aligned.messages)
            .filter(|(m, _)| is_answer(m))
            .filter_map(|(_, found)| {
                let content = found.content.first()?;
                let start = found
                    .reasoning
                    .as_ref()
                    .map_or(content.start, |r| r.start.min(content.start));
                Some(start..self.span_end(&text, content.end))
            })
            .collect();
        spans.sort_by_key(|s| s.start);
        Ok(Rendered {
            text,
            spans: merge(spans),
        })
    }

    fn encode(
        &self,
        messages: &[ChatMessage],
        train_on: TrainOn,
    ) -> Result<(Vec<u32>, Vec<bool>), String> {
        // Training on every token needs no spans, so any template that renders will do.
        let rendered = match train_on {
            TrainOn::All => Rendered {
                text: self.render(messages)?,
                spans: Vec::new(),
            },
            TrainOn::Assistant => self.render_spans(messages)?,
        };
        let encoding = self
            .tokenizer
            .encode(rendered.text.as_str(), false)
            .map_err(|e| format!("the tokenizer failed on this conversation: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        let mask = match train_on {
            TrainOn::All => vec![true; ids.len()],
            TrainOn::Assistant => mask_from_spans(encoding.get_offsets(), &rendered.spans),
        };
        Ok((ids, mask))
    }
}

fn is_end_marker(token: &str) -> bool {
    let t = token.to_ascii_lowercase();
    !t.is_empty() && (t.contains("end") || t.contains("eot") || t.contains("eos") || t == "</s>")
}

/// Sorted spans with overlapping ones joined.
fn merge(spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match out.last_mut() {
            Some(last) if span.start < last.end => last.end = last.end.max(span.end),
            _ => out.push(span),
        }
    }
    out
}

/// A token is trained when its byte span overlaps a trained span (spans are sorted and disjoint).
fn mask_from_spans(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    let mut mask = Vec::with_capacity(offsets.len());
    let mut s = 0;
    for &(start, end) in offsets {
        while s < spans.len() && spans[s].end <= start {
            s += 1;
        }
        let trained = spans.get(s).is_some_and(|span| {
            if start == end {
                span.start <= start && start < span.end
            } else {
                start < span.end && end > span.start
            }
        });
        mask.push(trained);
    }
    mask
}

/// Render one conversation with the template and return the text and its trained byte ranges.
pub fn render_with_spans(
    messages: &[ChatMessage],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Rendered, String> {
    Encoder::new(tokenizer, template).render_spans(messages)
}

/// Encode one conversation: token ids and the loss mask. `Err` says why the conversation cannot be
/// encoded (the template refuses it, or hides where the answer is).
pub fn encode_conversation(
    messages: &[ChatMessage],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    train_on: TrainOn,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    Encoder::new(tokenizer, template).encode(messages, train_on)
}

/// Conversations encoded per parallel chunk (progress and cancel are checked between chunks).
const CHUNK: usize = 512;

/// Encode every conversation of a dataset. Rows the template cannot render become errors; rows longer
/// than `max_seq_len` are dropped or truncated as `options.overlong` says, with a warning each.
pub fn encode_dataset(
    dataset: &Dataset,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    options: &EncodeOptions,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Encoded, DataError> {
    let encoder = Encoder::new(tokenizer, template);
    let max = options.max_seq_len.max(1);
    let cap = options.max_listed.max(1);
    let total = dataset.conversations.len();
    let mut examples = Vec::with_capacity(total);
    let mut token_lengths = Vec::with_capacity(total);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let (mut error_count, mut warning_count) = (0usize, 0usize);
    let (mut over, mut dropped, mut truncated, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let name = |row: usize| dataset.numbering.name(row);
    for (chunk_index, chunk) in dataset.conversations.chunks(CHUNK).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(DataError::Cancelled);
        }
        progress(Progress {
            stage: Stage::Encoding,
            done: (chunk_index * CHUNK) as u64,
            total: Some(total as u64),
        });
        let results: Vec<_> = chunk
            .par_iter()
            .map(|c: &Conversation| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(String::new());
                }
                encoder.encode(&c.messages, options.train_on)
            })
            .collect();
        if cancel.load(Ordering::Relaxed) {
            return Err(DataError::Cancelled);
        }
        for (c, result) in chunk.iter().zip(results) {
            let (mut ids, mut mask) = match result {
                Ok(pair) => pair,
                Err(message) => {
                    failed += 1;
                    error_count += 1;
                    if error_count <= cap {
                        errors.push(RowError {
                            kind: ErrorKind::Template,
                            row: Some(c.row),
                            line: Some(c.line),
                            column: None,
                            offset: None,
                            field: None,
                            message,
                        });
                    }
                    continue;
                }
            };
            token_lengths.push(ids.len() as u64);
            let mut was_truncated = false;
            if ids.len() > max {
                over += 1;
                let n = ids.len();
                let message = match options.overlong {
                    Overlong::Drop => {
                        dropped += 1;
                        format!("{n} tokens, over the maximum sequence length of {max}; left out of training — raise max_seq_len, shorten it, or choose truncation")
                    }
                    Overlong::Truncate => {
                        truncated += 1;
                        format!("{n} tokens, over the maximum sequence length of {max}; cut to its first {max} tokens, so its last {} tokens are not trained — raise max_seq_len or shorten it", n - max)
                    }
                };
                warning_count += 1;
                if warning_count <= cap {
                    warnings.push(Warning {
                        kind: WarningKind::TooLong,
                        rows: vec![c.row],
                        line: Some(c.line),
                        field: None,
                        message,
                    });
                }
                if options.overlong == Overlong::Drop {
                    continue;
                }
                ids.truncate(max);
                mask.truncate(max);
                was_truncated = true;
            }
            if !mask.iter().any(|&m| m) {
                dropped += 1;
                warning_count += 1;
                if warning_count <= cap {
                    warnings.push(Warning {
                        kind: WarningKind::NothingToLearn,
                        rows: vec![c.row],
                        line: Some(c.line),
                        field: None,
                        message: format!(
                            "no assistant token is left within the first {max} tokens, so {} is left out; shorten the prompt or raise max_seq_len",
                            name(c.row)
                        ),
                    });
                }
                continue;
            }
            examples.push(Example {
                row: c.row,
                ids,
                mask,
                truncated: was_truncated,
            });
        }
    }
    progress(Progress {
        stage: Stage::Encoding,
        done: total as u64,
        total: Some(total as u64),
    });
    let lengths: Vec<usize> = examples.iter().map(Example::len).collect();
    let batch_size = options.batch_size.max(1);
    let (padding_waste, padding_waste_random_order) = if lengths.is_empty() {
        (None, None)
    } else {
        (
            Some(length_grouped_batches(&lengths, batch_size, options.seed).waste()),
            Some(random_batches(&lengths, batch_size, options.seed).waste()),
        )
    };
    let summary = EncodeSummary {
        max_seq_len: max,
        train_on: match options.train_on {
            TrainOn::Assistant => "assistant".into(),
            TrainOn::All => "all".into(),
        },
        overlong: match options.overlong {
            Overlong::Drop => "drop".into(),
            Overlong::Truncate => "truncate".into(),
        },
        encoded_rows: examples.len(),
        over_max_seq_len: over,
        dropped,
        truncated,
        failed,
        tokens: lengths.iter().map(|&n| n as u64).sum(),
        trained_tokens: examples.iter().map(|e| e.trained_tokens() as u64).sum(),
        batch_size,
        padding_waste,
        padding_waste_random_order,
    };
    Ok(Encoded {
        examples,
        summary,
        token_lengths,
        errors,
        warnings,
        error_count,
        warning_count,
    })
}

impl ValidationReport {
    /// Add what encoding found: template errors, rows over `max_seq_len`, token statistics. Rows that
    /// failed or were left out no longer count as usable.
    pub fn add_encoding(&mut self, encoded: &Encoded) {
        let s = &encoded.summary;
        for e in &encoded.errors {
            self.errors.push(e.clone());
        }
        for w in &encoded.warnings {
            self.warnings.push(w.clone());
        }
        self.errors
            .sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
        self.warnings
            .sort_by_key(|w| (w.kind, w.rows.first().copied().unwrap_or(0)));
        if encoded.error_count > 0 {
            *self.error_counts.entry(ErrorKind::Template).or_insert(0) += encoded.error_count;
        }
        let too_long = s.over_max_seq_len;
        if too_long > 0 {
            *self.warning_counts.entry(WarningKind::TooLong).or_insert(0) += too_long;
        }
        let nothing = encoded.warning_count - too_long;
        if nothing > 0 {
            *self
                .warning_counts
                .entry(WarningKind::NothingToLearn)
                .or_insert(0) += nothing;
        }
        self.error_rows += s.failed;
        self.usable_rows = s.encoded_rows;
        self.stats.usable_rows = s.encoded_rows;
        self.stats.tokens = Distribution::of(&encoded.token_lengths);
        self.stats.histogram = Histogram::of(
            &encoded.token_lengths,
            "tokens",
            30,
            Some(s.max_seq_len as u64),
        );
        self.stats.encoding = Some(s.clone());
    }
}

/// Load a model's tokenizer and chat template without its weights.
pub fn load_text_tools(files: &ModelFiles) -> Result<TextTools, DataError> {
    Ok(crate::engine::source::load_text_tools(files)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_overlapping_a_span_are_trained() {
        let offsets = [(0, 3), (3, 5), (5, 9), (9, 10), (10, 10), (10, 14)];
        let spans = [4..9, 10..12];
        assert_eq!(
            mask_from_spans(&offsets, &spans),
            [false, true, true, false, true, true]
        );
        assert_eq!(mask_from_spans(&offsets, &[]), [false; 6]);
    }

    #[test]
    fn end_markers() {
        for t in [
            "<|im_end|>",
            "<|eot_id|>",
            "<end_of_turn>",
            "</s>",
            "<|end|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|endoftext|>",
        ] {
            assert!(is_end_marker(t), "{t}");
        }
        for t in [
            "<|im_start|>",
            "<s>",
            "<|start_header_id|>",
            "<start_of_turn>",
            "",
        ] {
            assert!(!is_end_marker(t), "{t}");
        }
    }

    #[test]
    fn overlapping_spans_are_joined() {
        assert_eq!(merge(vec![0..3, 2..5, 5..6, 8..9]), [0..5, 5..6, 8..9]);
        assert_eq!(merge(vec![]), Vec::<Range<usize>>::new());
    }
}

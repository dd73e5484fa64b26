//! What an evaluation produces: every example with each model's answer and scores, and per model the
//! aggregates with their intervals, the loss on the references, and what an answer costs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::Interval;
use crate::engine::chat::ChatMessage;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// UTC, `YYYYMMDD-HHMMSS`.
    pub created: String,
    /// The base model as the user named it (hub id, folder or GGUF file).
    pub model: String,
    pub eval_set: EvalSetInfo,
    /// Generation settings every model answered with.
    pub max_new_tokens: usize,
    /// None: greedy.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Stop texts besides the model's end tokens.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Exact match ignored case and runs of whitespace.
    pub loose_match: bool,
    /// The metrics scored, in display order.
    pub metrics: Vec<MetricInfo>,
    /// The base model first (unless it was left out), then each adapter in the order given.
    pub models: Vec<ModelSummary>,
    pub rows: Vec<EvalRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSetInfo {
    /// The dataset file the examples come from.
    pub path: String,
    /// "held-out split of run <name>" or "file".
    pub source: String,
    pub rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricInfo {
    /// Stable key used in JSON output and in `Answer::scores` (`exact_match`, `rouge_l`, `check_1`…).
    pub key: String,
    /// Short label for tables and charts.
    pub label: String,
    /// One sentence a non-specialist understands.
    pub description: String,
    /// None where neither direction is better (answer length against the reference).
    pub higher_is_better: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    /// "base", or the run / adapter folder's name.
    pub name: String,
    /// The adapter folder, none for the base model.
    pub adapter: Option<String>,
    /// Mean cross-entropy on the reference answers' tokens, and its exponential.
    pub eval_loss: Option<f64>,
    pub perplexity: Option<f64>,
    /// Metric key → mean over the examples where it applies, with a 95% bootstrap interval.
    pub aggregates: BTreeMap<String, Interval>,
    /// Metric key → (this model − base), paired by example, with a 95% bootstrap interval. Empty for
    /// the base model itself.
    pub change_vs_base: BTreeMap<String, Interval>,
    pub latency: Latency,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Means per answer.
    pub tokens_in: f64,
    pub tokens_out: f64,
    pub time_to_first_token_ms: f64,
    pub ms_per_token: f64,
    /// New tokens per second over the whole generation, batching included.
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    /// Position in the evaluation set, and the line of the dataset file it came from when known.
    pub index: usize,
    pub line: Option<usize>,
    /// Its row in that file (see `Conversation::row`), to edit it there.
    #[serde(default)]
    pub row: Option<usize>,
    /// The conversation up to the answer: what every model was asked.
    pub prompt: Vec<ChatMessage>,
    /// The dataset's answer.
    pub reference: String,
    /// One per model, in `EvalReport::models` order.
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    /// Metric key → score in [0, 1] (length ratio may exceed 1); absent where it does not apply.
    pub scores: BTreeMap<String, f64>,
    pub tokens_in: usize,
    pub tokens_out: usize,
    pub time_to_first_token_ms: f64,
    pub ms_per_token: f64,
    /// "stop_token", "max_tokens", "context_full" or "cancelled".
    pub stop: String,
}

/// How a fine-tuned model did on one example against the base model, by the report's main metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowOutcome {
    Improved,
    Regressed,
    /// Neither answer passes (scores below one half).
    FailedByBoth,
    /// Equal scores that pass.
    Same,
}

impl RowOutcome {
    pub fn label(self) -> &'static str {
        match self {
            RowOutcome::Improved => "improved",
            RowOutcome::Regressed => "regressed",
            RowOutcome::FailedByBoth => "failed by both",
            RowOutcome::Same => "same",
        }
    }
}

/// A score at or above this passes, for metrics that score 0 to 1.
pub const PASS: f64 = 0.5;

impl EvalReport {
    /// The metric examples are judged by: exact match when any answer matches its reference exactly,
    /// else the next metric where higher is better (JSON validity for JSON answers, word overlap for
    /// free text). Free-form answers rarely match to the letter, and judged by exact match every
    /// example would read "failed by both".
    pub fn main_metric(&self) -> Option<&MetricInfo> {
        let exact_hits = self.rows.iter().any(|r| {
            r.answers
                .iter()
                .any(|a| a.scores.get("exact_match").is_some_and(|&s| s >= 1.0))
        });
        self.metrics
            .iter()
            .filter(|m| m.higher_is_better == Some(true))
            .find(|m| m.key != "exact_match" || exact_hits)
    }

    /// The base model's position in `models`, when it was evaluated.
    pub fn base_index(&self) -> Option<usize> {
        self.models.iter().position(|m| m.adapter.is_none())
    }

    /// Every example's outcome for model `tuned` against the base, by the main metric; None without a
    /// base, for the base itself, or where the metric does not apply. Changes smaller than [`SAME`]
    /// are no change.
    pub fn outcomes(&self, tuned: usize) -> Vec<Option<RowOutcome>> {
        let key = self.main_metric().map(|m| m.key.as_str());
        let base = self.base_index().filter(|&b| b != tuned);
        self.rows
            .iter()
            .map(|row| judge(row, key?, base?, tuned))
            .collect()
    }

    /// Every example's outcome across every fine-tuned model: regressed when any regressed, else
    /// improved when any improved, else failed by both when every one failed with the base, else the
    /// same.
    pub fn row_outcomes(&self) -> Vec<Option<RowOutcome>> {
        let per_model: Vec<Vec<Option<RowOutcome>>> =
            (0..self.models.len()).map(|m| self.outcomes(m)).collect();
        (0..self.rows.len())
            .map(|row| {
                let outcomes: Vec<RowOutcome> = per_model.iter().filter_map(|o| o[row]).collect();
                let any = |o| outcomes.contains(&o);
                if outcomes.is_empty() {
                    None
                } else if any(RowOutcome::Regressed) {
                    Some(RowOutcome::Regressed)
                } else if any(RowOutcome::Improved) {
                    Some(RowOutcome::Improved)
                } else if outcomes.iter().all(|&o| o == RowOutcome::FailedByBoth) {
                    Some(RowOutcome::FailedByBoth)
                } else {
                    Some(RowOutcome::Same)
                }
            })
            .collect()
    }
}

/// One example, model `tuned` against model `base`, by metric `key`.
fn judge(row: &EvalRow, key: &str, base: usize, tuned: usize) -> Option<RowOutcome> {
    let before = *row.answers.get(base)?.scores.get(key)?;
    let after = *row.answers.get(tuned)?.scores.get(key)?;
    Some(if after > before + SAME {
        RowOutcome::Improved
    } else if after < before - SAME {
        RowOutcome::Regressed
    } else if after.max(before) < PASS {
        RowOutcome::FailedByBoth
    } else {
        RowOutcome::Same
    })
}

/// Score changes within this are no change (word-overlap scores move a little with any rewording).
pub const SAME: f64 = 0.02;

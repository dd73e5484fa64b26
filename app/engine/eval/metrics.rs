//! Task metrics: how close a model's answer is to the dataset's reference answer, one number per example.
//!
//! Every metric is a plain function of (answer, reference) so that a report can be recomputed and checked
//! by hand. Where a metric has a well-known published definition (SQuAD's token F1, Google's
//! `rouge-score` ROUGE-L) it follows that definition to the last detail, and
//! `tests/fixtures/eval/metrics.json` (made by `scripts/make_metric_fixtures.py` with the reference
//! implementations) pins the agreement, so numbers in a Loft report mean what they mean in papers.
//!
//! A metric returns `None` for an example where it does not apply (JSON metrics on a plain-text
//! reference, a length ratio against an empty reference): the aggregate is then taken over the examples
//! where it does, rather than counting a meaningless 0.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::report::MetricInfo;

/// How strictly answers are compared. Only exact match reads it today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Exact match also ignores case and treats any run of whitespace as one space: models often differ
    /// from a reference only by a capital letter or a line break, which strict matching counts as wrong.
    pub loose: bool,
}

/// One way of scoring an answer against its reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    ExactMatch,
    JsonValid,
    FieldAccuracy,
    TokenF1,
    RougeL,
    LengthRatio,
    Refusal,
    /// A rule the user wrote (`--check 'absent:refund'`); keyed `check_<number>`.
    Check(Check),
}

impl Metric {
    /// The stable key used in JSON output and in `Answer::scores`.
    pub fn key(&self) -> String {
        match self {
            Metric::ExactMatch => "exact_match".into(),
            Metric::JsonValid => "json_valid".into(),
            Metric::FieldAccuracy => "field_accuracy".into(),
            Metric::TokenF1 => "token_f1".into(),
            Metric::RougeL => "rouge_l".into(),
            Metric::LengthRatio => "length_ratio".into(),
            Metric::Refusal => "refusal".into(),
            Metric::Check(check) => format!("check_{}", check.number),
        }
    }

    /// Key, label, a sentence for non-specialists, and which direction is better.
    pub fn info(&self) -> MetricInfo {
        let (label, description, higher_is_better): (String, String, Option<bool>) = match self {
            Metric::ExactMatch => (
                "Exact match".into(),
                "The answer is word for word the reference, apart from spaces at either end \
                 (loose matching also ignores capital letters and spacing)."
                    .into(),
                Some(true),
            ),
            Metric::JsonValid => (
                "Valid JSON".into(),
                "The answer is well-formed JSON (a surrounding ```json code fence is allowed); \
                 counted only where the reference is JSON."
                    .into(),
                Some(true),
            ),
            Metric::FieldAccuracy => (
                "Field accuracy".into(),
                "The share of the reference's top-level JSON fields that the answer gives with \
                 the same value."
                    .into(),
                Some(true),
            ),
            Metric::TokenF1 => (
                "Token F1".into(),
                "How many words the answer and the reference share, ignoring case, punctuation \
                 and a/an/the (the F1 score of the SQuAD benchmark)."
                    .into(),
                Some(true),
            ),
            Metric::RougeL => (
                "ROUGE-L".into(),
                "How much of the reference the answer repeats in the same order (F1 of their \
                 longest common word sequence)."
                    .into(),
                Some(true),
            ),
            Metric::LengthRatio => (
                "Length ratio".into(),
                "The answer's length divided by the reference's, in words: 1 is the same \
                 length, 2 twice as long."
                    .into(),
                None,
            ),
            Metric::Refusal => (
                "Refusal".into(),
                "The answer refuses or uses assistant boilerplate such as \u{201c}As an AI\u{2026}\u{201d} \
                 or \u{201c}I can't help with that\u{201d}."
                    .into(),
                Some(false),
            ),
            Metric::Check(check) => (check.label(), check.description(), Some(true)),
        };
        MetricInfo {
            key: self.key(),
            label,
            description,
            higher_is_better,
        }
    }

    /// The score of one answer, in [0, 1] (a length ratio may exceed 1), or `None` where the metric
    /// does not apply to this example.
    pub fn score(&self, answer: &str, reference: &str, opts: &ScoreOptions) -> Option<f64> {
        match self {
            Metric::ExactMatch => Some(unit(exact_match(answer, reference, opts.loose))),
            Metric::JsonValid => json_valid(answer, reference),
            Metric::FieldAccuracy => field_accuracy(answer, reference),
            Metric::TokenF1 => Some(token_f1(answer, reference)),
            Metric::RougeL => Some(rouge_l(answer, reference)),
            Metric::LengthRatio => length_ratio(answer, reference),
            Metric::Refusal => Some(unit(is_refusal(answer))),
            Metric::Check(check) => Some(unit(check.passes(answer))),
        }
    }
}

fn unit(passed: bool) -> f64 {
    if passed {
        1.0
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------------
// Choosing metrics
// ---------------------------------------------------------------------------------------------------

/// The metrics worth showing for a set of references. The text metrics always apply; the JSON ones are
/// added only when the task is mostly JSON (at least half the references), because on a mostly-prose
/// set they would be scored on a handful of examples and mislead more than they tell.
pub fn auto_metrics(references: &[&str]) -> Vec<Metric> {
    let mut json = 0usize;
    let mut objects = 0usize;
    for reference in references {
        match parse_json(reference) {
            Some(Value::Object(_)) => {
                json += 1;
                objects += 1;
            }
            Some(Value::Array(_)) => json += 1,
            _ => {}
        }
    }
    let at_least_half = |count: usize| !references.is_empty() && 2 * count >= references.len();
    let mut metrics = vec![Metric::ExactMatch];
    if at_least_half(json) {
        metrics.push(Metric::JsonValid);
    }
    if at_least_half(objects) {
        metrics.push(Metric::FieldAccuracy);
    }
    metrics.extend([
        Metric::TokenF1,
        Metric::RougeL,
        Metric::LengthRatio,
        Metric::Refusal,
    ]);
    metrics
}

/// The names `--metrics` accepts: (short name, key).
const METRIC_NAMES: &[(&str, &str)] = &[
    ("exact", "exact_match"),
    ("json", "json_valid"),
    ("fields", "field_accuracy"),
    ("f1", "token_f1"),
    ("rougeL", "rouge_l"),
    ("length", "length_ratio"),
    ("refusal", "refusal"),
];

fn metric_by_key(key: &str) -> Option<Metric> {
    Some(match key {
        "exact_match" => Metric::ExactMatch,
        "json_valid" => Metric::JsonValid,
        "field_accuracy" => Metric::FieldAccuracy,
        "token_f1" => Metric::TokenF1,
        "rouge_l" => Metric::RougeL,
        "length_ratio" => Metric::LengthRatio,
        "refusal" => Metric::Refusal,
        _ => return None,
    })
}

/// Reads a `--metrics` value: `auto` gives `None` (choose with [`auto_metrics`]); otherwise a
/// comma-separated list of names, short or full (`f1` or `token_f1`), in the order given, repeats
/// dropped. Names ignore case, so `rougeL`, `rougel` and `rouge_l` are the same. User checks are not
/// named here: they come from their own option and are added by the caller.
pub fn parse_metric_list(spec: &str) -> Result<Option<Vec<Metric>>, String> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let accepted = || {
        let names: Vec<String> = METRIC_NAMES
            .iter()
            .map(|(short, key)| {
                if short == key {
                    (*short).to_string()
                } else {
                    format!("{short} ({key})")
                }
            })
            .collect();
        format!(
            "write `auto` or a comma-separated list of: {}",
            names.join(", ")
        )
    };
    let mut metrics = Vec::new();
    for name in spec
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let key = METRIC_NAMES
            .iter()
            .find(|(short, key)| name.eq_ignore_ascii_case(short) || name.eq_ignore_ascii_case(key))
            .map(|(_, key)| *key);
        let Some(metric) = key.and_then(metric_by_key) else {
            return Err(format!("unknown metric `{name}`; {}", accepted()));
        };
        if !metrics.contains(&metric) {
            metrics.push(metric);
        }
    }
    if metrics.is_empty() {
        return Err(format!("no metric named in `{spec}`; {}", accepted()));
    }
    Ok(Some(metrics))
}

// ---------------------------------------------------------------------------------------------------
// User checks
// ---------------------------------------------------------------------------------------------------

/// A pass/fail rule the user writes for their task, e.g. `absent:refund` for a support bot that must not
/// promise refunds. It scores 1.0 when the answer passes.
///
/// - `regex:PATTERN` passes when the pattern matches anywhere in the answer (Rust `regex` syntax, taken
///   verbatim, case-sensitive unless the pattern starts with `(?i)`);
/// - `contains:TEXT` passes when the answer contains TEXT, ignoring case;
/// - `absent:TEXT` passes when it does not.
///
/// contains/absent compare plain substrings after Unicode lowercasing of both sides (`Refund` is found
/// in "REFUNDS"); spaces around TEXT are dropped, since `contains: refund` surely means "refund".
#[derive(Debug, Clone)]
pub struct Check {
    /// 1-based position among the run's checks; gives the key `check_<number>`.
    number: usize,
    /// What the user typed, shown in reports.
    spec: String,
    rule: Rule,
}

#[derive(Debug, Clone)]
enum Rule {
    Regex(Regex),
    /// The text, lowercased.
    Contains(String),
    Absent(String),
}

/// Checks are equal when written the same way and numbered the same (a compiled regex has no equality).
impl PartialEq for Check {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number && self.spec == other.spec
    }
}

const CHECK_HELP: &str = "write `regex:PATTERN` (the answer matches the pattern), `contains:TEXT` \
     (the answer contains the text, ignoring case) or `absent:TEXT` (the answer does not contain it), \
     e.g. `absent:refund`";

impl Check {
    /// Reads one check as the user wrote it. The check is numbered 1; [`parse_checks`] numbers a list.
    pub fn parse(text: &str) -> Result<Check, String> {
        let Some((prefix, body)) = text.split_once(':') else {
            return Err(format!("check `{text}` has no kind; {CHECK_HELP}"));
        };
        let kind = prefix.trim().to_ascii_lowercase();
        let rule = match kind.as_str() {
            "regex" => {
                if body.is_empty() {
                    return Err(format!(
                        "check `{text}` has no pattern after `regex:`; write one, e.g. `regex:^\\d+$`"
                    ));
                }
                let regex = Regex::new(body).map_err(|err| {
                    format!(
                        "check `{text}` has an invalid regular expression: {err}\n\
                         Write a pattern in Rust regex syntax after `regex:` (escape characters such as \
                         `(`, `[`, `.` and `?` with `\\`), or use `contains:TEXT` to look for plain text."
                    )
                })?;
                Rule::Regex(regex)
            }
            "contains" | "absent" => {
                let needle = body.trim();
                if needle.is_empty() {
                    return Err(format!(
                        "check `{text}` has no text after `{kind}:`; write the text to look for, \
                         e.g. `{kind}:refund`"
                    ));
                }
                let needle = needle.to_lowercase();
                if kind == "contains" {
                    Rule::Contains(needle)
                } else {
                    Rule::Absent(needle)
                }
            }
            _ => {
                return Err(format!(
                    "check `{text}` has an unknown kind `{}`; {CHECK_HELP}",
                    prefix.trim()
                ))
            }
        };
        Ok(Check {
            number: 1,
            spec: text.to_string(),
            rule,
        })
    }

    /// The same check with another number (its key becomes `check_<number>`).
    pub fn with_number(mut self, number: usize) -> Check {
        self.number = number;
        self
    }

    pub fn number(&self) -> usize {
        self.number
    }

    /// The check as the user wrote it.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Whether the answer passes.
    pub fn passes(&self, answer: &str) -> bool {
        match &self.rule {
            Rule::Regex(regex) => regex.is_match(answer),
            Rule::Contains(needle) => answer.to_lowercase().contains(needle.as_str()),
            Rule::Absent(needle) => !answer.to_lowercase().contains(needle.as_str()),
        }
    }

    /// "Check 1: absent:refund", shortened so that it fits a table header.
    fn label(&self) -> String {
        const MAX_CHARS: usize = 40;
        let label = format!("Check {}: {}", self.number, self.spec);
        if label.chars().count() <= MAX_CHARS {
            label
        } else {
            let mut short: String = label.chars().take(MAX_CHARS - 1).collect();
            short.push('\u{2026}');
            short
        }
    }

    fn description(&self) -> String {
        match &self.rule {
            Rule::Regex(regex) => format!("The answer matches the pattern `{}`.", regex.as_str()),
            Rule::Contains(_) => format!(
                "The answer contains \u{201c}{}\u{201d} (ignoring case).",
                self.body()
            ),
            Rule::Absent(_) => format!(
                "The answer does not contain \u{201c}{}\u{201d} (ignoring case).",
                self.body()
            ),
        }
    }

    /// The text after the prefix, as typed (not lowercased).
    fn body(&self) -> &str {
        self.spec
            .split_once(':')
            .map_or("", |(_, body)| body.trim())
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Reads the run's checks in order, numbering them 1, 2, … so their keys are `check_1`, `check_2`, …
pub fn parse_checks<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Check>, String> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| Check::parse(spec.as_ref()).map(|check| check.with_number(i + 1)))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Exact match
// ---------------------------------------------------------------------------------------------------

/// Strict: the trimmed strings are equal. Loose: also ignoring case (Unicode lowercasing) and with every
/// run of whitespace, line breaks included, counted as one space.
pub fn exact_match(answer: &str, reference: &str, loose: bool) -> bool {
    if loose {
        let normal = |text: &str| {
            text.to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        normal(answer) == normal(reference)
    } else {
        answer.trim() == reference.trim()
    }
}

// ---------------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------------

/// Parses text as JSON after trimming it and removing one surrounding markdown code fence: chat models
/// wrap JSON in ```json … ``` so habitually that counting the fence as an error would measure style, not
/// whether the model can produce the structure.
pub fn parse_json(text: &str) -> Option<Value> {
    serde_json::from_str(strip_code_fence(text.trim())).ok()
}

/// The body of "```lang\n…\n```" (the opening line, language tag included, is dropped); a fence on one
/// line ("```{…}```") keeps everything between the backticks. Text without a fence is returned as is.
fn strip_code_fence(text: &str) -> &str {
    let Some(inner) = text
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
    else {
        return text;
    };
    match inner.find('\n') {
        Some(newline) => inner[newline + 1..].trim(),
        None => inner.trim(),
    }
}

fn is_structured(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}

/// 1.0 when the answer is any well-formed JSON value (after [`parse_json`]'s clean-up), 0.0 otherwise;
/// `None` unless the reference is a JSON object or array, i.e. unless the task asks for JSON.
pub fn json_valid(answer: &str, reference: &str) -> Option<f64> {
    if !parse_json(reference).is_some_and(|value| is_structured(&value)) {
        return None;
    }
    Some(unit(parse_json(answer).is_some()))
}

/// The share of the reference object's top-level keys whose value in the answer's object is the same
/// JSON ([`json_equal`]: numbers by value, so `1` equals `1.0`). An answer that is not a JSON object
/// scores 0; extra keys in the answer are not penalised. `None` unless the reference is a non-empty
/// JSON object (an empty one has no fields to get right).
pub fn field_accuracy(answer: &str, reference: &str) -> Option<f64> {
    let Some(Value::Object(reference)) = parse_json(reference) else {
        return None;
    };
    if reference.is_empty() {
        return None;
    }
    let Some(Value::Object(answer)) = parse_json(answer) else {
        return Some(0.0);
    };
    let same = reference
        .iter()
        .filter(|(key, value)| {
            answer
                .get(*key)
                .is_some_and(|given| json_equal(given, value))
        })
        .count();
    Some(same as f64 / reference.len() as f64)
}

/// Structural JSON equality where numbers compare by value: serde_json's own equality tells the integer
/// 1 from the float 1.0, but a model writing `"price": 20.0` for `20` got the field right. Integers are
/// compared exactly (no rounding through f64 for large ids); a float on either side compares as f64.
/// Object key order never matters.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                x.as_f64() == y.as_f64()
            } else {
                x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64()
            }
        }
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(key, x)| ys.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------------
// Token F1 (SQuAD)
// ---------------------------------------------------------------------------------------------------

/// Python's `string.punctuation`, which SQuAD's `normalize_answer` removes.
const PY_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's `str.isspace`, which `str.split()` splits on: Unicode White_Space plus the four ASCII
/// information separators U+001C–U+001F (Rust's `char::is_whitespace` leaves those out).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// A maximal run of characters that Python's `re` counts as `\w` in a str pattern (letters, numbers and
/// `_`): `\b(a|an|the)\b` matches exactly such a run when it spells an article.
fn py_word_run() -> &'static Regex {
    static RUN: OnceLock<Regex> = OnceLock::new();
    RUN.get_or_init(|| Regex::new(r"[\p{L}\p{N}_]+").expect("a constant pattern compiles"))
}

/// SQuAD v1.1's `normalize_answer`, step for step: lowercase, drop `string.punctuation`, replace the
/// whole words a/an/the with a space, split on whitespace.
pub fn squad_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let no_punctuation: String = lower
        .chars()
        .filter(|c| !PY_PUNCTUATION.contains(*c))
        .collect();
    let no_articles =
        py_word_run().replace_all(&no_punctuation, |caps: &regex::Captures| match &caps[0] {
            "a" | "an" | "the" => " ".to_string(),
            word => word.to_string(),
        });
    no_articles
        .split(is_py_space)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
        .collect()
}

/// SQuAD's token F1: bag-of-words overlap (each shared word counted as often as it occurs on both
/// sides) between the normalised answer and reference. As in the SQuAD v2.0 script, two answers with no
/// words at all agree (1.0) and a missing answer against a real one scores 0.0; v1.1 would give 0 for
/// both, which punishes a correct empty answer.
pub fn token_f1(answer: &str, reference: &str) -> f64 {
    let prediction = squad_tokens(answer);
    let truth = squad_tokens(reference);
    if prediction.is_empty() || truth.is_empty() {
        return unit(prediction.is_empty() && truth.is_empty());
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in &truth {
        *counts.entry(token).or_default() += 1;
    }
    let mut same = 0usize;
    for token in &prediction {
        if let Some(count) = counts.get_mut(token.as_str()) {
            if *count > 0 {
                *count -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    // The reference script's arithmetic, so results agree to the last bit.
    let precision = same as f64 / prediction.len() as f64;
    let recall = same as f64 / truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

// ---------------------------------------------------------------------------------------------------
// ROUGE-L (rouge-score)
// ---------------------------------------------------------------------------------------------------

/// The default tokenizer of Google's `rouge-score` without stemming: lowercase, then the maximal runs of
/// ASCII letters and digits. Everything else, accented and non-Latin letters included, separates
/// tokens, exactly as its `[^a-z0-9]+` → space substitution does.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|token| !token.is_empty())
        .map(str::to_string)
        .collect()
}

/// The length of the longest common subsequence, in O(min) memory.
fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut previous = vec![0usize; short.len() + 1];
    let mut current = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[short.len()]
}

/// ROUGE-L F-measure as `rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=False)` computes
/// it: precision = LCS / answer tokens, recall = LCS / reference tokens, their harmonic mean; 0 when
/// either side has no tokens.
pub fn rouge_l(answer: &str, reference: &str) -> f64 {
    let prediction = rouge_tokens(answer);
    let target = rouge_tokens(reference);
    if prediction.is_empty() || target.is_empty() {
        return 0.0;
    }
    let lcs = lcs_length(&target, &prediction);
    let precision = lcs as f64 / prediction.len() as f64;
    let recall = lcs as f64 / target.len() as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------------
// Length ratio
// ---------------------------------------------------------------------------------------------------

/// Answer words / reference words, words being whitespace-separated: it shows a model rambling (> 1) or
/// cutting short (< 1), which overlap metrics only hint at. `None` when the reference has no words.
pub fn length_ratio(answer: &str, reference: &str) -> Option<f64> {
    let reference_words = reference.split_whitespace().count();
    if reference_words == 0 {
        return None;
    }
    Some(answer.split_whitespace().count() as f64 / reference_words as f64)
}

// ---------------------------------------------------------------------------------------------------
// Refusal
// ---------------------------------------------------------------------------------------------------

/// Phrases that mark a refusal or chat-assistant boilerplate, lowercase with a straight apostrophe. Kept
/// short and specific: a fine-tune on a narrow task should make these disappear, and a long list would
/// start flagging honest answers ("the patient is unable to…" does not match "i am unable to").
const REFUSAL_PHRASES: &[&str] = &[
    "as an ai",
    "as a language model",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i cannot help",
    "i can't help",
    "i am unable to",
    "i'm unable to",
    "i am not able to",
    "i'm not able to",
    "i cannot provide",
    "i can't provide",
    "i cannot assist",
    "i can't assist",
];

/// Whether the answer contains one of [`REFUSAL_PHRASES`], ignoring case, with the curly apostrophe ’
/// read as ' and any run of whitespace as one space. A phrase counts only as whole words ("as an ai"
/// does not match "as an aide").
pub fn is_refusal(answer: &str) -> bool {
    let text = answer
        .to_lowercase()
        .replace('\u{2019}', "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    REFUSAL_PHRASES
        .iter()
        .any(|phrase| contains_whole_words(&text, phrase))
}

fn contains_whole_words(text: &str, phrase: &str) -> bool {
    let mut from = 0;
    while let Some(found) = text[from..].find(phrase) {
        let start = from + found;
        let end = start + phrase.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            return true;
        }
        // The next character boundary after `start`.
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

// ---------------------------------------------------------------------------------------------------
// Word diff
// ---------------------------------------------------------------------------------------------------

/// What a word is compared by: lowercase letters and digits only, so "Paris," matches "paris".
fn diff_key(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The answer cut into pieces for highlighting: words (runs of non-whitespace, punctuation attached)
/// and the whitespace between them, so that concatenating the pieces gives the answer back exactly. A
/// word is flagged `true` when it is not part of a longest common subsequence with the reference's
/// words (compared by [`diff_key`]), i.e. when it is what the answer says differently. Whitespace and
/// words made only of punctuation or symbols are never flagged: highlighting a lone "—" tells nothing.
///
/// Memory and time grow with (answer words × reference words) after the common start and end are set
/// aside; a 2,000-word answer against a 2,000-word reference takes 16 MB.
pub fn word_diff(answer: &str, reference: &str) -> Vec<(String, bool)> {
    // Pieces of the answer, alternating whitespace and non-whitespace runs.
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut in_space: Option<bool> = None;
    for (i, c) in answer.char_indices() {
        let space = c.is_whitespace();
        if in_space.is_some_and(|was| was != space) {
            pieces.push(&answer[start..i]);
            start = i;
        }
        in_space = Some(space);
    }
    if start < answer.len() {
        pieces.push(&answer[start..]);
    }

    // (piece index, key) of the answer's comparable words.
    let words: Vec<(usize, String)> = pieces
        .iter()
        .enumerate()
        .filter(|(_, piece)| !piece.starts_with(char::is_whitespace))
        .map(|(i, piece)| (i, diff_key(piece)))
        .filter(|(_, key)| !key.is_empty())
        .collect();
    let answer_keys: Vec<&str> = words.iter().map(|(_, key)| key.as_str()).collect();
    let reference_keys: Vec<String> = reference
        .split_whitespace()
        .map(diff_key)
        .filter(|key| !key.is_empty())
        .collect();
    let reference_keys: Vec<&str> = reference_keys.iter().map(String::as_str).collect();
    let in_common = lcs_members(&answer_keys, &reference_keys);

    let mut flagged = vec![false; pieces.len()];
    for ((piece, _), common) in words.iter().zip(in_common) {
        flagged[*piece] = !common;
    }
    pieces
        .into_iter()
        .zip(flagged)
        .map(|(piece, flag)| (piece.to_string(), flag))
        .collect()
}

/// For each element of `a`, whether it belongs to one longest common subsequence of `a` and `b`. Where
/// several exist, the walk below prefers matching later elements of `a`; any one serves highlighting.
fn lcs_members(a: &[&str], b: &[&str]) -> Vec<bool> {
    let mut members = vec![false; a.len()];
    // A shared start and end are always in some LCS; setting them aside keeps the table small for the
    // usual case of an answer that differs from the reference in the middle.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    members[..prefix].fill(true);
    members[a.len() - suffix..].fill(true);
    let a_mid = &a[prefix..a.len() - suffix];
    let b_mid = &b[prefix..b.len() - suffix];
    let (n, m) = (a_mid.len(), b_mid.len());
    if n == 0 || m == 0 {
        return members;
    }
    // table[i * (m + 1) + j] = LCS length of a_mid[i..] and b_mid[j..], filled from the end so the walk
    // below goes forwards.
    let width = m + 1;
    let mut table = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            table[i * width + j] = if a_mid[i] == b_mid[j] {
                table[(i + 1) * width + j + 1] + 1
            } else {
                table[(i + 1) * width + j].max(table[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a_mid[i] == b_mid[j] {
            members[prefix + i] = true;
            i += 1;
            j += 1;
        } else if table[(i + 1) * width + j] >= table[i * width + j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: ScoreOptions = ScoreOptions { loose: false };
    const LOOSE: ScoreOptions = ScoreOptions { loose: true };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn keys_and_directions() {
        let check = Check::parse("absent:refund").unwrap().with_number(2);
        let all = [
            (Metric::ExactMatch, "exact_match", Some(true)),
            (Metric::JsonValid, "json_valid", Some(true)),
            (Metric::FieldAccuracy, "field_accuracy", Some(true)),
            (Metric::TokenF1, "token_f1", Some(true)),
            (Metric::RougeL, "rouge_l", Some(true)),
            (Metric::LengthRatio, "length_ratio", None),
            (Metric::Refusal, "refusal", Some(false)),
            (Metric::Check(check), "check_2", Some(true)),
        ];
        for (metric, key, higher) in all {
            let info = metric.info();
            assert_eq!(metric.key(), key);
            assert_eq!(info.key, key);
            assert_eq!(info.higher_is_better, higher, "{key}");
            assert!(
                !info.label.is_empty() && info.description.ends_with('.'),
                "{key}"
            );
        }
    }

    #[test]
    fn exact_match_strict_and_loose() {
        let m = Metric::ExactMatch;
        assert_eq!(m.score("  Paris\n", "Paris", &STRICT), Some(1.0));
        assert_eq!(m.score("paris", "Paris", &STRICT), Some(0.0));
        assert_eq!(m.score("paris", "Paris", &LOOSE), Some(1.0));
        assert_eq!(
            m.score("New   York\ncity", "new york City", &STRICT),
            Some(0.0)
        );
        assert_eq!(
            m.score("New   York\ncity", "new york City", &LOOSE),
            Some(1.0)
        );
        // Loose still tells words apart.
        assert_eq!(m.score("NewYork", "New York", &LOOSE), Some(0.0));
        assert_eq!(m.score("", "  ", &STRICT), Some(1.0));
    }

    #[test]
    fn json_valid_applies_to_json_references_only() {
        let m = Metric::JsonValid;
        let reference = r#"{"name": "Ada"}"#;
        assert_eq!(m.score(r#"{"name": "Bob"}"#, reference, &STRICT), Some(1.0));
        assert_eq!(
            m.score("```json\n{\"a\": [1, 2]}\n```", reference, &STRICT),
            Some(1.0)
        );
        assert_eq!(m.score("```\n[1]\n```", "[2, 3]", &STRICT), Some(1.0));
        assert_eq!(m.score("```{\"a\": 1}```", reference, &STRICT), Some(1.0));
        assert_eq!(
            m.score("{\"name\": \"Bob\",}", reference, &STRICT),
            Some(0.0)
        );
        assert_eq!(
            m.score("Sure! {\"name\": \"Bob\"}", reference, &STRICT),
            Some(0.0)
        );
        assert_eq!(m.score("", reference, &STRICT), Some(0.0));
        // A fenced reference counts as JSON too.
        assert_eq!(m.score("{}", "```json\n{}\n```", &STRICT), Some(1.0));
        assert_eq!(m.score("{}", "Paris", &STRICT), None);
        assert_eq!(m.score("{}", "42", &STRICT), None);
        assert_eq!(m.score("{}", "\"text\"", &STRICT), None);
    }

    #[test]
    fn field_accuracy_counts_reference_fields() {
        let m = Metric::FieldAccuracy;
        let reference = r#"{"name": "Ada", "age": 36, "tags": ["x", 1], "city": "London"}"#;
        // name right, age right by value (36.0), tags right, city wrong; the extra key is ignored.
        let answer =
            r#"{"age": 36.0, "name": "Ada", "tags": ["x", 1.0], "city": "Paris", "extra": 1}"#;
        assert_eq!(m.score(answer, reference, &STRICT), Some(0.75));
        assert_eq!(m.score(r#"{"name": "ada"}"#, reference, &STRICT), Some(0.0));
        assert_eq!(
            m.score(r#"{"name": "Ada"}"#, reference, &STRICT),
            Some(0.25)
        );
        assert_eq!(m.score("[1, 2]", reference, &STRICT), Some(0.0));
        assert_eq!(m.score("not json", reference, &STRICT), Some(0.0));
        assert_eq!(
            m.score(
                "```json\n{\"name\":\"Ada\",\"age\":36}\n```",
                reference,
                &STRICT
            ),
            Some(0.5)
        );
        assert_eq!(m.score("{}", "[1]", &STRICT), None);
        assert_eq!(m.score("{}", "{}", &STRICT), None);
        assert_eq!(m.score("{}", "hello", &STRICT), None);
    }

    #[test]
    fn json_numbers_compare_by_value() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(json_equal(&v("1"), &v("1.0")));
        assert!(json_equal(&v("-0.5"), &v("-5e-1")));
        assert!(!json_equal(&v("1"), &v("2")));
        assert!(!json_equal(&v("1"), &v("\"1\"")));
        assert!(json_equal(
            &v("18446744073709551615"),
            &v("18446744073709551615")
        ));
        assert!(!json_equal(&v("9007199254740993"), &v("9007199254740992")));
        assert!(json_equal(
            &v(r#"{"a":1,"b":[2]}"#),
            &v(r#"{"b":[2.0],"a":1}"#)
        ));
        assert!(!json_equal(&v(r#"{"a":1}"#), &v(r#"{"a":1,"b":2}"#)));
    }

    #[test]
    fn token_f1_by_hand() {
        // Normalised: "cat sat on mat" vs "cat is on mat": 3 shared of 4 and 4 → F1 = 0.75.
        assert!(close(
            token_f1("The cat sat on the mat.", "A cat is on the mat"),
            0.75
        ));
        // Punctuation inside words is removed, not split on: "don't" → "dont".
        // "—" is neither punctuation to remove nor part of a word, so the "the" after it is an article.
        assert_eq!(
            squad_tokens("Don't  stop—the music!"),
            ["dont", "stop—", "music"]
        );
        // Articles are removed only as whole words.
        assert_eq!(
            squad_tokens("Theatre, an anthem, A-team"),
            ["theatre", "anthem", "ateam"]
        );
        // Repeated words count as often as on both sides: "a a a b" vs "a b b" with letters that are not
        // articles: x x x y vs x y y → 2 shared, P = 2/4, R = 2/3, F1 = 4/7.
        assert!(close(token_f1("x x x y", "x y y"), 4.0 / 7.0));
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("the", "a ."), 1.0);
        assert_eq!(token_f1("", "Paris"), 0.0);
        assert_eq!(token_f1("Paris", ""), 0.0);
        assert_eq!(token_f1("London", "Paris"), 0.0);
        assert_eq!(Metric::TokenF1.score("Paris", "paris!", &STRICT), Some(1.0));
    }

    #[test]
    fn rouge_l_by_hand() {
        // Non-ASCII letters separate tokens: "café" → "caf".
        assert_eq!(
            rouge_tokens("Café au-lait, 2x!"),
            ["caf", "au", "lait", "2x"]
        );
        // LCS of "the cat sat on the mat" / "the cat on a mat" is "the cat on mat" = 4:
        // P = 4/5, R = 4/6 → F = 2·(4/5)(2/3)/(4/5 + 2/3) = 8/11.
        assert!(close(
            rouge_l("the cat on a mat", "The cat sat on the mat"),
            8.0 / 11.0
        ));
        // Order matters, unlike token F1: LCS of "b a" / "a b" is 1.
        assert!(close(rouge_l("b a", "a b"), 0.5));
        assert_eq!(rouge_l("", ""), 0.0);
        assert_eq!(rouge_l("!!!", "Paris"), 0.0);
        assert_eq!(rouge_l("Paris", "PARIS."), 1.0);
    }

    #[test]
    fn length_ratio_by_hand() {
        let m = Metric::LengthRatio;
        assert_eq!(m.score("one two three four", "one two", &STRICT), Some(2.0));
        assert_eq!(m.score("one", "one two", &STRICT), Some(0.5));
        assert_eq!(m.score("", "one two", &STRICT), Some(0.0));
        assert_eq!(m.score("anything", "", &STRICT), None);
        assert_eq!(m.score("anything", " \n ", &STRICT), None);
    }

    #[test]
    fn refusal_phrases() {
        let m = Metric::Refusal;
        for text in [
            "As an AI, I do not have opinions.",
            "I'm sorry, but I can't do that.",
            "I\u{2019}m sorry, but I cannot   share that.",
            "Unfortunately I CANNOT HELP with this request.",
            "I am unable to browse the internet.",
            "as a language model i have no feelings",
        ] {
            assert_eq!(m.score(text, "", &STRICT), Some(1.0), "{text}");
        }
        for text in [
            "Paris is the capital of France.",
            "She worked as an aide to the senator.",
            "The patient is unable to walk.",
            "",
        ] {
            assert_eq!(m.score(text, "", &STRICT), Some(0.0), "{text}");
        }
    }

    #[test]
    fn checks_score_and_parse() {
        let absent = Check::parse("absent:Refund").unwrap();
        assert!(absent.passes("We can replace the item."));
        assert!(!absent.passes("You will get a REFUND."));
        let contains = Check::parse("contains: order number ").unwrap();
        assert!(contains.passes("Your Order Number is 12."));
        assert!(!contains.passes("Your order is 12."));
        let regex = Check::parse(r"regex:^\d{3}-\d{4}$").unwrap();
        assert!(regex.passes("555-1234"));
        assert!(!regex.passes("call 555-1234"));
        // Regexes are case-sensitive unless asked.
        assert!(!Check::parse("regex:yes").unwrap().passes("YES"));
        assert!(Check::parse("regex:(?i)yes").unwrap().passes("YES"));
        assert!(Check::parse("Contains:x").is_ok());

        let metric = Metric::Check(absent);
        assert_eq!(metric.key(), "check_1");
        assert_eq!(metric.score("no problem", "ignored", &STRICT), Some(1.0));
        assert_eq!(metric.score("a refund", "ignored", &STRICT), Some(0.0));
        assert_eq!(metric.info().label, "Check 1: absent:Refund");
        assert_eq!(
            metric.info().description,
            "The answer does not contain \u{201c}Refund\u{201d} (ignoring case)."
        );

        let checks = parse_checks(&["contains:a", "absent:b"]).unwrap();
        let keys: Vec<String> = checks.into_iter().map(|c| Metric::Check(c).key()).collect();
        assert_eq!(keys, ["check_1", "check_2"]);
    }

    #[test]
    fn check_parse_errors_say_what_to_type() {
        let unknown = Check::parse("mentions:refund").unwrap_err();
        assert!(unknown.contains("unknown kind `mentions`"), "{unknown}");
        assert!(
            unknown.contains("regex:PATTERN") && unknown.contains("absent:TEXT"),
            "{unknown}"
        );
        let no_kind = Check::parse("refund").unwrap_err();
        assert!(no_kind.contains("contains:TEXT"), "{no_kind}");
        let bad = Check::parse("regex:(unclosed").unwrap_err();
        assert!(bad.contains("invalid regular expression"), "{bad}");
        assert!(bad.contains("contains:TEXT"), "{bad}");
        let empty = Check::parse("contains:  ").unwrap_err();
        assert!(empty.contains("contains:refund"), "{empty}");
        assert!(Check::parse("regex:").unwrap_err().contains("no pattern"));
        let in_list = parse_checks(&["contains:a", "oops"]).unwrap_err();
        assert!(in_list.contains("`oops`"), "{in_list}");
    }

    #[test]
    fn automatic_choice_follows_the_references() {
        let text = auto_metrics(&["Paris", "London", "{\"a\": 1}"]);
        assert_eq!(
            text,
            [
                Metric::ExactMatch,
                Metric::TokenF1,
                Metric::RougeL,
                Metric::LengthRatio,
                Metric::Refusal
            ]
        );
        // Half JSON (one object, one array): json_valid; objects are only a quarter.
        let mixed = auto_metrics(&["{\"a\": 1}", "[1]", "x", "y"]);
        assert!(mixed.contains(&Metric::JsonValid));
        assert!(!mixed.contains(&Metric::FieldAccuracy));
        let objects = auto_metrics(&["{\"a\": 1}", "```json\n{\"b\": 2}\n```", "x"]);
        assert_eq!(
            objects[..3],
            [Metric::ExactMatch, Metric::JsonValid, Metric::FieldAccuracy]
        );
        assert_eq!(auto_metrics(&[]).len(), 5);
    }

    #[test]
    fn metric_lists() {
        assert_eq!(parse_metric_list(" Auto "), Ok(None));
        assert_eq!(
            parse_metric_list("exact, rougeL,f1,rouge_l,fields, json_valid").unwrap(),
            Some(vec![
                Metric::ExactMatch,
                Metric::RougeL,
                Metric::TokenF1,
                Metric::FieldAccuracy,
                Metric::JsonValid
            ])
        );
        assert_eq!(
            parse_metric_list(
                "length_ratio,refusal,json,token_f1,exact_match,length,field_accuracy"
            )
            .unwrap()
            .unwrap()
            .len(),
            6
        );
        let err = parse_metric_list("exact,bleu").unwrap_err();
        assert!(err.contains("unknown metric `bleu`"), "{err}");
        assert!(
            err.contains("rougeL (rouge_l)") && err.contains("refusal"),
            "{err}"
        );
        assert!(parse_metric_list(" , ").is_err());
    }

    #[test]
    fn word_diff_flags_what_differs() {
        let answer = "The capital is  Lyon, France.\n";
        let diff = word_diff(answer, "the capital is Paris (France)");
        let joined: String = diff.iter().map(|(piece, _)| piece.as_str()).collect();
        assert_eq!(joined, answer);
        let flagged: Vec<&str> = diff
            .iter()
            .filter(|(_, flag)| *flag)
            .map(|(piece, _)| piece.as_str())
            .collect();
        assert_eq!(flagged, ["Lyon,"]);
        assert_eq!(
            diff,
            [
                ("The".to_string(), false),
                (" ".to_string(), false),
                ("capital".to_string(), false),
                (" ".to_string(), false),
                ("is".to_string(), false),
                ("  ".to_string(), false),
                ("Lyon,".to_string(), true),
                (" ".to_string(), false),
                ("France.".to_string(), false),
                ("\n".to_string(), false),
            ]
        );
        // Order matters: of "b a c" against "a b c" one of a/b is outside the LCS.
        let swapped = word_diff("b a c", "a b c");
        assert_eq!(swapped.iter().filter(|(_, flag)| *flag).count(), 1);
        assert!(!swapped[4].1);
        // Punctuation-only words are never flagged; an empty reference flags every word.
        let diff = word_diff("  yes \u{2014} no", "");
        let joined: String = diff.iter().map(|(piece, _)| piece.as_str()).collect();
        assert_eq!(joined, "  yes \u{2014} no");
        let flagged: Vec<&str> = diff
            .iter()
            .filter(|(_, flag)| *flag)
            .map(|(piece, _)| piece.as_str())
            .collect();
        assert_eq!(flagged, ["yes", "no"]);
        assert!(word_diff("", "anything").is_empty());
        // Repeats: the LCS takes the one "x" the reference has.
        let repeats = word_diff("x x", "x");
        assert_eq!(repeats.iter().filter(|(_, flag)| *flag).count(), 1);
    }

    #[test]
    fn lcs_members_is_a_longest_common_subsequence() {
        let a = ["a", "b", "c", "d", "e", "f"];
        let b = ["x", "b", "d", "y", "f", "z"];
        let members = lcs_members(&a, &b);
        assert_eq!(members, [false, true, false, true, false, true]);
        assert_eq!(lcs_length(&a, &b), 3);
        assert_eq!(lcs_length(&b, &a), 3);
    }

    /// Agreement with the reference implementations (`rouge-score` and the SQuAD script), pinned by
    /// `scripts/make_metric_fixtures.py`.
    #[test]
    fn agrees_with_reference_implementations() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/eval/metrics.json"
        );
        let text = std::fs::read_to_string(path).expect("the metric fixture is committed");
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 30);
        for case in cases {
            let answer = case["answer"].as_str().unwrap();
            let reference = case["reference"].as_str().unwrap();
            let rouge = case["rouge_l"].as_f64().unwrap();
            let f1 = case["token_f1"].as_f64().unwrap();
            let ours = rouge_l(answer, reference);
            assert!(
                (ours - rouge).abs() < 1e-9,
                "rougeL of {answer:?} vs {reference:?}: {ours} here, {rouge} in rouge-score"
            );
            let ours = token_f1(answer, reference);
            assert!(
                (ours - f1).abs() < 1e-9,
                "token F1 of {answer:?} vs {reference:?}: {ours} here, {f1} in SQuAD"
            );
        }
    }
}

//! One evaluation: the base model and each adapter answer the same held-out prompts, every answer is
//! scored against the dataset's reference, and the report sums it up with intervals.
//!
//! The base model's answers depend only on the model, the prompts and the generation settings, so
//! they are cached: evaluating a second run against the same base reuses them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::metrics::{auto_metrics, Check, Metric, ScoreOptions};
use super::report::{Answer, EvalReport, EvalRow, EvalSetInfo, Latency, ModelSummary};
use super::stats::{bootstrap_mean, bootstrap_paired_change, RESAMPLES};
use crate::engine::adapter::{adapter_dir, load_peft};
use crate::engine::chat::ChatMessage;
use crate::engine::data::{
    encode_dataset, validate_file, Dataset, EncodeOptions, Example, Overlong, TrainOn,
    ValidateOptions,
};
use crate::engine::error::{ModelError, Result};
use crate::engine::fsutil::write_atomic;
use crate::engine::generate::{generate_many, Generation, Sampling, StopReason};
use crate::engine::source::LoadedModel;
use crate::engine::train::loss::mean_loss;
use crate::engine::train::run::{RunDir, RunSpec};

/// The examples every model answers.
pub struct EvalSet {
    pub info: EvalSetInfo,
    pub examples: Vec<EvalExample>,
    /// The same conversations, whole, for the loss on the references.
    pub dataset: Dataset,
}

/// One held-out example: the conversation up to its last answer, and that answer.
#[derive(Debug, Clone)]
pub struct EvalExample {
    pub line: usize,
    pub row: usize,
    pub prompt: Vec<ChatMessage>,
    pub reference: String,
}

impl EvalSet {
    /// Every conversation that ends with the assistant's answer; the others have nothing to compare
    /// against and are left out.
    pub fn from_dataset(dataset: Dataset, source: String) -> Result<EvalSet> {
        let mut kept = dataset;
        kept.conversations.retain(|c| {
            c.messages.len() >= 2 && c.messages.last().is_some_and(|m| m.role == "assistant")
        });
        if kept.conversations.is_empty() {
            return Err(ModelError::invalid_input(
                "data",
                format!(
                    "{}: no example ends with an assistant answer to compare against; evaluation needs prompts with reference answers",
                    kept.path.display()
                ),
            ));
        }
        let examples = kept
            .conversations
            .iter()
            .map(|c| {
                let (answer, prompt) = c.messages.split_last().expect("two messages or more");
                EvalExample {
                    line: c.line as usize,
                    row: c.row,
                    prompt: prompt.to_vec(),
                    reference: answer.content.clone(),
                }
            })
            .collect::<Vec<_>>();
        Ok(EvalSet {
            info: EvalSetInfo {
                path: kept.path.display().to_string(),
                source,
                rows: examples.len(),
            },
            examples,
            dataset: kept,
        })
    }

    /// Every usable example of a dataset file (rows with errors are left out, as `loft validate`
    /// lists them).
    pub fn from_file(path: &Path, cancel: &AtomicBool) -> Result<EvalSet> {
        let validated = validate_file(path, &ValidateOptions::default(), &mut |_| {}, cancel)?;
        if let Err(e) = validated.report.check_trainable(true) {
            return Err(ModelError::invalid_input(
                "data",
                format!(
                    "{}: {e}; run `loft validate {}` to see why",
                    path.display(),
                    path.display()
                ),
            ));
        }
        EvalSet::from_dataset(validated.dataset, "file".into())
    }

    /// The held-out examples of a run: its eval file, or the split it made of its data with its seed.
    pub fn from_run(run: &Path, cancel: &AtomicBool) -> Result<(EvalSet, RunSpec)> {
        let (_, spec) = RunDir::open(run)?;
        let (_, eval) = crate::engine::train::prepare::datasets(&spec, &mut |_| {}, cancel)?;
        if eval.is_empty() {
            return Err(ModelError::invalid_input(
                "data",
                format!(
                    "{}: this run kept no examples apart for evaluation (eval split 0); evaluate on a dataset file instead (--data FILE)",
                    run.display()
                ),
            ));
        }
        let name = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let set = EvalSet::from_dataset(eval, format!("held-out split of run {name}"))?;
        Ok((set, spec))
    }
}

/// How the models answer and how answers are scored.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// None: a budget from the references (see [`answer_budget`]).
    pub max_new_tokens: Option<usize>,
    pub loose_match: bool,
    /// None: chosen from the references ([`auto_metrics`]).
    pub metrics: Option<Vec<Metric>>,
    pub checks: Vec<Check>,
    /// Prompts answered at once.
    pub batch: usize,
    /// Seeds the bootstrap intervals.
    pub seed: u64,
    /// Conversations longer than this are cut for the loss (the model's context at most).
    pub max_seq_len: usize,
    /// Where the base model's answers are cached; None: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Text that ends an answer, besides the model's own end tokens (the answer is cut before it).
    pub stop: Vec<String>,
    /// Sample with this temperature (seeded by `seed`); None: greedy, the same answers every time.
    pub temperature: Option<f64>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            max_new_tokens: None,
            loose_match: false,
            metrics: None,
            checks: Vec::new(),
            batch: 16,
            seed: 0,
            max_seq_len: 2048,
            cache_dir: None,
            stop: Vec::new(),
            temperature: None,
        }
    }
}

/// A model to evaluate: the base alone, or the base with an adapter (a PEFT folder or a run folder).
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: String,
    pub adapter: Option<PathBuf>,
}

impl Contender {
    pub fn base() -> Contender {
        Contender {
            name: "base".into(),
            adapter: None,
        }
    }

    /// An adapter named after its run (or adapter) folder.
    pub fn adapter(path: &Path) -> Contender {
        let dir = adapter_dir(path);
        let named = if dir.file_name().is_some_and(|n| n == "adapter") {
            dir.parent().unwrap_or(&dir)
        } else {
            &dir
        };
        Contender {
            name: named
                .file_name()
                .map_or_else(|| "adapter".into(), |n| n.to_string_lossy().into_owned()),
            adapter: Some(dir),
        }
    }
}

/// Where an evaluation is, for progress bars: model `model` of `models` is at `done` of `total`.
#[derive(Debug, Clone)]
pub struct EvalProgress {
    pub model: usize,
    pub models: usize,
    pub name: String,
    pub stage: EvalStage,
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalStage {
    /// The loss on the reference answers.
    Loss,
    /// Answers being generated.
    Answers,
    /// The base model's answers came from the cache.
    Cached,
}

/// The token budget of an answer when none is given: room for the longest reference and half as much
/// again (at least 32 more), at most 1024. An answer that needs more than that is a failure anyway, and
/// a smaller budget keeps evaluation fast.
pub fn answer_budget(reference_tokens: impl Iterator<Item = usize>) -> usize {
    let longest = reference_tokens.max().unwrap_or(0);
    (longest + (longest / 2).max(32)).min(1024)
}

/// Answer every prompt with every contender and score the answers. `model_name` is the base as the user
/// named it (for the report and the cache key). The loaded model gets each adapter in turn and is
/// left without any.
pub fn evaluate(
    loaded: &mut LoadedModel,
    model_name: &str,
    set: &EvalSet,
    contenders: &[Contender],
    settings: &EvalSettings,
    on_progress: &mut dyn FnMut(EvalProgress),
    cancel: &AtomicBool,
) -> Result<EvalReport> {
    check_contenders(contenders)?;
    let prompts = set
        .examples
        .iter()
        .map(|e| loaded.chat_prompt_ids(&e.prompt))
        .collect::<Result<Vec<_>>>()?;
    let max_new_tokens = match settings.max_new_tokens {
        Some(n) => n,
        None => answer_budget(
            set.examples
                .iter()
                .map(|e| token_count(loaded, &e.reference)),
        ),
    };
    let sampling = Sampling {
        max_new_tokens,
        temperature: settings.temperature,
        seed: settings.seed,
        ..Sampling::default()
    };
    let stops = Stops::new(loaded, &settings.stop);
    let loss_examples = encode_for_loss(loaded, set, settings, cancel)?;
    let references: Vec<&str> = set.examples.iter().map(|e| e.reference.as_str()).collect();
    let mut metrics = settings
        .metrics
        .clone()
        .unwrap_or_else(|| auto_metrics(&references));
    metrics.extend(settings.checks.iter().cloned().map(Metric::Check));
    let cache_key = base_cache_key(model_name, &prompts, &loss_examples, &sampling, &stops);

    let mut outcomes = Vec::with_capacity(contenders.len());
    for (index, contender) in contenders.iter().enumerate() {
        let mut progress = |stage, done, total| {
            on_progress(EvalProgress {
                model: index,
                models: contenders.len(),
                name: contender.name.clone(),
                stage,
                done,
                total,
            })
        };
        let cache_dir = settings.cache_dir.as_deref();
        let cached = match (&contender.adapter, cache_dir) {
            (None, Some(dir)) => read_cached(dir, &cache_key),
            _ => None,
        };
        let outcome = match cached {
            Some(outcome) => {
                progress(EvalStage::Cached, set.examples.len(), set.examples.len());
                outcome
            }
            None => {
                let outcome = answer_all(
                    loaded,
                    contender,
                    &prompts,
                    &loss_examples,
                    &sampling,
                    &stops,
                    settings,
                    &mut progress,
                    cancel,
                )?;
                if let (None, Some(dir)) = (&contender.adapter, cache_dir) {
                    // A cache that cannot be written costs time next time, nothing else.
                    let _ = write_cached(dir, &cache_key, &outcome);
                }
                outcome
            }
        };
        outcomes.push((contender, outcome));
    }
    Ok(build_report(
        model_name,
        set,
        max_new_tokens,
        settings,
        &metrics,
        &outcomes,
    ))
}

/// Something to evaluate: the base model, an adapter, or both.
fn check_contenders(contenders: &[Contender]) -> Result<()> {
    if contenders.is_empty() {
        return Err(ModelError::invalid_input(
            "models",
            "nothing to evaluate: add an adapter, or keep the base model",
        ));
    }
    Ok(())
}

/// What one model did: an answer per example, the loss on the references, and the generation time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    answers: Vec<RawAnswer>,
    eval_loss: Option<f64>,
    /// Wall time of generating all answers, for tokens per second with batching.
    seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawAnswer {
    text: String,
    tokens_in: usize,
    tokens_out: usize,
    time_to_first_token_ms: f64,
    ms_per_token: f64,
    stop: StopReason,
}

#[allow(clippy::too_many_arguments)]
fn answer_all(
    loaded: &mut LoadedModel,
    contender: &Contender,
    prompts: &[Vec<u32>],
    loss_examples: &[Example],
    sampling: &Sampling,
    stops: &Stops,
    settings: &EvalSettings,
    progress: &mut dyn FnMut(EvalStage, usize, usize),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    if let Some(dir) = &contender.adapter {
        load_peft(&mut loaded.model, dir)?;
    }
    let result = (|| {
        progress(EvalStage::Loss, 0, prompts.len());
        let pad = loaded.stop_tokens.first().copied().unwrap_or(0);
        let eval_loss = if loss_examples.is_empty() {
            None
        } else {
            // The loss pass holds a whole batch's activations, unlike generation: at most 8
            // conversations at a time keep it near a training micro-batch's memory.
            Some(mean_loss(
                &loaded.model,
                loss_examples,
                settings.batch.clamp(1, 8),
                settings.max_seq_len,
                pad,
            )?)
        };
        // Generation reads the merged weights: one product per projection instead of three.
        let merged = loaded.model.merge_adapters()?;
        let answers =
            generate_answers(loaded, prompts, sampling, stops, settings, progress, cancel);
        loaded.model.restore_base(merged)?;
        let (answers, seconds) = answers?;
        Ok(Outcome {
            answers,
            eval_loss,
            seconds,
        })
    })();
    loaded.model.remove_adapters()?;
    result
}

fn generate_answers(
    loaded: &LoadedModel,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    stops: &Stops,
    settings: &EvalSettings,
    progress: &mut dyn FnMut(EvalStage, usize, usize),
    cancel: &AtomicBool,
) -> Result<(Vec<RawAnswer>, f64)> {
    let total = prompts.len();
    progress(EvalStage::Answers, 0, total);
    let start = Instant::now();
    let mut answers: Vec<Option<RawAnswer>> = vec![None; total];
    let mut done = 0;
    let mut failure = None;
    generate_many(
        &loaded.model,
        prompts,
        sampling,
        &stops.tokens,
        settings.batch,
        cancel,
        &mut |i, generation| {
            match raw_answer(loaded, stops, &generation) {
                Ok(answer) => answers[i] = Some(answer),
                Err(e) => failure = Some(e),
            }
            done += 1;
            progress(EvalStage::Answers, done, total);
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    let answers: Option<Vec<RawAnswer>> = answers.into_iter().collect();
    answers.map(|a| (a, seconds)).ok_or(ModelError::Cancelled)
}

/// What ends an answer: the model's end tokens and the user's stop texts (those that are one token
/// stop generation there; any other is cut from the text afterwards).
struct Stops {
    tokens: Vec<u32>,
    texts: Vec<String>,
}

impl Stops {
    fn new(loaded: &LoadedModel, texts: &[String]) -> Stops {
        let mut tokens = loaded.stop_tokens.clone();
        for text in texts {
            if let Ok(e) = loaded.tokenizer.encode(text.as_str(), false) {
                if let [id] = e.get_ids() {
                    tokens.push(*id);
                }
            }
        }
        Stops {
            tokens,
            texts: texts.iter().filter(|t| !t.is_empty()).cloned().collect(),
        }
    }

    /// `text` up to the first stop text in it.
    fn cut<'a>(&self, text: &'a str) -> &'a str {
        let end = self
            .texts
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        &text[..end]
    }
}

fn raw_answer(loaded: &LoadedModel, stops: &Stops, generation: &Generation) -> Result<RawAnswer> {
    let content: Vec<u32> = generation
        .tokens
        .iter()
        .copied()
        .filter(|t| !stops.tokens.contains(t))
        .collect();
    let text = loaded
        .tokenizer
        .decode(&content, true)
        .map_err(|e| ModelError::Tokenizer {
            path: "tokenizer".into(),
            message: format!("cannot decode an answer: {e}"),
        })?;
    let new = generation.tokens.len();
    Ok(RawAnswer {
        text: stops.cut(&text).trim().to_string(),
        tokens_in: generation.prompt_tokens,
        tokens_out: new,
        time_to_first_token_ms: generation.prefill.as_secs_f64() * 1000.0,
        ms_per_token: generation.decode.as_secs_f64() * 1000.0
            / new.saturating_sub(1).max(1) as f64,
        stop: generation.stop,
    })
}

fn token_count(loaded: &LoadedModel, text: &str) -> usize {
    loaded
        .tokenizer
        .encode(text, false)
        .map_or(text.len() / 4, |e| e.get_ids().len())
}

/// The conversations as training encodes them, loss on the assistant's tokens; too-long ones are cut.
fn encode_for_loss(
    loaded: &LoadedModel,
    set: &EvalSet,
    settings: &EvalSettings,
    cancel: &AtomicBool,
) -> Result<Vec<Example>> {
    let options = EncodeOptions {
        max_seq_len: settings
            .max_seq_len
            .min(loaded.model.arch.max_position_embeddings),
        train_on: TrainOn::all_tokens(false),
        overlong: Overlong::truncate(true),
        ..EncodeOptions::default()
    };
    let encoded = encode_dataset(
        &set.dataset,
        &loaded.tokenizer,
        &loaded.template,
        &options,
        &mut |_| {},
        cancel,
    )?;
    Ok(encoded.examples)
}

/// What the base model's answers depend on: the model as named, the prompts' tokens, the encoded
/// references (for the loss) and the generation settings.
fn base_cache_key(
    model_name: &str,
    prompts: &[Vec<u32>],
    loss_examples: &[Example],
    sampling: &Sampling,
    stops: &Stops,
) -> String {
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION").as_bytes());
    hash.update(model_name.as_bytes());
    hash.update(format!("{sampling:?} {:?} {:?}", stops.tokens, stops.texts).as_bytes());
    for p in prompts {
        hash.update((p.len() as u64).to_le_bytes());
        p.iter().for_each(|t| hash.update(t.to_le_bytes()));
    }
    for e in loss_examples {
        hash.update((e.ids.len() as u64).to_le_bytes());
        e.ids.iter().for_each(|t| hash.update(t.to_le_bytes()));
        e.mask.iter().for_each(|&m| hash.update([m as u8]));
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn cache_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("base-{}.json", &key[..32]))
}

fn read_cached(dir: &Path, key: &str) -> Option<Outcome> {
    let text = std::fs::read_to_string(cache_file(dir, key)).ok()?;
    let (stored, outcome): (String, Outcome) = serde_json::from_str(&text).ok()?;
    (stored == key).then_some(outcome)
}

fn write_cached(dir: &Path, key: &str, outcome: &Outcome) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string(&(key, outcome)).map_err(std::io::Error::other)?;
    write_atomic(&cache_file(dir, key), text.as_bytes())
}

/// The default home of cached base answers: the platform's cache folder (`~/.cache/loft/eval`).
pub fn default_cache_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "loft").map(|d| d.cache_dir().join("eval"))
}

fn build_report(
    model_name: &str,
    set: &EvalSet,
    max_new_tokens: usize,
    settings: &EvalSettings,
    metrics: &[Metric],
    outcomes: &[(&Contender, Outcome)],
) -> EvalReport {
    let options = ScoreOptions {
        loose: settings.loose_match,
    };
    let rows: Vec<EvalRow> = set
        .examples
        .iter()
        .enumerate()
        .map(|(i, example)| EvalRow {
            index: i,
            line: Some(example.line),
            row: Some(example.row),
            prompt: example.prompt.clone(),
            reference: example.reference.clone(),
            answers: outcomes
                .iter()
                .map(|(_, outcome)| {
                    let raw = &outcome.answers[i];
                    let scores = metrics
                        .iter()
                        .filter_map(|m| {
                            m.score(&raw.text, &example.reference, &options)
                                .map(|s| (m.key(), s))
                        })
                        .collect();
                    Answer {
                        text: raw.text.clone(),
                        scores,
                        tokens_in: raw.tokens_in,
                        tokens_out: raw.tokens_out,
                        time_to_first_token_ms: raw.time_to_first_token_ms,
                        ms_per_token: raw.ms_per_token,
                        stop: stop_name(raw.stop).into(),
                    }
                })
                .collect(),
        })
        .collect();
    let base = outcomes.iter().position(|(c, _)| c.adapter.is_none());
    let scores_of = |model: usize, key: &str| -> Vec<Option<f64>> {
        rows.iter()
            .map(|r| r.answers[model].scores.get(key).copied())
            .collect()
    };
    let models = outcomes
        .iter()
        .enumerate()
        .map(|(m, (contender, outcome))| {
            let mut aggregates = BTreeMap::new();
            let mut change_vs_base = BTreeMap::new();
            for metric in metrics {
                let key = metric.key();
                let mine = scores_of(m, &key);
                let present: Vec<f64> = mine.iter().flatten().copied().collect();
                if let Some(interval) = bootstrap_mean(&present, RESAMPLES, settings.seed) {
                    aggregates.insert(key.clone(), interval);
                }
                if let Some(b) = base.filter(|&b| b != m) {
                    let (before, after): (Vec<f64>, Vec<f64>) = scores_of(b, &key)
                        .into_iter()
                        .zip(mine)
                        .filter_map(|(x, y)| Some((x?, y?)))
                        .unzip();
                    if let Some(change) =
                        bootstrap_paired_change(&before, &after, RESAMPLES, settings.seed)
                    {
                        change_vs_base.insert(key, change);
                    }
                }
            }
            ModelSummary {
                name: contender.name.clone(),
                adapter: contender.adapter.as_ref().map(|p| p.display().to_string()),
                eval_loss: outcome.eval_loss,
                perplexity: outcome.eval_loss.map(f64::exp),
                aggregates,
                change_vs_base,
                latency: latency(&outcome.answers, outcome.seconds),
            }
        })
        .collect();
    EvalReport {
        created: crate::engine::train::run::timestamp(),
        model: model_name.to_string(),
        eval_set: set.info.clone(),
        max_new_tokens,
        temperature: settings.temperature,
        stop: settings.stop.clone(),
        loose_match: settings.loose_match,
        metrics: metrics.iter().map(Metric::info).collect(),
        models,
        rows,
    }
}

fn latency(answers: &[RawAnswer], seconds: f64) -> Latency {
    let n = answers.len().max(1) as f64;
    let mean = |f: fn(&RawAnswer) -> f64| answers.iter().map(f).sum::<f64>() / n;
    let tokens: usize = answers.iter().map(|a| a.tokens_out).sum();
    Latency {
        tokens_in: mean(|a| a.tokens_in as f64),
        tokens_out: mean(|a| a.tokens_out as f64),
        time_to_first_token_ms: mean(|a| a.time_to_first_token_ms),
        ms_per_token: mean(|a| a.ms_per_token),
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    }
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::StopToken => "stop_token",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
        StopReason::Cancelled => "cancelled",
    }
}

/// Everything an evaluation needs, as the CLI flags and the Evaluate page give it.
#[derive(Clone, Default)]
pub struct EvalRequest {
    /// The base model as the user names it; None: the run's model.
    pub model: Option<String>,
    /// Adapters to compare (run or adapter folders); none given with a run: the run's own.
    pub adapters: Vec<PathBuf>,
    /// A dataset file to evaluate on; None: the run's held-out examples.
    pub data: Option<PathBuf>,
    pub run: Option<PathBuf>,
    pub include_base: bool,
    pub settings: EvalSettings,
    /// Report folder; None: the run's `eval/<time>/`, or `./loft-eval-<time>/` without a run.
    pub out: Option<PathBuf>,
    pub hub: crate::engine::hub::HubOptions,
    pub offline: bool,
}

/// Where a request is, for progress displays.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// Loading, downloading, reading data: one line to show.
    Status(String),
    Set(EvalSetInfo),
    Progress(EvalProgress),
}

/// Resolve the request's model, data and adapters, evaluate, and write the report; returns it with
/// its folder.
pub fn run_request(
    request: &EvalRequest,
    on_event: &mut dyn FnMut(EvalEvent),
    cancel: &AtomicBool,
) -> Result<(EvalReport, PathBuf)> {
    let (set, run_model) = match (&request.data, &request.run) {
        (Some(data), _) => (EvalSet::from_file(data, cancel)?, None),
        (None, Some(run)) => {
            let (set, spec) = EvalSet::from_run(run, cancel)?;
            (set, Some(spec.model))
        }
        (None, None) => {
            return Err(ModelError::invalid_input(
                "data",
                "say what to evaluate on: a dataset file, or a run for its held-out examples",
            ))
        }
    };
    on_event(EvalEvent::Set(set.info.clone()));
    let model_name =
        request.model.clone().or(run_model).ok_or_else(|| {
            ModelError::invalid_input("model", "say which base model to evaluate")
        })?;
    let mut contenders = Vec::new();
    if request.include_base {
        contenders.push(Contender::base());
    }
    let run_adapter = request
        .adapters
        .is_empty()
        .then_some(request.run.clone())
        .flatten();
    contenders.extend(
        request
            .adapters
            .iter()
            .chain(run_adapter.iter())
            .map(|a| Contender::adapter(a)),
    );
    check_contenders(&contenders)?;
    on_event(EvalEvent::Status(format!("loading {model_name}…")));
    let source = crate::engine::source::ModelSource::parse(&model_name)?;
    let files = {
        let mut on_download = |e: crate::engine::hub::DownloadEvent| {
            if let crate::engine::hub::DownloadEvent::File { name, .. } = e {
                on_event(EvalEvent::Status(format!("downloading {name}…")));
            }
        };
        let mut how = crate::engine::source::Resolve {
            hub: request.hub.clone(),
            offline: request.offline,
            on_download: &mut on_download,
            cancel,
        };
        crate::engine::source::resolve(&source, &mut how)?
    };
    let mut loaded = crate::engine::source::load_on_best_device(&files)?;
    let mut on_progress = |p| on_event(EvalEvent::Progress(p));
    let report = evaluate(
        &mut loaded,
        &model_name,
        &set,
        &contenders,
        &request.settings,
        &mut on_progress,
        cancel,
    )?;
    let out = match (&request.out, &request.run) {
        (Some(out), _) => out.clone(),
        (None, Some(run)) => run.join("eval").join(&report.created),
        (None, None) => PathBuf::from(format!("loft-eval-{}", report.created)),
    };
    super::write_report(&report, &out)?;
    Ok((report, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_before_the_first_stop_text() {
        let stops = Stops {
            tokens: vec![],
            texts: vec!["</answer>".into(), "\nUser:".into()],
        };
        assert_eq!(stops.cut("42</answer> and more\nUser: hi"), "42");
        assert_eq!(stops.cut("a\nUser: b</answer>"), "a");
        assert_eq!(stops.cut("no stop here"), "no stop here");
    }

    #[test]
    fn the_answer_budget_follows_the_references() {
        assert_eq!(answer_budget([10, 40, 20].into_iter()), 72);
        assert_eq!(answer_budget([200].into_iter()), 300);
        assert_eq!(answer_budget([5000].into_iter()), 1024);
        assert_eq!(answer_budget(std::iter::empty()), 32);
    }
}

//! `loft eval`: base vs fine-tuned on held-out examples, with a summary table, and a report folder
//! (`report.json`, `rows.jsonl`, `report.html`) printed last.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use super::interrupt;
use crate::engine::eval::metrics::{parse_checks, parse_metric_list};
use crate::engine::eval::run::default_cache_dir;
use crate::engine::eval::{
    run_request, EvalEvent, EvalProgress, EvalReport, EvalRequest, EvalSettings, EvalStage,
};
use crate::engine::ModelError;

#[derive(Args)]
pub struct EvalArgs {
    /// The base model: a Hugging Face folder, a .gguf file or a hub repo id (default with --run: the
    /// run's model).
    #[arg(long, short)]
    model: Option<String>,
    /// A fine-tuned adapter to compare with the base: a run folder or a PEFT adapter folder (repeat for
    /// several). With --run and no --adapter, the run's own adapter.
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Evaluate on this dataset file (.json/.jsonl; the last assistant message of each row is the
    /// reference answer).
    #[arg(long, conflicts_with = "run")]
    data: Option<PathBuf>,
    /// Evaluate a run on the examples it held out from training; the report goes to its eval/ folder.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Longest answer, in tokens (default: the longest reference and half as much again).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Text that ends an answer, besides the model's end tokens (repeatable; the answer is cut before
    /// it).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Sample with this temperature, seeded by --seed (default: greedy, the same answers every time).
    #[arg(long)]
    temperature: Option<f64>,
    /// Metrics: auto (chosen from the references) or a list of exact, json, fields, f1, rougeL, length,
    /// refusal.
    #[arg(long, default_value = "auto")]
    metrics: String,
    /// A check every answer must pass: 'regex:PATTERN', 'contains:TEXT' or 'absent:TEXT' (repeatable).
    #[arg(long = "check", value_name = "CHECK")]
    checks: Vec<String>,
    /// Exact match ignores case and whitespace.
    #[arg(long)]
    loose: bool,
    /// Leave the base model out (evaluate the adapters only).
    #[arg(long)]
    no_base: bool,
    /// Prompts answered at once.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seed of the bootstrap intervals (and of sampling, with --temperature).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report folder (default: the run's eval/<time>/, or ./loft-eval-<time>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the aggregates as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Never download: use only local files and the Hugging Face cache.
    #[arg(long)]
    offline: bool,
}

pub fn eval(args: EvalArgs) -> Result<i32> {
    let cancel = AtomicBool::new(false);
    let metrics = parse_metric_list(&args.metrics).map_err(anyhow::Error::msg)?;
    let checks = parse_checks(&args.checks).map_err(anyhow::Error::msg)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args
        .temperature
        .is_some_and(|t| !(t > 0.0 && t.is_finite()))
    {
        bail!("--temperature must be above 0 (leave it out for greedy answers)");
    }
    if args.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    let request = EvalRequest {
        model: args.model.clone(),
        adapters: args.adapter.clone(),
        data: args.data.clone(),
        run: args.run.clone(),
        include_base: !args.no_base,
        settings: EvalSettings {
            max_new_tokens: args.max_new_tokens,
            loose_match: args.loose,
            metrics,
            checks,
            batch: args.batch,
            seed: args.seed,
            cache_dir: default_cache_dir(),
            stop: args.stop.clone(),
            temperature: args.temperature,
            ..EvalSettings::default()
        },
        out: args.out.clone(),
        offline: args.offline,
        ..EvalRequest::default()
    };
    if args.data.is_none() && args.run.is_none() {
        bail!("say what to evaluate on: --data FILE, or --run RUN for its held-out examples");
    }
    if args.no_base && args.adapter.is_empty() && args.run.is_none() {
        bail!("--no-base leaves nothing to evaluate: add --adapter RUN_OR_DIR");
    }
    let catches_signals = interrupt::install();
    let mut last_line = String::new();
    let mut on_event = |event: EvalEvent| {
        if catches_signals && interrupt::requested() {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let line = match event {
            EvalEvent::Status(line) => line,
            EvalEvent::Set(info) => format!(
                "{} examples from {} ({})",
                info.rows, info.path, info.source
            ),
            EvalEvent::Progress(p) => {
                // Every tenth of the answers is enough on a terminal or in a log.
                let tenth = (p.total / 10).max(1);
                if p.done % tenth != 0 && p.done != p.total {
                    return;
                }
                progress_line(&p)
            }
        };
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
    };
    let (report, out) = match run_request(&request, &mut on_event, &cancel) {
        Err(ModelError::Cancelled) => {
            eprintln!("evaluation stopped; nothing was written");
            return Ok(interrupt::INTERRUPTED_EXIT);
        }
        other => other?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&aggregates_json(&report, &out))?
        );
    } else {
        print!("{}", summary_table(&report));
        println!("{}", out.display());
    }
    Ok(0)
}

fn progress_line(p: &EvalProgress) -> String {
    let who = format!("[{}/{}] {}", p.model + 1, p.models, p.name);
    match p.stage {
        EvalStage::Loss => format!("{who}: loss on the reference answers…"),
        EvalStage::Cached => format!("{who}: {} answers from the cache", p.total),
        EvalStage::Answers => format!("{who}: {}/{} answers", p.done, p.total),
    }
}

/// Per model: each metric's mean and interval (and change against the base), the loss and the cost.
fn aggregates_json(report: &EvalReport, out: &std::path::Path) -> Value {
    let mut models = Map::new();
    for m in &report.models {
        let mut entry = Map::new();
        for (key, interval) in &m.aggregates {
            let mut value = json!({"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n});
            if let Some(change) = m.change_vs_base.get(key) {
                value["change_vs_base"] =
                    json!({"mean": change.mean, "low": change.low, "high": change.high});
            }
            entry.insert(key.clone(), value);
        }
        entry.insert("eval_loss".into(), json!(m.eval_loss));
        entry.insert("perplexity".into(), json!(m.perplexity));
        entry.insert(
            "latency".into(),
            serde_json::to_value(&m.latency).unwrap_or(Value::Null),
        );
        entry.insert("adapter".into(), json!(m.adapter));
        models.insert(m.name.clone(), Value::Object(entry));
    }
    json!({
        "examples": report.rows.len(),
        "max_new_tokens": report.max_new_tokens,
        "models": models,
        "report": out.display().to_string(),
    })
}

/// Metrics as rows, models as columns: `mean [low, high]`, and for fine-tuned models the change.
fn summary_table(report: &EvalReport) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_string()];
    header.extend(report.models.iter().map(|m| m.name.clone()));
    rows.push(header);
    let cell = |v: f64, percent: bool| {
        if percent {
            format!("{:.1}%", v * 100.0)
        } else {
            format!("{v:.3}")
        }
    };
    for metric in &report.metrics {
        let percent = metric.key != "length_ratio";
        let mut row = vec![metric.label.clone()];
        for m in &report.models {
            row.push(match m.aggregates.get(&metric.key) {
                None => "—".into(),
                Some(i) => {
                    let mut text = format!(
                        "{} [{}, {}]",
                        cell(i.mean, percent),
                        cell(i.low, percent),
                        cell(i.high, percent)
                    );
                    if let Some(c) = m.change_vs_base.get(&metric.key) {
                        let sign = if c.mean >= 0.0 { "+" } else { "" };
                        text.push_str(&format!(" ({sign}{})", cell(c.mean, percent)));
                    }
                    text
                }
            });
        }
        rows.push(row);
    }
    let mut line = |label: &str, f: &dyn Fn(&crate::engine::eval::ModelSummary) -> String| {
        let mut row = vec![label.to_string()];
        row.extend(report.models.iter().map(f));
        rows.push(row);
    };
    line("eval loss", &|m| {
        m.eval_loss.map_or("—".into(), |l| format!("{l:.4}"))
    });
    line("perplexity", &|m| {
        m.perplexity.map_or("—".into(), |p| format!("{p:.2}"))
    });
    line("tokens per answer", &|m| {
        format!("{:.1}", m.latency.tokens_out)
    });
    line("first token (ms)", &|m| {
        format!("{:.0}", m.latency.time_to_first_token_ms)
    });
    line("ms per token", &|m| {
        format!("{:.1}", m.latency.ms_per_token)
    });
    line("tokens/s (batched)", &|m| {
        format!("{:.1}", m.latency.tokens_per_second)
    });
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

//! `loft validate`: check a dataset, and with `--model` encode it exactly as training will.
//! Exit status: 0 usable (warnings allowed), 1 errors, 2 the data (or the model) cannot be read at all.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::models::ModelArg;
use crate::engine::data::{
    self, Dataset, Progress, SplitSpec, SplitSummary, Stage, ValidateOptions, ValidationReport,
};
use crate::engine::train::prepare::encode_options;
use crate::engine::train::TrainConfig;

#[derive(Args)]
pub struct ValidateArgs {
    /// The dataset: .jsonl (one record per line) or .json (an array of records); instruction, chat or ShareGPT records.
    pub data: PathBuf,
    /// Encode with this model's tokenizer and chat template (a folder, a .gguf file or a hub repo id):
    /// token lengths, rows over --max-seq-len, trained-token share, padding waste.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Never download the model: use only local files and the Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
    /// Longest training sequence in tokens (default: 1024, as `loft train`).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Cut conversations longer than --max-seq-len to their first tokens instead of leaving them out.
    #[arg(long)]
    pub truncate: bool,
    /// Train on every token (prompt and system too), not only the assistant's.
    #[arg(long, alias = "train-on-all")]
    pub train_on_all_tokens: bool,
    /// Hold out rows for evaluation: a fraction (0.1) or a number of rows (200).
    #[arg(long, value_name = "F")]
    pub eval_split: Option<String>,
    /// A separate evaluation file, validated the same way (instead of --eval-split).
    #[arg(long, alias = "eval-file", conflicts_with = "eval_split")]
    pub eval_data: Option<PathBuf>,
    /// Seed of the train/eval split and the batch order (default: 42, as `loft train`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Examples per micro-batch, for the padding-waste figure (default: 4, as `loft train`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Keep exact duplicate rows (they are removed by default).
    #[arg(long)]
    pub keep_duplicates: bool,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    report: &'a ValidationReport,
    /// The report of `--eval-data`, when given.
    eval: Option<&'a ValidationReport>,
}

/// Run `loft validate`; returns the exit status.
pub fn validate(args: ValidateArgs) -> Result<i32> {
    let tools = match &args.model {
        None => None,
        Some(model) => {
            let arg = ModelArg {
                model: model.clone(),
                offline: args.offline,
                endpoint: None,
            };
            match arg
                .resolve()
                .and_then(|files| Ok(data::load_text_tools(&files)?))
            {
                Ok(tools) => Some(tools),
                Err(e) => {
                    eprintln!("error: cannot use the model `{model}`: {e:#}");
                    return Ok(2);
                }
            }
        }
    };
    let split = match args.eval_split.as_deref().map(SplitSpec::parse).transpose() {
        Ok(split) => split,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    if args.max_seq_len.is_some() && tools.is_none() && !args.json {
        eprintln!(
            "note: --max-seq-len counts tokens, so it needs --model; checking characters only"
        );
    }
    // The settings `loft train` would use with the same flags, encoded the way training encodes.
    let mut run = TrainConfig::default();
    run.max_seq_len = args.max_seq_len.unwrap_or(run.max_seq_len);
    run.micro_batch_size = args.batch_size.unwrap_or(run.micro_batch_size);
    run.seed = args.seed.unwrap_or(run.seed);
    let seed = run.seed;
    let encode_options = tools
        .as_ref()
        .map(|_| encode_options(&run, args.train_on_all_tokens, args.truncate));

    let check = |path: &Path| -> Result<(ValidationReport, Option<Dataset>)> {
        let options = ValidateOptions {
            // Plain validation keeps no text in memory, whatever the size of the file.
            keep_conversations: tools.is_some() || args.eval_data.is_some(),
            keep_duplicates: args.keep_duplicates,
            ..ValidateOptions::default()
        };
        let cancel = AtomicBool::new(false);
        let mut progress = progress_printer(args.json);
        let encode = tools.as_ref().zip(encode_options.as_ref());
        let checked = data::check_file(path, &options, encode, &mut progress, &cancel);
        clear_progress(args.json);
        Ok(checked?)
    };

    let (mut report, dataset) = check(&args.data)?;
    let mut eval_report = None;
    if let Some(eval_path) = &args.eval_data {
        let (mut eval, eval_data) = check(eval_path)?;
        if let (Some(train), Some(eval_data)) = (&dataset, &eval_data) {
            data::warn_overlap(train, eval_data, &mut eval);
            report.stats.split = Some(SplitSummary {
                method: "file".into(),
                seed,
                train_rows: report.usable_rows,
                eval_rows: eval.usable_rows,
                eval_path: Some(eval_path.clone()),
            });
        }
        eval_report = Some(eval);
    } else if let Some(spec) = split {
        if report.fatal.is_none() && report.usable_rows > 0 {
            match data::split_indices(report.usable_rows, &spec, seed) {
                Ok((train, eval)) => {
                    report.stats.split = Some(SplitSummary {
                        method: match spec {
                            SplitSpec::Count(_) => "count".into(),
                            _ => "fraction".into(),
                        },
                        seed,
                        train_rows: train.len(),
                        eval_rows: eval.len(),
                        eval_path: None,
                    })
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            }
        }
    }

    let code = exit_code(&report).max(eval_report.as_ref().map(exit_code).unwrap_or(0));
    if args.json {
        let out = Output {
            report: &report,
            eval: eval_report.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report);
        if let Some(eval) = &eval_report {
            println!();
            println!("evaluation file");
            print_report(eval);
        }
    }
    Ok(code)
}

fn exit_code(report: &ValidationReport) -> i32 {
    if report.fatal.is_some() {
        2
    } else if report.is_usable() {
        0
    } else {
        1
    }
}

fn progress_printer(quiet: bool) -> impl FnMut(Progress) {
    let show = !quiet && std::io::stderr().is_terminal();
    move |p: Progress| {
        if !show {
            return;
        }
        let what = match p.stage {
            Stage::Reading => "reading",
            Stage::Checking => "checking",
            Stage::Encoding => "encoding",
        };
        if let Some(total) = p.total.filter(|&t| t > 0) {
            eprint!("\r{what} {:>3.0}%   ", 100.0 * p.done as f64 / total as f64);
        }
    }
}

fn clear_progress(quiet: bool) {
    if !quiet && std::io::stderr().is_terminal() {
        eprint!("\r                    \r");
    }
}

/// Findings listed per kind in the text report (`--json` lists up to 1000).
const SHOWN_PER_KIND: usize = 5;

fn print_report(r: &ValidationReport) {
    let path = r.path.display();
    if let Some(fatal) = &r.fatal {
        println!("✗ {path}: cannot be read");
        println!("  {fatal}");
        return;
    }
    let layout = match r.layout {
        Some(data::Layout::Json) => "a JSON array",
        Some(data::Layout::Jsonl) => "JSON Lines",
        None => "no data",
    };
    let format = r
        .format
        .map(|f| format!("{} format, ", f.label()))
        .unwrap_or_default();
    println!(
        "{path}: {format}{layout} — {} rows, {} usable{}",
        r.rows,
        r.usable_rows,
        if r.stats.duplicates_removed > 0 {
            format!(
                " ({} duplicate{} removed)",
                r.stats.duplicates_removed,
                plural(r.stats.duplicates_removed)
            )
        } else {
            String::new()
        }
    );
    let place =
        |row: Option<usize>, line: Option<u64>, column: Option<u64>, field: &Option<String>| {
            let mut at = match (row, line) {
                (Some(row), _) if r.numbering == data::RowNumbering::Line => format!("line {row}"),
                (Some(row), Some(line)) => format!("record [{row}] (line {line})"),
                (Some(row), None) => format!("record [{row}]"),
                (None, Some(line)) => format!("line {line}"),
                (None, None) => "file".to_string(),
            };
            if let Some(c) = column {
                at.push_str(&format!(", column {c}"));
            }
            if let Some(f) = field {
                at.push_str(&format!(", {f}"));
            }
            at
        };
    let errors = r.error_count();
    if errors > 0 {
        println!();
        println!(
            "✗ {errors} error{} in {} row{} — training is blocked until they are fixed (or the rows with errors are skipped)",
            plural(errors),
            r.error_rows,
            plural(r.error_rows)
        );
        for (kind, count) in &r.error_counts {
            println!("  {} ({count})", kind.label());
            for e in r
                .errors
                .iter()
                .filter(|e| e.kind == *kind)
                .take(SHOWN_PER_KIND)
            {
                println!(
                    "    {}: {}",
                    place(e.row, e.line, e.column, &e.field),
                    e.message
                );
            }
            if *count > SHOWN_PER_KIND {
                println!(
                    "    … and {} more (--json lists them)",
                    count - SHOWN_PER_KIND
                );
            }
        }
    }
    let warnings = r.warning_count();
    if warnings > 0 {
        println!();
        println!("! {warnings} warning{}", plural(warnings));
        for (kind, count) in &r.warning_counts {
            println!("  {} ({count})", kind.label());
            for w in r
                .warnings
                .iter()
                .filter(|w| w.kind == *kind)
                .take(SHOWN_PER_KIND)
            {
                let at = match w.rows.first() {
                    Some(&row) => format!("{}: ", place(Some(row), w.line, None, &w.field)),
                    None => String::new(),
                };
                println!("    {at}{}", w.message);
            }
            if *count > SHOWN_PER_KIND {
                println!(
                    "    … and {} more (--json lists them)",
                    count - SHOWN_PER_KIND
                );
            }
        }
    }
    let s = &r.stats;
    println!();
    println!("stats");
    let dist = |d: &Option<data::Distribution>| {
        d.as_ref()
            .map(|d| {
                format!(
                    "min {} · median {} · p95 {} · max {}",
                    d.min, d.median, d.p95, d.max
                )
            })
            .unwrap_or_else(|| "—".into())
    };
    println!("  turns per conversation  {}", dist(&s.turns));
    println!("  characters              {}", dist(&s.characters));
    if s.tokens.is_some() {
        println!("  tokens                  {}", dist(&s.tokens));
    }
    println!(
        "  messages                system {} · user {} · assistant {}",
        s.roles.system, s.roles.user, s.roles.assistant
    );
    if let Some(e) = &s.encoding {
        let share = if e.tokens > 0 {
            100.0 * e.trained_tokens as f64 / e.tokens as f64
        } else {
            0.0
        };
        let over = match e.overlong.as_str() {
            "drop" => format!("{} dropped", e.dropped),
            _ => format!("{} truncated", e.truncated),
        };
        println!(
            "  encoding                max_seq_len {} · {} over it ({over}) · {} tokens, {:.0}% trained ({} tokens)",
            e.max_seq_len,
            e.over_max_seq_len,
            e.tokens,
            share,
            if e.train_on == "all" { "all" } else { "assistant" }
        );
        if let (Some(grouped), Some(random)) = (e.padding_waste, e.padding_waste_random_order) {
            println!(
                "  padding                 {:.1}% of batch tokens at batch size {} grouped by length ({:.1}% in random order)",
                100.0 * grouped,
                e.batch_size,
                100.0 * random
            );
        }
    }
    if let Some(split) = &s.split {
        let from = match &split.eval_path {
            Some(p) => format!(" from {}", p.display()),
            None => format!(" (seed {})", split.seed),
        };
        println!(
            "  split                   train {} · eval {}{from}",
            split.train_rows, split.eval_rows
        );
    }
    if let Some(h) = &s.histogram {
        println!("  length ({})", h.unit);
        let top = h.counts.iter().copied().max().unwrap_or(1).max(1);
        let width = (h.bin_width * h.counts.len() as u64).to_string().len();
        let first = h.counts.iter().position(|&c| c > 0).unwrap_or(0);
        for (i, &count) in h.counts.iter().enumerate().skip(first) {
            let from = i as u64 * h.bin_width;
            let range = if h.bin_width == 1 {
                format!("{from:>width$}")
            } else {
                format!("{from:>width$}–{:<width$}", from + h.bin_width - 1)
            };
            let bar = "█".repeat(((count * 30).div_ceil(top)) as usize);
            let mark = match h.limit {
                Some(limit) if from <= limit && limit < from + h.bin_width => "  ← max_seq_len",
                _ => "",
            };
            println!("    {range} {bar:<30} {count}{mark}");
        }
    }
    println!();
    if r.is_usable() {
        println!("✓ usable: {} rows ready to train", r.usable_rows);
    } else if r.usable_rows == 0 {
        println!("✗ not usable: no row can be trained on");
    } else if r.check_trainable(true).is_err() {
        println!("✗ not usable: the file as a whole has a problem; fix it and validate again");
    } else {
        println!(
            "✗ not usable as it is: fix the errors, or skip the {} row{} with errors to train on the other {}",
            r.error_rows,
            plural(r.error_rows),
            r.usable_rows
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

//! The self-contained `report.html`: one file a non-specialist can open offline or print. Everything is
//! inline (one `<style>` block, charts as `<svg>`), nothing is fetched, no script runs, and every piece of
//! text that came from a user, a dataset or a model is escaped.

use std::fmt::Write as _;

use super::metrics::word_diff;
use super::report::{Answer, EvalReport, EvalRow, MetricInfo, ModelSummary, RowOutcome};
use super::stats::Interval;
use crate::engine::jinja::MONTHS;

/// Writing into a `String` cannot fail; this keeps the many `write!` calls short.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// Scores closer than this count as equal when an answer's score is marked above or below the base's.
const EPS: f64 = 1e-9;

/// Base model first, then one colour per adapter (cycled).
const BASE_COLOUR: &str = "#8a939e";
const TUNED_COLOURS: [&str; 5] = ["#2f6fdb", "#d9822b", "#7a4fd6", "#1f9d8a", "#c2417a"];

const STYLE: &str = r#"
:root { --fg: #1d2125; --muted: #5b6570; --line: #d8dde3; --better: #1a7f37; --worse: #c62828;
  --unclear: #8a6d00; --neutral: #3b5b8c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #f6f7f9;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.5em; margin: 0 0 8px; }
h2 { font-size: 1.2em; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 0 0 2px; }
h4 { font-size: .8em; margin: 12px 0 4px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.top, .card, details.example { background: #fff; border: 1px solid var(--line); border-radius: 8px; }
.top { padding: 16px 20px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
dl.facts ul { margin: 0; padding-left: 1.2em; }
.howto { margin: 14px 0 0; padding: 10px 14px; background: #eef4ff; border-left: 4px solid #2f6fdb; }
.notice { margin: 10px 0; padding: 8px 12px; border-left: 4px solid var(--unclear); background: #fff8e1; }
.muted, .desc, .note { color: var(--muted); }
.desc { margin: 0 0 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px; }
.card { padding: 14px 16px; }
.dir { font-size: .8em; font-weight: normal; color: var(--muted); }
.change { margin: 6px 0; padding: 4px 10px; border-left: 4px solid var(--line); }
.change .name { font-weight: 600; overflow-wrap: anywhere; }
.change .delta { font-weight: 700; }
.change .ci { color: var(--muted); }
.verdict { font-weight: 600; }
.better { border-color: var(--better); } .better .verdict { color: var(--better); }
.worse { border-color: var(--worse); } .worse .verdict { color: var(--worse); }
.unclear { border-color: var(--unclear); } .unclear .verdict { color: var(--unclear); }
.neutral { border-color: var(--neutral); } .neutral .verdict { color: var(--neutral); }
svg.chart { display: block; width: 100%; max-width: 520px; height: auto; margin-top: 8px; }
table.data { width: 100%; border-collapse: collapse; background: #fff; }
table.data th, table.data td { padding: 6px 10px; border: 1px solid var(--line); text-align: left;
  vertical-align: top; }
table.data thead th { background: #eef1f4; }
table.data th[scope="row"] { font-weight: 600; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
details.example { margin: 6px 0; border-radius: 6px; }
details.example > summary { padding: 6px 10px; cursor: pointer; }
details.example[open] > summary { border-bottom: 1px solid var(--line); }
.idx { font-weight: 700; margin-right: 6px; }
.line, .gist { color: var(--muted); margin-right: 6px; }
.preview { color: var(--fg); }
.ex-body { padding: 0 12px 12px; }
.role { font-size: .8em; font-weight: 600; color: var(--muted); margin-top: 6px; }
pre { margin: 0; padding: 8px 10px; white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word;
  font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; }
pre.ref { background: #f1f8f2; }
mark { background: #ffe58f; color: inherit; border-radius: 2px; }
.empty { font-style: italic; color: var(--muted); }
.answer h4 { font-size: .95em; text-transform: none; letter-spacing: 0; color: var(--fg);
  overflow-wrap: anywhere; }
.scores { font-size: .85em; font-weight: normal; text-transform: none; letter-spacing: 0; color: var(--fg); }
.up { color: var(--better); } .down { color: var(--worse); }
.meta { margin: 2px 0 0; font-size: .8em; color: var(--muted); }
.tag { display: inline-block; margin-right: 6px; padding: 0 7px; font-size: .8em; font-weight: 600;
  border: 1px solid; border-radius: 10px; }
.tag.improved { color: var(--better); } .tag.regressed { color: var(--worse); }
.tag.failed { color: #6d2d8c; } .tag.same { color: var(--muted); }
footer { margin: 32px 0 8px; font-size: .8em; color: var(--muted); }
@media print {
  body { background: none; font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  .top, .card, details.example, pre, pre.ref, .howto, .notice, table.data, table.data thead th
    { background: none; }
  .cards { display: block; }
  .card { margin-bottom: 12px; }
  .card, .change, tr, .msg, .answer, .reference, details.example, svg { break-inside: avoid;
    page-break-inside: avoid; }
  h2, h3, h4 { break-after: avoid; page-break-after: avoid; }
  mark { background: none; text-decoration: underline; font-weight: 700; }
  details.example > summary { cursor: auto; }
}
"#;

/// The whole `report.html` for `report`.
pub fn render(report: &EvalReport) -> String {
    let ctx = Context::new(report);
    let mut out = String::with_capacity(32 * 1024 + report.rows.len() * 3 * 1024);
    let date = readable_date(&report.created);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    put!(
        out,
        "<title>Evaluation of {} — {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&report.model),
        escape(&date)
    );
    header(&mut out, &ctx, &date);
    metric_cards(&mut out, &ctx);
    loss_table(&mut out, &ctx);
    latency_table(&mut out, &ctx);
    examples(&mut out, &ctx);
    out.push_str("<footer>Made by Loft. This file is self-contained: it loads nothing and runs no script.</footer>\n");
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// `text` safe to place in HTML content and in quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// What every section needs: the report and where the base model is among the models.
struct Context<'a> {
    report: &'a EvalReport,
    /// Index of the base model (the one without an adapter) in `report.models`, none with `--no-base`.
    base: Option<usize>,
}

impl<'a> Context<'a> {
    fn new(report: &'a EvalReport) -> Self {
        let base = report.models.iter().position(|m| m.adapter.is_none());
        Context { report, base }
    }

    fn base_model(&self) -> Option<&'a ModelSummary> {
        self.base.map(|b| &self.report.models[b])
    }

    /// The fine-tuned models with their index in `report.models`.
    fn tuned(&self) -> impl Iterator<Item = (usize, &'a ModelSummary)> + '_ {
        self.report
            .models
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != self.base)
    }

    fn colour(&self, index: usize) -> &'static str {
        if Some(index) == self.base {
            return BASE_COLOUR;
        }
        let position = self.tuned().position(|(i, _)| i == index).unwrap_or(0);
        TUNED_COLOURS[position % TUNED_COLOURS.len()]
    }
}

// ---------------------------------------------------------------------------------------------------
// Numbers

/// How a metric's values read: a share of 100%, or a ratio such as answer length over reference length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Percent,
    Ratio,
}

fn scale(metric: &MetricInfo) -> Scale {
    if metric.key == "length_ratio" || metric.higher_is_better.is_none() {
        Scale::Ratio
    } else {
        Scale::Percent
    }
}

fn fmt_value(value: f64, scale: Scale) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    match scale {
        Scale::Percent => format!("{:.1}%", value * 100.0),
        Scale::Ratio => format!("{value:.2}×"),
    }
}

/// One example's score: whole percentages without a trailing ".0" (0%, 100%, 85.3%).
fn fmt_score(value: f64, scale: Scale) -> String {
    let text = fmt_value(value, scale);
    match text.strip_suffix(".0%") {
        Some(whole) => format!("{whole}%"),
        None => text,
    }
}

fn fmt_range(low: f64, high: f64, scale: Scale) -> String {
    if !low.is_finite() || !high.is_finite() {
        return "—".into();
    }
    match scale {
        Scale::Percent => format!("{:.1}–{:.1}%", low * 100.0, high * 100.0),
        Scale::Ratio => format!("{low:.2}–{high:.2}×"),
    }
}

/// A signed number with a real minus sign, and no sign on a value that rounds to zero.
fn signed(value: f64, decimals: usize) -> String {
    let magnitude = format!("{:.*}", decimals, value.abs());
    if magnitude.bytes().all(|b| b == b'0' || b == b'.') {
        magnitude
    } else if value > 0.0 {
        format!("+{magnitude}")
    } else {
        format!("−{magnitude}")
    }
}

/// A change between two models: percentage points for scores, plain difference for ratios.
fn fmt_change(value: f64, scale: Scale) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    match scale {
        Scale::Percent => format!("{} pts", signed(value * 100.0, 1)),
        Scale::Ratio => signed(value, 2),
    }
}

fn fmt_change_range(low: f64, high: f64, scale: Scale) -> String {
    if !low.is_finite() || !high.is_finite() {
        return "—".into();
    }
    match scale {
        Scale::Percent => format!(
            "{} to {} pts",
            signed(low * 100.0, 1),
            signed(high * 100.0, 1)
        ),
        Scale::Ratio => format!("{} to {}", signed(low, 2), signed(high, 2)),
    }
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "—".into()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) as "31 January 2024, 14:25:02 UTC"; anything else as it is.
fn readable_date(created: &str) -> String {
    let parse = || -> Option<String> {
        let (date, time) = created.split_once('-')?;
        if date.len() != 8
            || time.len() != 6
            || !date.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let month: usize = date[4..6].parse().ok()?;
        let day: u32 = date[6..8].parse().ok()?;
        let month = MONTHS.get(month.checked_sub(1)?)?;
        if !(1..=31).contains(&day) {
            return None;
        }
        Some(format!(
            "{day} {month} {}, {}:{}:{} UTC",
            &date[0..4],
            &time[0..2],
            &time[2..4],
            &time[4..6]
        ))
    };
    parse().unwrap_or_else(|| created.to_string())
}

/// Whether a change is better, worse or could be chance, as a CSS class and a few words.
fn verdict(metric: &MetricInfo, change: &Interval) -> (&'static str, &'static str) {
    let above = change.low.is_finite() && change.low > 0.0;
    let below = change.high.is_finite() && change.high < 0.0;
    match metric.higher_is_better {
        None => {
            let longer = metric.key == "length_ratio";
            match (above, below) {
                (true, _) if longer => ("neutral", "reliably longer answers"),
                (_, true) if longer => ("neutral", "reliably shorter answers"),
                (true, _) => ("neutral", "reliably higher"),
                (_, true) => ("neutral", "reliably lower"),
                _ => ("neutral", "no clear change"),
            }
        }
        Some(higher) => {
            if (above && higher) || (below && !higher) {
                ("better", "reliably better")
            } else if above || below {
                ("worse", "reliably worse")
            } else {
                ("unclear", "unclear — could be chance")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Sections

fn header(out: &mut String, ctx: &Context, date: &str) {
    let report = ctx.report;
    let set = &report.eval_set;
    put!(
        out,
        "<header class=\"top\">\n<h1>Evaluation of {}</h1>\n<dl class=\"facts\">\n",
        escape(&report.model)
    );
    put!(
        out,
        "<dt>Base model</dt><dd>{}</dd>\n",
        escape(&report.model)
    );
    put!(
        out,
        "<dt>Evaluation set</dt><dd>{} <span class=\"muted\">({}, {} {})</span></dd>\n",
        escape(&set.path),
        escape(&set.source),
        set.rows,
        if set.rows == 1 { "example" } else { "examples" }
    );
    put!(out, "<dt>Date</dt><dd>{}</dd>\n", escape(date));
    put!(
        out,
        "<dt>Answer length limit</dt><dd>{} new tokens</dd>\n",
        report.max_new_tokens
    );
    let decoding = match report.temperature {
        Some(t) => format!("sampled at temperature {t}"),
        None => "greedy (the most likely token each time)".into(),
    };
    put!(out, "<dt>Decoding</dt><dd>{}</dd>\n", escape(&decoding));
    if !report.stop.is_empty() {
        let stops: Vec<String> = report
            .stop
            .iter()
            .map(|s| format!("<code>{}</code>", escape(s)))
            .collect();
        put!(out, "<dt>Stop text</dt><dd>{}</dd>\n", stops.join(", "));
    }
    if report.loose_match {
        out.push_str("<dt>Exact match</dt><dd>ignores case and extra spaces</dd>\n");
    }
    out.push_str("<dt>Models compared</dt><dd><ul>\n");
    if report.models.is_empty() {
        out.push_str("<li>none</li>\n");
    }
    for model in &report.models {
        match &model.adapter {
            None => put!(
                out,
                "<li><b>{}</b> — the base model, not fine-tuned</li>\n",
                escape(&model.name)
            ),
            Some(adapter) => put!(
                out,
                "<li><b>{}</b> — fine-tuned adapter <span class=\"muted\">{}</span></li>\n",
                escape(&model.name),
                escape(adapter)
            ),
        }
    }
    out.push_str("</ul></dd>\n</dl>\n");
    put!(
        out,
        "<p class=\"howto\"><b>How to read this.</b> Every model answered the same {} examples and each \
         answer was scored against the example's reference answer. Each measure shows the average score \
         and a range, the 95% interval: it comes from resampling the examples (bootstrap) and shows how \
         far the average could move with a different sample of similar examples. A change is the \
         fine-tuned model's score minus the base model's, example by example. An improvement whose \
         interval stays above 0 is reliable; when the interval includes 0 the difference could be \
         chance, and more examples would tell. Scores are percentages (100% is best); answer length is \
         shown as a ratio to the reference's length (1.00× is the same length). Examples are folded \
         below, the ones that got worse are open; open the ones you want before printing.</p>\n",
        set.rows
    );
    if ctx.base.is_none() {
        out.push_str(
            "<p class=\"notice\">The base model was left out of this evaluation, so no changes against it \
             are shown: only each model's own scores.</p>\n",
        );
    }
    out.push_str("</header>\n");
}

fn metric_cards(out: &mut String, ctx: &Context) {
    let report = ctx.report;
    out.push_str("<section id=\"metrics\">\n<h2>Scores</h2>\n");
    if report.metrics.is_empty() {
        out.push_str("<p class=\"muted\">No metrics were scored.</p>\n</section>\n");
        return;
    }
    out.push_str("<div class=\"cards\">\n");
    for metric in &report.metrics {
        metric_card(out, ctx, metric);
    }
    out.push_str("</div>\n</section>\n");
}

fn metric_card(out: &mut String, ctx: &Context, metric: &MetricInfo) {
    let report = ctx.report;
    let scale = scale(metric);
    let direction = match metric.higher_is_better {
        Some(true) => "higher is better",
        Some(false) => "lower is better",
        None => "neither direction is better",
    };
    put!(
        out,
        "<section class=\"card metric\">\n<h3>{} <span class=\"dir\">{direction}</span></h3>\n",
        escape(&metric.label)
    );
    let mut desc = escape(&metric.description);
    let scored = report
        .models
        .iter()
        .filter_map(|m| m.aggregates.get(&metric.key))
        .map(|a| a.n)
        .max();
    if let Some(n) = scored {
        if n < report.rows.len() {
            put!(desc, " Scored on {n} of {} examples.", report.rows.len());
        }
    }
    put!(out, "<p class=\"desc\">{desc}</p>\n");

    if let Some(base) = ctx.base_model() {
        let base_mean = base
            .aggregates
            .get(&metric.key)
            .map_or(f64::NAN, |a| a.mean);
        for (_, model) in ctx.tuned() {
            let mean = model
                .aggregates
                .get(&metric.key)
                .map_or(f64::NAN, |a| a.mean);
            let (class, words, delta, range) = match model.change_vs_base.get(&metric.key) {
                Some(change) => {
                    let (class, words) = verdict(metric, change);
                    (
                        class,
                        words,
                        fmt_change(change.mean, scale),
                        format!("95%: {}", fmt_change_range(change.low, change.high, scale)),
                    )
                }
                None => ("unclear", "no change measured", "—".into(), String::new()),
            };
            put!(
                out,
                "<div class=\"change {class}\"><span class=\"name\">{}</span>: {} → {} \
                 <span class=\"delta\">{}</span> <span class=\"ci\">({})</span> \
                 <span class=\"verdict\">{}</span></div>\n",
                escape(&model.name),
                fmt_value(base_mean, scale),
                fmt_value(mean, scale),
                escape(&delta),
                escape(&range),
                words
            );
        }
    }
    chart(out, ctx, metric);
    out.push_str("</section>\n");
}

/// Keeps at most `max` characters, marking a cut with an ellipsis.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One horizontal bar per model with its 95% interval as a whisker and the values written beside it.
fn chart(out: &mut String, ctx: &Context, metric: &MetricInfo) {
    const WIDTH: f64 = 500.0;
    const LABEL_END: f64 = 124.0;
    const X0: f64 = 130.0;
    const X1: f64 = 380.0;
    const VALUE_X: f64 = 388.0;
    const TOP: f64 = 8.0;
    const ROW: f64 = 34.0;
    const BAR: f64 = 16.0;
    const AXIS: f64 = 24.0;

    let report = ctx.report;
    let scale = scale(metric);
    let (max, ticks) = match scale {
        Scale::Percent => (1.0, vec![0.0, 0.25, 0.5, 0.75, 1.0]),
        Scale::Ratio => {
            let top = report
                .models
                .iter()
                .filter_map(|m| m.aggregates.get(&metric.key))
                .flat_map(|a| [a.mean, a.high])
                .filter(|v| v.is_finite())
                .fold(1.0_f64, f64::max)
                * 1.05;
            let step = if top <= 2.0 {
                0.5
            } else if top <= 4.0 {
                1.0
            } else {
                (top / 4.0).ceil()
            };
            let max = (top / step).ceil() * step;
            let count = (max / step).round() as usize;
            (max, (0..=count).map(|i| i as f64 * step).collect())
        }
    };
    let x = |v: f64| X0 + (v.clamp(0.0, max) / max) * (X1 - X0);
    let rows = report.models.len().max(1) as f64;
    let plot_bottom = TOP + rows * ROW;
    let height = plot_bottom + AXIS;
    put!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{} by model, with 95% intervals\" font-size=\"12\">\n",
        escape(&metric.label)
    );
    // Grid and axis.
    for &tick in &ticks {
        let tx = x(tick);
        let label = match scale {
            Scale::Percent => format!("{:.0}%", tick * 100.0),
            Scale::Ratio => format!("{tick}×"),
        };
        put!(
            out,
            "<line x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{plot_bottom}\" stroke=\"#e3e7eb\" />\n\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#5b6570\">{label}</text>\n",
            plot_bottom + 16.0
        );
    }
    if scale == Scale::Ratio {
        let one = x(1.0);
        put!(
            out,
            "<line x1=\"{one:.1}\" y1=\"{TOP}\" x2=\"{one:.1}\" y2=\"{plot_bottom}\" stroke=\"#5b6570\" \
             stroke-dasharray=\"4 3\" />\n"
        );
    }
    put!(
        out,
        "<line x1=\"{X0}\" y1=\"{plot_bottom}\" x2=\"{X1}\" y2=\"{plot_bottom}\" stroke=\"#5b6570\" />\n"
    );
    for (i, model) in report.models.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        let mid = y + ROW / 2.0;
        let aggregate = model.aggregates.get(&metric.key);
        let (value, range) = match aggregate {
            Some(a) => (fmt_value(a.mean, scale), fmt_range(a.low, a.high, scale)),
            None => ("—".into(), String::new()),
        };
        put!(
            out,
            "<g>\n<title>{}: {value} (95%: {range})</title>\n\
             <text x=\"{LABEL_END}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            escape(&model.name),
            mid + 4.0,
            escape(&truncate(&model.name, 18))
        );
        if let Some(a) = aggregate.filter(|a| a.mean.is_finite()) {
            put!(
                out,
                "<rect x=\"{X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"{}\" />\n",
                mid - BAR / 2.0,
                x(a.mean) - X0,
                ctx.colour(i)
            );
            if a.low.is_finite() && a.high.is_finite() {
                let (lo, hi) = (x(a.low), x(a.high));
                put!(
                    out,
                    "<line x1=\"{lo:.1}\" y1=\"{mid:.1}\" x2=\"{hi:.1}\" y2=\"{mid:.1}\" stroke=\"#1d2125\" stroke-width=\"1.5\" />\n\
                     <line x1=\"{lo:.1}\" y1=\"{:.1}\" x2=\"{lo:.1}\" y2=\"{:.1}\" stroke=\"#1d2125\" stroke-width=\"1.5\" />\n\
                     <line x1=\"{hi:.1}\" y1=\"{:.1}\" x2=\"{hi:.1}\" y2=\"{:.1}\" stroke=\"#1d2125\" stroke-width=\"1.5\" />\n",
                    mid - 5.0,
                    mid + 5.0,
                    mid - 5.0,
                    mid + 5.0
                );
            }
        }
        put!(
            out,
            "<text x=\"{VALUE_X}\" y=\"{:.1}\" font-weight=\"700\">{value}</text>\n\
             <text x=\"{VALUE_X}\" y=\"{:.1}\" font-size=\"10\" fill=\"#5b6570\">{range}</text>\n</g>\n",
            mid - 2.0,
            mid + 10.0
        );
    }
    out.push_str("</svg>\n");
}

fn loss_table(out: &mut String, ctx: &Context) {
    let report = ctx.report;
    out.push_str(
        "<section id=\"loss\">\n<h2>Loss on the reference answers</h2>\n<p class=\"note\">How well each \
         model predicts the reference answers, word piece by word piece. Lower is better; a perplexity \
         of 1 would mean it predicts them perfectly.</p>\n",
    );
    if report.models.is_empty() {
        out.push_str("<p class=\"muted\">No models were evaluated.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"data\">\n<thead><tr><th>Model</th><th>Loss</th><th>Perplexity</th></tr></thead>\n<tbody>\n",
    );
    let base_loss = ctx.base_model().and_then(|b| b.eval_loss);
    for (i, model) in report.models.iter().enumerate() {
        let mut loss = fmt_opt(model.eval_loss, 3);
        if let (Some(base), Some(own)) = (base_loss, model.eval_loss) {
            if Some(i) != ctx.base && base.is_finite() && own.is_finite() {
                let class = if own < base - EPS {
                    "up"
                } else if own > base + EPS {
                    "down"
                } else {
                    "muted"
                };
                put!(
                    loss,
                    " <span class=\"{class}\">({} vs base)</span>",
                    signed(own - base, 3)
                );
            }
        }
        put!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{loss}</td><td class=\"num\">{}</td></tr>\n",
            escape(&model.name),
            fmt_opt(model.perplexity, 2)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn latency_table(out: &mut String, ctx: &Context) {
    let report = ctx.report;
    out.push_str(
        "<section id=\"speed\">\n<h2>Speed and cost</h2>\n<p class=\"note\">Averages per answer, measured \
         on the machine that ran this evaluation. Tokens are the word pieces a model reads and writes; \
         tokens per second includes batching.</p>\n",
    );
    if report.models.is_empty() {
        out.push_str("<p class=\"muted\">No models were evaluated.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"data\">\n<thead><tr><th>Model</th><th>Tokens in</th><th>Tokens out</th>\
         <th>Time to first token</th><th>Time per token</th><th>Tokens per second</th></tr></thead>\n<tbody>\n",
    );
    for model in &report.models {
        let l = &model.latency;
        put!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&model.name),
            fmt_opt(Some(l.tokens_in), 1),
            fmt_opt(Some(l.tokens_out), 1),
            fmt_ms(l.time_to_first_token_ms),
            if l.ms_per_token.is_finite() {
                format!("{:.1} ms", l.ms_per_token)
            } else {
                "—".into()
            },
            fmt_opt(Some(l.tokens_per_second), 1)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

// ---------------------------------------------------------------------------------------------------
// Examples

/// How an example went for the fine-tuned models against the base, on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Improved,
    Regressed,
    /// Every model scored zero.
    Failed,
    Same,
    /// Nothing to compare (no base model, or no metric with a direction scored for both).
    Unscored,
}

impl Outcome {
    fn class(self) -> &'static str {
        match self {
            Outcome::Improved => "improved",
            Outcome::Regressed => "regressed",
            Outcome::Failed => "failed",
            Outcome::Same => "same",
            Outcome::Unscored => "",
        }
    }

    fn label(self, models: usize) -> &'static str {
        match self {
            Outcome::Improved => "improved",
            Outcome::Regressed => "regressed",
            Outcome::Failed if models == 2 => "failed by both",
            Outcome::Failed if models == 1 => "failed",
            Outcome::Failed => "failed by all",
            Outcome::Same => "same",
            Outcome::Unscored => "",
        }
    }
}

/// Each example's outcome as the report judges it (see [`EvalReport::row_outcomes`]), and the
/// metric it was judged on.
fn outcomes<'a>(ctx: &Context<'a>) -> Vec<(Outcome, Option<&'a MetricInfo>)> {
    let metric = ctx.report.main_metric();
    ctx.report
        .row_outcomes()
        .into_iter()
        .map(|o| {
            let outcome = match o {
                Some(RowOutcome::Improved) => Outcome::Improved,
                Some(RowOutcome::Regressed) => Outcome::Regressed,
                Some(RowOutcome::FailedByBoth) => Outcome::Failed,
                Some(RowOutcome::Same) => Outcome::Same,
                None => Outcome::Unscored,
            };
            (outcome, metric)
        })
        .collect()
}

/// The system message every example starts with, when they all share one: shown once, not per example.
fn shared_system(rows: &[EvalRow]) -> Option<&str> {
    let first = rows.first()?.prompt.first()?;
    if rows.len() < 2 || first.role != "system" {
        return None;
    }
    rows.iter()
        .all(|r| {
            r.prompt
                .first()
                .is_some_and(|m| m.role == "system" && m.content == first.content)
        })
        .then_some(first.content.as_str())
}

fn examples(out: &mut String, ctx: &Context) {
    let report = ctx.report;
    out.push_str("<section id=\"examples\">\n<h2>Examples</h2>\n");
    if report.rows.is_empty() {
        out.push_str(
            "<p class=\"empty\">No examples: the evaluation set had no rows, so there are no answers to show.</p>\n</section>\n",
        );
        return;
    }
    let outcomes = outcomes(ctx);
    let count = |o: Outcome| outcomes.iter().filter(|(x, _)| *x == o).count();
    let models = report.models.len();
    let mut parts = Vec::new();
    if ctx.base.is_some() {
        for o in [Outcome::Improved, Outcome::Regressed, Outcome::Same] {
            parts.push(format!("{} {}", count(o), o.label(models)));
        }
    }
    parts.push(format!(
        "{} {}",
        count(Outcome::Failed),
        Outcome::Failed.label(models)
    ));
    let first_metric = outcomes.iter().find_map(|(_, m)| *m);
    put!(
        out,
        "<p>{} {}",
        report.rows.len(),
        if report.rows.len() == 1 {
            "example"
        } else {
            "examples"
        }
    );
    if let Some(metric) = first_metric {
        put!(
            out,
            ": {}, judged on {}",
            parts.join(", "),
            escape(&metric.label)
        );
        if ctx.base.is_some() {
            out.push_str(" (a fine-tuned model scoring below the base counts as regressed)");
        }
    }
    out.push_str(".</p>\n");
    out.push_str(
        "<p class=\"note\">In each answer, <mark>highlighted</mark> words do not appear, in that order, in \
         the reference answer.</p>\n",
    );
    let system = shared_system(&report.rows);
    if let Some(system) = system {
        put!(
            out,
            "<h4>System message of every example</h4>\n<pre>{}</pre>\n",
            escape(system)
        );
    }
    for (row, (outcome, metric)) in report.rows.iter().zip(&outcomes) {
        example(out, ctx, row, *outcome, *metric, system.is_some());
    }
    out.push_str("</section>\n");
}

fn preview(row: &EvalRow) -> String {
    let message = row
        .prompt
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or(row.prompt.last());
    let text = message.map_or("", |m| m.content.as_str());
    let collapsed: Vec<&str> = text.split_whitespace().collect();
    truncate(&collapsed.join(" "), 90)
}

fn example(
    out: &mut String,
    ctx: &Context,
    row: &EvalRow,
    outcome: Outcome,
    metric: Option<&MetricInfo>,
    skip_system: bool,
) {
    let report = ctx.report;
    let open = if outcome == Outcome::Regressed {
        " open"
    } else {
        ""
    };
    put!(
        out,
        "<details class=\"example {}\"{open}>\n<summary><span class=\"idx\">#{}</span>",
        outcome.class(),
        row.index + 1
    );
    if let Some(line) = row.line {
        put!(out, "<span class=\"line\">line {line}</span>");
    }
    if outcome != Outcome::Unscored {
        put!(
            out,
            "<span class=\"tag {}\">{}</span>",
            outcome.class(),
            outcome.label(report.models.len())
        );
    }
    if let Some(metric) = metric {
        let scale = scale(metric);
        let scores: Vec<String> = report
            .models
            .iter()
            .zip(&row.answers)
            .filter_map(|(m, a)| {
                let s = a.scores.get(&metric.key)?;
                Some(format!("{} {}", escape(&m.name), fmt_score(*s, scale)))
            })
            .collect();
        let joined = if ctx.base == Some(0) && scores.len() > 1 {
            format!("{} → {}", scores[0], scores[1..].join(", "))
        } else {
            scores.join(", ")
        };
        put!(
            out,
            "<span class=\"gist\">{}: {joined}</span>",
            escape(&metric.label)
        );
    }
    put!(
        out,
        "<span class=\"preview\">{}</span></summary>\n<div class=\"ex-body\">\n<h4>Prompt</h4>\n",
        escape(&preview(row))
    );
    let messages = if skip_system {
        &row.prompt[1..]
    } else {
        &row.prompt[..]
    };
    if messages.is_empty() {
        out.push_str("<p class=\"empty\">(empty prompt)</p>\n");
    }
    for message in messages {
        put!(
            out,
            "<div class=\"msg\"><div class=\"role\">{}</div><pre>{}</pre></div>\n",
            escape(&message.role),
            escape(&message.content)
        );
    }
    put!(
        out,
        "<div class=\"reference\"><h4>Reference answer</h4><pre class=\"ref\">{}</pre></div>\n",
        escape(&row.reference)
    );
    let base_answer = ctx.base.and_then(|b| row.answers.get(b));
    for (i, (model, answer)) in report.models.iter().zip(&row.answers).enumerate() {
        let compare = if Some(i) == ctx.base {
            None
        } else {
            base_answer
        };
        answer_block(out, ctx, model, answer, compare, &row.reference);
    }
    out.push_str("</div>\n</details>\n");
}

fn answer_block(
    out: &mut String,
    ctx: &Context,
    model: &ModelSummary,
    answer: &Answer,
    base: Option<&Answer>,
    reference: &str,
) {
    let mut scores = Vec::new();
    for metric in &ctx.report.metrics {
        let Some(&score) = answer.scores.get(&metric.key) else {
            continue;
        };
        let mut text = format!(
            "{} {}",
            escape(&metric.label),
            fmt_score(score, scale(metric))
        );
        let base_score = base.and_then(|b| b.scores.get(&metric.key)).copied();
        if let (Some(higher), Some(base_score)) = (metric.higher_is_better, base_score) {
            let (up, down) = (score > base_score + EPS, score < base_score - EPS);
            if (up && higher) || (down && !higher) {
                text.push_str(" <span class=\"up\">▲</span>");
            } else if up || down {
                text.push_str(" <span class=\"down\">▼</span>");
            }
        }
        scores.push(text);
    }
    put!(
        out,
        "<div class=\"answer\"><h4>{} <span class=\"scores\">{}</span></h4>",
        escape(&model.name),
        scores.join(" · ")
    );
    if answer.text.trim().is_empty() {
        out.push_str("<pre class=\"empty\">(empty answer)</pre>");
    } else {
        put!(out, "<pre>{}</pre>", highlighted(&answer.text, reference));
    }
    let stop = match answer.stop.as_str() {
        "stop_token" => "finished".to_string(),
        "max_tokens" => "cut off at the answer length limit".to_string(),
        "context_full" => "cut off: the model's context was full".to_string(),
        "cancelled" => "cancelled".to_string(),
        other => escape(other),
    };
    put!(
        out,
        "<p class=\"meta\">{} {} · {stop}</p></div>\n",
        answer.tokens_out,
        if answer.tokens_out == 1 {
            "token"
        } else {
            "tokens"
        }
    );
}

/// The answer escaped, with each run of words that differ from the reference in one `<mark>`.
fn highlighted(answer: &str, reference: &str) -> String {
    let mut out = String::with_capacity(answer.len() + 64);
    let mut run = String::new();
    let flush = |out: &mut String, run: &mut String| {
        if run.is_empty() {
            return;
        }
        let word = run.trim_end();
        put!(
            out,
            "<mark>{}</mark>{}",
            escape(word),
            escape(&run[word.len()..])
        );
        run.clear();
    };
    for (word, differs) in word_diff(answer, reference) {
        // Spaces between two differing words stay inside one mark.
        if differs || (!run.is_empty() && word.trim().is_empty()) {
            run.push_str(&word);
        } else {
            flush(&mut out, &mut run);
            out.push_str(&escape(&word));
        }
    }
    flush(&mut out, &mut run);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::chat::ChatMessage;
    use crate::engine::eval::report::{EvalSetInfo, Latency};

    const HOSTILE_SCRIPT: &str = "<script>alert(1)</script>";
    const HOSTILE_QUOTES: &str = "\"quotes\" & ampersands";

    fn interval(mean: f64, spread: f64, n: usize) -> Interval {
        Interval {
            mean,
            low: mean - spread,
            high: mean + spread,
            n,
        }
    }

    fn metrics() -> Vec<MetricInfo> {
        vec![
            MetricInfo {
                key: "exact_match".into(),
                label: "Exact match".into(),
                description: "Share of answers identical to the reference.".into(),
                higher_is_better: Some(true),
            },
            MetricInfo {
                key: "rouge_l".into(),
                label: "ROUGE-L".into(),
                description: "Overlap of words in order with the reference.".into(),
                higher_is_better: Some(true),
            },
            MetricInfo {
                key: "length_ratio".into(),
                label: "Answer length".into(),
                description: "Answer length over reference length.".into(),
                higher_is_better: None,
            },
        ]
    }

    fn aggregates(values: [(f64, f64); 3], n: usize) -> BTreeMap<String, Interval> {
        ["exact_match", "rouge_l", "length_ratio"]
            .iter()
            .zip(values)
            .map(|(k, (mean, spread))| (k.to_string(), interval(mean, spread, n)))
            .collect()
    }

    fn model(name: &str, adapter: Option<&str>, means: [(f64, f64); 3]) -> ModelSummary {
        ModelSummary {
            name: name.into(),
            adapter: adapter.map(Into::into),
            eval_loss: adapter.map_or(Some(1.9), |_| Some(1.2)),
            perplexity: adapter.map_or(Some(6.69), |_| None),
            aggregates: aggregates(means, 3),
            change_vs_base: BTreeMap::new(),
            latency: Latency {
                tokens_in: 40.0,
                tokens_out: 12.5,
                time_to_first_token_ms: 85.0,
                ms_per_token: 21.3,
                tokens_per_second: 47.0,
            },
        }
    }

    fn answer(text: &str, em: f64, rouge: f64, ratio: f64) -> Answer {
        Answer {
            text: text.into(),
            scores: [
                ("exact_match", em),
                ("rouge_l", rouge),
                ("length_ratio", ratio),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            tokens_in: 40,
            tokens_out: 12,
            time_to_first_token_ms: 80.0,
            ms_per_token: 20.0,
            stop: "stop_token".into(),
        }
    }

    fn row(index: usize, prompt: &str, reference: &str, answers: Vec<Answer>) -> EvalRow {
        EvalRow {
            index,
            line: Some(index + 1),
            row: Some(index + 1),
            prompt: vec![
                ChatMessage::new("system", "You are terse."),
                ChatMessage::new("user", prompt),
            ],
            reference: reference.into(),
            answers,
        }
    }

    /// Base plus one adapter, three metrics, three examples with hostile text in every user field.
    fn sample() -> EvalReport {
        let base = model("base", None, [(0.33, 0.3), (0.5, 0.2), (1.4, 0.3)]);
        let mut tuned = model(
            "tuned <b>\"x\"</b>",
            Some("runs/x/<adapter>&'"),
            [(0.67, 0.3), (0.8, 0.1), (1.05, 0.1)],
        );
        tuned.change_vs_base = [
            ("exact_match", interval(0.34, 0.4, 3)),
            ("rouge_l", interval(0.3, 0.25, 3)),
            ("length_ratio", interval(-0.35, 0.2, 3)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        EvalReport {
            created: "20240131-142502".into(),
            model: "org/model <img onerror=alert(1)>".into(),
            eval_set: EvalSetInfo {
                path: "data/<evil>.jsonl".into(),
                source: "file".into(),
                rows: 3,
            },
            max_new_tokens: 256,
            temperature: None,
            stop: vec!["</answer>".into()],
            loose_match: true,
            metrics: metrics(),
            models: vec![base, tuned],
            rows: vec![
                row(
                    0,
                    HOSTILE_SCRIPT,
                    HOSTILE_QUOTES,
                    vec![
                        answer("<svg onload=alert(1)> nope", 0.0, 0.1, 2.0),
                        answer("\"quotes\" & ampersands", 1.0, 1.0, 1.0),
                    ],
                ),
                row(
                    1,
                    "What is 2 + 2?",
                    "4",
                    vec![
                        answer("4", 1.0, 1.0, 1.0),
                        answer("It is five.", 0.0, 0.0, 3.0),
                    ],
                ),
                row(
                    2,
                    "Capital of France?",
                    "Paris",
                    vec![answer("Lyon", 0.0, 0.0, 1.0), answer("Lyon", 0.0, 0.0, 1.0)],
                ),
            ],
        }
    }

    const VOID: [&str; 14] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "param",
    ];

    /// Every opened element closes, in order; void elements and `<x ... />` need no closing tag.
    fn assert_well_formed(html: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(open) = rest.find('<') {
            rest = &rest[open..];
            if let Some(after) = rest.strip_prefix("<!--") {
                let end = after.find("-->").expect("unclosed comment");
                rest = &after[end + 3..];
                continue;
            }
            let end = rest.find('>').expect("unclosed tag");
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') {
                assert!(
                    tag.eq_ignore_ascii_case("!DOCTYPE html"),
                    "odd declaration {tag}"
                );
                continue;
            }
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            assert!(
                !name.is_empty(),
                "stray '<' before {:?}",
                &rest[..rest.len().min(40)]
            );
            if closing {
                let top = stack.pop();
                assert_eq!(
                    top.as_deref(),
                    Some(name.as_str()),
                    "</{name}> closes {top:?}"
                );
            } else if tag.ends_with('/') || VOID.contains(&name.as_str()) {
                continue;
            } else {
                if name == "style" {
                    let close = rest.find("</style>").expect("unclosed style");
                    assert!(!rest[..close].contains('<'), "'<' inside <style>");
                }
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    }

    /// Every '&' starts one of the entities `escape` writes.
    fn assert_entities(html: &str) {
        for (i, _) in html.match_indices('&') {
            let tail = &html[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| tail.starts_with(e)),
                "bare '&' at {:?}",
                &tail[..tail.len().min(30)]
            );
        }
    }

    fn assert_self_contained(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>"));
        for banned in [
            "http://", "https://", "src=", "<script", "//cdn", "url(", "@import", "<img", "<link",
        ] {
            assert!(!html.contains(banned), "found {banned:?}");
        }
        assert_well_formed(html);
        assert_entities(html);
    }

    #[test]
    fn renders_a_safe_self_contained_document() {
        let report = sample();
        let html = render(&report);
        assert_self_contained(&html);

        assert!(!html.contains(HOSTILE_SCRIPT));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains(HOSTILE_QUOTES));
        assert!(html.contains("&quot;quotes&quot; &amp; ampersands"));
        assert!(!html.contains("<svg onload"));
        assert!(html.contains("&lt;svg"));
        assert!(html.contains("tuned &lt;b&gt;&quot;x&quot;&lt;/b&gt;"));
        assert!(html.contains("runs/x/&lt;adapter&gt;&amp;&#39;"));
        assert!(html.contains("data/&lt;evil&gt;.jsonl"));

        for metric in &report.metrics {
            assert!(html.contains(&escape(&metric.label)), "{}", metric.label);
        }
        for model in &report.models {
            assert!(html.contains(&escape(&model.name)), "{}", model.name);
        }
        assert!(html.contains("31 January 2024, 14:25:02 UTC"));
        assert!(html.contains("95% interval"));
        assert!(html.contains("1.05×"), "length ratio shown as a ratio");
        assert!(
            html.contains("66.7%") || html.contains("67.0%"),
            "scores as percentages"
        );
        assert!(html.contains("+34.0 pts"));
        assert!(
            html.contains("reliably better"),
            "rouge interval excludes 0"
        );
        assert!(
            html.contains("unclear — could be chance"),
            "exact match interval includes 0"
        );
        assert!(html.contains("reliably shorter answers"));
        assert_eq!(
            html.matches("<svg class=\"chart\"").count(),
            3,
            "one chart per metric"
        );
        assert!(html.contains("—"), "missing perplexity shown as a dash");

        // Example 1 regressed (base right, tuned wrong): open; the others are folded.
        assert_eq!(
            html.matches("<details class=\"example regressed\" open>")
                .count(),
            1
        );
        assert!(html.contains("<details class=\"example improved\">"));
        assert!(html.contains("<details class=\"example failed\">"));
        assert!(html.contains(">failed by both<"));
        assert!(html.contains("line 2"));
        // The shared system message is shown once.
        assert_eq!(html.matches("You are terse.").count(), 1);
        // Words differing from the reference are marked.
        assert!(html.contains("<mark>It is five.</mark>"));
    }

    #[test]
    fn renders_without_a_base_model() {
        let mut report = sample();
        report.models.remove(0);
        report.models[0].change_vs_base.clear();
        for row in &mut report.rows {
            row.answers.remove(0);
        }
        let html = render(&report);
        assert_self_contained(&html);
        assert!(html.contains("base model was left out"));
        assert!(!html.contains("class=\"change "));
        assert!(!html.contains(" open>"));
        assert!(html.contains(&escape(&report.models[0].name)));
    }

    #[test]
    fn renders_without_examples() {
        let mut report = sample();
        report.rows.clear();
        report.eval_set.rows = 0;
        let html = render(&report);
        assert_self_contained(&html);
        assert!(html.contains("No examples"));
        assert!(!html.contains("<details"));

        let mut bare = sample();
        bare.rows.clear();
        bare.metrics.clear();
        bare.models.clear();
        bare.created = "not a date".into();
        let html = render(&bare);
        assert_self_contained(&html);
        assert!(html.contains("No metrics were scored"));
    }

    #[test]
    fn differing_words_are_marked_and_escaped() {
        assert_eq!(highlighted("x <y> z", "x z"), "x <mark>&lt;y&gt;</mark> z");
    }

    #[test]
    fn numbers_read_plainly() {
        assert_eq!(signed(-0.0004, 1), "0.0");
        assert_eq!(signed(-1.26, 1), "−1.3");
        assert_eq!(fmt_change(0.123, Scale::Percent), "+12.3 pts");
        assert_eq!(fmt_value(1.123, Scale::Ratio), "1.12×");
        assert_eq!(fmt_score(1.0, Scale::Percent), "100%");
        assert_eq!(fmt_score(0.853, Scale::Percent), "85.3%");
        assert_eq!(fmt_value(f64::NAN, Scale::Percent), "—");
        assert_eq!(readable_date("20241301-000000"), "20241301-000000");
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}

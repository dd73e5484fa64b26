//! Evaluation: base vs fine-tuned on the same held-out examples. Answers are generated in batches,
//! scored with task metrics chosen from the data, summarised with bootstrap intervals, and written
//! as `report.json`, `rows.jsonl` and a self-contained `report.html`.

pub mod html;
pub mod metrics;
pub mod nearest;
pub mod report;
pub mod run;
pub mod stats;

pub use report::{
    Answer, EvalReport, EvalRow, EvalSetInfo, Latency, MetricInfo, ModelSummary, RowOutcome,
};
pub use run::{
    evaluate, run_request, Contender, EvalEvent, EvalProgress, EvalRequest, EvalSet, EvalSettings,
    EvalStage,
};
pub use stats::Interval;

use std::path::Path;

use crate::engine::error::{ModelError, Result};
use crate::engine::fsutil::write_atomic;

/// Write `report.json` (everything), `rows.jsonl` (one example per line) and the self-contained
/// `report.html` into `dir`, creating it; each file is written whole or not at all.
pub fn write_report(report: &EvalReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes()).map_err(|e| ModelError::io(&path, e))
    };
    let failed = |e: serde_json::Error| ModelError::json(dir, &e);
    write(
        "report.json",
        serde_json::to_string_pretty(report).map_err(failed)?,
    )?;
    let mut rows = String::new();
    for row in &report.rows {
        rows.push_str(&serde_json::to_string(row).map_err(failed)?);
        rows.push('\n');
    }
    write("rows.jsonl", rows)?;
    write("report.html", html::render(report))
}

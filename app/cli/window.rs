//! `loft window-check`: the real window under a real display server, driven through a short script.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::ui::{self, Check, Page, WindowOptions};

#[derive(Args)]
pub struct WindowCheckArgs {
    /// Where to save the screenshot (PNG).
    #[arg(long)]
    screenshot: PathBuf,
    /// Window size, WIDTHxHEIGHT in points.
    #[arg(long, default_value = "1180x820")]
    size: String,
    /// A model to open (folder, .gguf or repo id).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Datasets to open.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Train this many steps once model and data are ready, measuring frames meanwhile.
    #[arg(long)]
    train_steps: Option<usize>,
    /// The step to show: model, data, method, train or runs.
    #[arg(long, default_value = "model")]
    page: String,
    /// Run folders go here (default: a fresh temporary folder).
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

pub fn window_check(args: WindowCheckArgs) -> Result<i32> {
    let Some((w, h)) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<f32>().ok()?, h.parse::<f32>().ok()?)))
    else {
        bail!("--size must look like 1280x800, not `{}`", args.size);
    };
    let page = match args.page.as_str() {
        "model" => Page::Model,
        "data" => Page::Data,
        "method" => Page::Method,
        "train" => Page::Train,
        "evaluate" => Page::Evaluate,
        "runs" => Page::Runs,
        other => {
            bail!("--page must be model, data, method, train, evaluate or runs, not `{other}`")
        }
    };
    let temp;
    let runs_dir = match args.runs_dir {
        Some(d) => d,
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let mut open: Vec<PathBuf> = args.model.into_iter().collect();
    open.extend(args.data);
    Ok(ui::run(WindowOptions {
        open,
        check: Some(Check {
            screenshot: args.screenshot,
            size: (w, h),
            train_steps: args.train_steps,
            runs_dir,
            page,
            timeout: Duration::from_secs(args.timeout_seconds),
        }),
    }))
}

/// A fresh folder under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "loft-window-check-{}-{}",
        std::process::id(),
        crate::engine::train::run::timestamp()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

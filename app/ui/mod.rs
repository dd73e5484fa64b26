//! The desktop app (eframe/egui). It owns only UI state: every load, check, download and training run is
//! engine work on a worker thread that reports through a channel and wakes the window.
//!
//! ```text
//! app.rs        the frame: step bar, page routing, dropped files, closing while a run saves
//! remembered.rs what is kept between launches, read leniently across upgrades
//! *_page.rs     one step each: model, data, method, train, runs
//! fit.rs        LoRA and QLoRA memory side by side: verdicts, the recommendation, what would fit
//! jobs.rs       background work with progress and cancel
//! dialogs.rs    native file dialogs, off the UI thread, and a typed path where none can open
//! widgets.rs    help buttons, labelled fields, plots with text summaries, number formats
//! ```

mod app;
mod data_page;
mod dialogs;
mod eval_page;
mod fit;
mod fix_data;
mod jobs;
mod method_page;
mod model_page;
mod remembered;
mod runs_page;
mod train_page;
mod widgets;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use app::{AppOptions, LoftApp, Page};
pub use data_page::EvalChoice;
pub use eval_page::Filter as EvalFilter;
pub use remembered::{Remembered, Restored};
pub use train_page::Phase;

const ICON: &[u8] = include_bytes!("../../icons/png/loft-256.png");

/// How the window is opened: normally, or for the smoke check (fixed size, optional preloaded model,
/// data and a short training run, a screenshot, frame-time figures, then exit).
#[derive(Debug, Clone, Default)]
pub struct WindowOptions {
    /// Files to open at start (as if dropped).
    pub open: Vec<PathBuf>,
    pub check: Option<Check>,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub screenshot: PathBuf,
    pub size: (f32, f32),
    /// Start a training run of this many steps as soon as model and data are ready, and keep measuring
    /// frames until it ends.
    pub train_steps: Option<usize>,
    pub runs_dir: PathBuf,
    pub page: Page,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Open the window; returns the process exit code.
pub fn run(options: WindowOptions) -> i32 {
    let started = Instant::now();
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Loft")
        .with_app_id("loft")
        .with_min_inner_size([720.0, 480.0])
        .with_drag_and_drop(true);
    match eframe::icon_data::from_png_bytes(ICON) {
        Ok(icon) => viewport = viewport.with_icon(Arc::new(icon)),
        Err(e) => eprintln!("warning: the window icon could not be decoded: {e}"),
    }
    let check = options.check.clone();
    viewport = match &check {
        Some(c) => viewport.with_inner_size([c.size.0, c.size.1]),
        None => viewport.with_inner_size([1180.0, 820.0]),
    };
    let native = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Glow,
        // The smoke check must not read or change the user's remembered state.
        persist_window: check.is_none(),
        persistence_path: check.as_ref().map(|c| c.runs_dir.join(".window-state")),
        ..eframe::NativeOptions::default()
    };
    let outcome: Arc<Mutex<Option<String>>> = Arc::default();
    let report = outcome.clone();
    let result = eframe::run_native(
        "Loft",
        native,
        Box::new(move |cc| {
            let open = options.open.clone();
            let mut window = match check {
                None => {
                    let mut window = LoftWindow::new(cc, AppOptions::default());
                    window.app.open_paths(&cc.egui_ctx, open);
                    window
                }
                Some(check) => LoftWindow::for_check(cc, check, report, open),
            };
            window.app.frames.started = Some(started);
            Ok(Box::new(window))
        }),
    );
    if let Err(e) = result {
        eprintln!(
            "error: the window could not be opened: {e}\nLoft needs a graphical session (X11 or Wayland) with OpenGL 2 or newer; the command-line tools (loft --help) work without one."
        );
        return 1;
    }
    let printed = outcome.lock().map(|o| o.clone()).unwrap_or(None);
    match printed {
        Some(line) => {
            println!("{line}");
            0
        }
        None if options.check.is_some() => {
            eprintln!("error: the window closed before the check finished");
            1
        }
        None => 0,
    }
}

/// The app as eframe runs it: the window's state, what it remembers, and the smoke check when one runs.
pub struct LoftWindow {
    pub app: LoftApp,
    check: Option<CheckState>,
}

impl LoftWindow {
    /// The window as it opens: what an earlier launch remembered comes from eframe's storage (`cc.storage`),
    /// and runs go to `options.runs_dir`, or the platform's data folder when that is empty.
    pub fn new(cc: &eframe::CreationContext<'_>, mut options: AppOptions) -> LoftWindow {
        if options.runs_dir.as_os_str().is_empty() {
            options.runs_dir = crate::engine::train::run::default_runs_dir();
        }
        let restored = cc.storage.and_then(Remembered::load);
        let notice = restored.as_ref().and_then(Restored::notice);
        let mut app = LoftApp::new(&cc.egui_ctx, options, restored.map(|r| r.remembered));
        if let Some(notice) = notice {
            app.notify(notice);
        }
        LoftWindow { app, check: None }
    }

    /// The smoke check's window, with `open` opened and then the check's page shown: it neither reads
    /// nor changes the user's remembered state.
    fn for_check(
        cc: &eframe::CreationContext<'_>,
        check: Check,
        report: Arc<Mutex<Option<String>>>,
        open: Vec<PathBuf>,
    ) -> LoftWindow {
        let options = AppOptions {
            runs_dir: check.runs_dir.clone(),
            ..AppOptions::default()
        };
        let mut app = LoftApp::new(&cc.egui_ctx, options, None);
        app.open_paths(&cc.egui_ctx, open);
        app.page = check.page;
        if let Some(steps) = check.train_steps {
            app.method.config.max_steps = Some(steps);
            app.method.config.micro_batch_size = 2;
            app.method.config.grad_accum = 1;
            app.method.config.max_seq_len = 512;
        }
        LoftWindow {
            app,
            check: Some(CheckState::new(check, report)),
        }
    }
}

impl eframe::App for LoftWindow {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let stats = &mut self.app.frames;
        if stats.first_frame.is_none() {
            stats.first_frame = stats.started.map(|s| s.elapsed());
        }
        if let Some(cpu) = frame.info().cpu_usage {
            stats.frame_seconds.push(cpu);
        }
        self.app.ui(ui);
        if let Some(check) = &mut self.check {
            check.step(ui.ctx(), &mut self.app);
        }
    }

    /// A close while training is held back by the app until the run has saved its checkpoint; one that
    /// gets here anyway ("Close without waiting") tells the run to stop and does not wait for it.
    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.app
            .train
            .command(crate::engine::train::TrainCommand::Cancel);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.check.is_none() {
            self.app.remembered().store(storage);
        }
    }
}

/// The smoke check's progress through its script.
struct CheckState {
    check: Check,
    report: Arc<Mutex<Option<String>>>,
    started_training: bool,
    /// Frame times from the start of training on (the UI thread's load while the engine works).
    training_from: Option<usize>,
    shot: Arc<Mutex<Option<Result<(), String>>>>,
    shot_requested: bool,
    frames: usize,
}

impl CheckState {
    fn new(check: Check, report: Arc<Mutex<Option<String>>>) -> CheckState {
        CheckState {
            check,
            report,
            started_training: false,
            training_from: None,
            shot: Arc::default(),
            shot_requested: false,
            frames: 0,
        }
    }

    fn step(&mut self, ctx: &egui::Context, app: &mut LoftApp) {
        self.frames += 1;
        // Keep frames coming at about 60 per second so there is something to measure.
        ctx.request_repaint_after(Duration::from_millis(16));
        let elapsed = app.frames.started.map_or(Duration::ZERO, |s| s.elapsed());
        let timed_out = elapsed > self.check.timeout;
        let training_done = match self.check.train_steps {
            None => true,
            Some(_) => {
                if !self.started_training && app.blocker().is_none() {
                    app.page = Page::Train;
                    app.start_run(ctx);
                    self.started_training = true;
                    self.training_from = Some(app.frames.frame_seconds.len());
                }
                self.started_training
                    && !app.train.is_running()
                    && !matches!(app.train.phase, Phase::Idle | Phase::Preparing(_))
            }
        };
        // Let a few frames settle (fonts, layout) before the picture.
        if (training_done && self.frames > 10 || timed_out) && !self.shot_requested {
            self.shot_requested = true;
            let slot = self.shot.clone();
            let path = self.check.screenshot.clone();
            let wake = ctx.clone();
            ctx.request_screenshot(move |image| {
                let saved = save_png(&path, &image);
                if let Ok(mut s) = slot.lock() {
                    *s = Some(saved);
                }
                wake.request_repaint();
            });
        }
        let shot = self.shot.lock().ok().and_then(|s| s.clone());
        if let Some(saved) = shot {
            let frames = &app.frames.frame_seconds;
            let during = &frames[self.training_from.unwrap_or(0).min(frames.len())..];
            let line = serde_json::json!({
                "first_frame_ms": app.frames.first_frame.map(|d| d.as_secs_f64() * 1e3),
                "frames": frames.len(),
                "frame_ms_p50": percentile(frames, 50.0),
                "frame_ms_p99": percentile(frames, 99.0),
                "training_frames": during.len(),
                "training_frame_ms_p50": percentile(during, 50.0),
                "training_frame_ms_p99": percentile(during, 99.0),
                "page": app.page.title(),
                "training_phase": format!("{:?}", app.train.phase),
                "steps_seen": app.train.curves.loss.len(),
                "timed_out": timed_out,
                "screenshot": self.check.screenshot,
                "screenshot_error": saved.err(),
            });
            if let Ok(mut r) = self.report.lock() {
                *r = Some(line.to_string());
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

/// The `p`th percentile of frame times, in milliseconds.
fn percentile(seconds: &[f32], p: f64) -> Option<f64> {
    let mut ms: Vec<f64> = seconds.iter().map(|s| *s as f64 * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    (!ms.is_empty()).then(|| crate::engine::data::percentile(&ms, p))
}

fn save_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<(), String> {
    let [w, h] = image.size;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let buffer = image::RgbaImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| "the screenshot has the wrong number of pixels".to_string())?;
    let mut png = Vec::new();
    buffer
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the screenshot: {e}"))?;
    crate::engine::fsutil::write_atomic(path, &png)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

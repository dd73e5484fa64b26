//! The app's UI, driven through egui_kittest against the real app state: widgets are found by their
//! accessibility labels (as a screen reader finds them), files are dropped as the window system drops
//! them, and every model, dataset and training run is real (the tiny chat model of tests/fixtures).

#[path = "support/hub_server.rs"]
mod hub_server;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use loft::engine::eval::RowOutcome;
use loft::ui::{AppOptions, EvalChoice, LoftApp, LoftWindow, Page, Phase};

/// A file dropped on the window.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn sample_chat() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/support-chat.jsonl")
}

fn tiny_chat_model() -> PathBuf {
    support::fixtures().join("tiny-chat")
}

fn app(runs: &Path) -> Harness<'static, LoftApp> {
    launch(runs, None)
}

/// The app as it starts, with what an earlier launch remembered.
fn launch(runs: &Path, remembered: Option<loft::ui::Remembered>) -> Harness<'static, LoftApp> {
    let app = LoftApp::new(
        &egui::Context::default(),
        AppOptions {
            runs_dir: runs.to_path_buf(),
            ..AppOptions::default()
        },
        remembered,
    );
    Harness::builder()
        .with_size(egui::vec2(1280.0, 1000.0))
        .build_ui_state(|ui, app: &mut LoftApp| app.ui(ui), app)
}

fn drop_files<S>(h: &mut Harness<'static, S>, paths: &[PathBuf]) {
    for p in paths {
        h.input_mut()
            .dropped_files
            .push(std::sync::Arc::new(Dropped(p.clone())));
    }
    h.step();
}

/// Step frames until `done` holds; background work arrives between frames.
fn wait_for<S>(
    h: &mut Harness<'static, S>,
    what: &str,
    done: impl Fn(&Harness<'static, S>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done(h) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
        h.step();
    }
}

fn has<S>(h: &Harness<'static, S>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

/// The text of the one widget whose label contains `part`.
fn text<S>(h: &Harness<'static, S>, part: &str) -> String {
    let node = h.get_by_label_contains(part).accesskit_node();
    node.label().or_else(|| node.value()).unwrap_or_default()
}

fn click<S>(h: &mut Harness<'static, S>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    h.step();
}

/// Click the first of several widgets with this label (a run's name is in the table and in its details).
fn click_first<S>(h: &mut Harness<'static, S>, label: &str) {
    h.get_all_by_label(label).next().expect(label).click();
    h.step();
    h.step();
}

/// Open the tiny model and type `prompt` into Try it, without sending it.
fn open_tiny_model_and_type_prompt(h: &mut Harness<'static, LoftApp>, prompt: &str) {
    drop_files(h, &[tiny_chat_model()]);
    wait_for(h, "the model", |h| has(h, "Opened:"));
    h.get_by_label("Prompt").click();
    h.step();
    h.get_by_label("Prompt").type_text(prompt);
    h.step();
}

#[test]
fn a_dropped_dataset_is_validated_with_a_histogram_and_a_preview() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[sample_chat()]);
    assert_eq!(h.state().page, Page::Data);
    wait_for(&mut h, "the validation summary", |h| {
        has(h, "Validation: ready")
    });
    assert!(has(&h, "105 read · 105 usable"));
    // Without a model, lengths are in characters and there is nothing to preview yet.
    assert!(has(&h, "Length of each example (characters)"));
    assert!(has(&h, "Open a model to count tokens"));

    // Dropping the model re-checks the data with its tokenizer: token lengths and the preview.
    drop_files(&mut h, &[tiny_chat_model()]);
    assert_eq!(h.state().page, Page::Model);
    wait_for(&mut h, "the model", |h| has(h, "Opened:"));
    assert!(has(&h, "Context length"));
    click(&mut h, "2. Data");
    wait_for(&mut h, "token counts", |h| {
        has(h, "Length of each example (tokens)")
    });
    assert!(has(&h, "Tokens per example"));
    assert!(has(&h, "Preview: what the model learns"));

    // "X of Y tokens are trained on": only the answers by default, every token when asked.
    let trained = |h: &Harness<'static, LoftApp>| -> (u64, u64) {
        let t = text(h, "tokens are trained on");
        let words: Vec<&str> = t.split_whitespace().collect();
        (words[0].parse().unwrap(), words[2].parse().unwrap())
    };
    let (answers, total) = trained(&h);
    assert!(answers < total, "{answers} of {total}");
    click(&mut h, "Learn the whole conversation, not only the answers");
    wait_for(&mut h, "the re-check", |h| {
        h.query_all_by_label_contains("tokens are trained on")
            .next()
            .is_some()
            && trained(h).0 == total
    });
}

#[test]
fn rows_with_errors_are_listed_and_shown_and_other_files_are_refused() {
    let runs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broken.jsonl");
    let good = r#"{"instruction": "Say hi", "output": "Hi!"}"#;
    std::fs::write(
        &data,
        format!("{good}\n{{\"instruction\": \"Say bye\"}}\n{good} x\n"),
    )
    .unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[data, dir.path().join("notes.txt")]);
    assert!(
        has(&h, "it cannot use"),
        "a .txt file is refused with a message"
    );
    wait_for(&mut h, "the report", |h| {
        has(h, "Validation: has errors to fix")
    });
    let error = text(&h, "line 2");
    assert!(
        error.contains("output"),
        "the error names the missing field: {error}"
    );
    h.get_by_label_contains("line 2").click();
    h.step();
    h.step();
    assert!(has(&h, "Say bye"), "clicking an error shows the row");
    // Training stays blocked until the user chooses to skip the rows.
    assert!(h.state().data.blocker().is_some());
    click(&mut h, "Train without the rows that have errors");
    assert!(h.state().data.blocker().is_none());
}

#[test]
fn lora_settings_change_the_trainable_parameter_count() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model()]);
    wait_for(&mut h, "the model", |h| has(h, "Opened:"));
    click(&mut h, "3. Method");
    let before = text(&h, "Trainable parameters");
    click(&mut h, "Attention (q_proj, v_proj)");
    let attention = h.state().method.config.lora.targets.clone();
    assert_eq!(attention, ["q_proj", "v_proj"]);
    h.get_by_label("Rank (r)").set_value_accesskit(4.0);
    h.step();
    h.step();
    assert_eq!(h.state().method.config.lora.r, 4);
    let after = text(&h, "Trainable parameters");
    assert_ne!(before, after);
    // 2 layers × (q: 64→64, v: 64→32) × r=4 = 2 × 4 × (128 + 96).
    assert!(after.contains("Trainable parameters: 1,792 "), "{after}");

    // The memory a run needs at the longest batch, growing with the batch's tokens.
    let activations = |h: &Harness<'static, LoftApp>| -> f64 {
        bytes_after(&label_starting(h, "LoRA memory:"), "Activations")
    };
    h.state_mut().method.config.micro_batch_size = 16;
    h.state_mut().method.config.max_seq_len = 1024;
    h.step();
    let short = activations(&h);
    h.state_mut().method.config.max_seq_len = 4096;
    h.step();
    let long = activations(&h);
    assert!(
        short > 0.0 && (long / short - 4.0).abs() < 0.5,
        "4x the tokens: {long} bytes of activations against {short}"
    );
}

/// The label of the one widget whose label starts with `prefix` (where a longer label also contains
/// it: "QLoRA memory:" contains "LoRA memory:").
/// Press a widget that may sit below the fold of the page's scroll area.
fn press_below_the_fold<S>(h: &mut Harness<'static, S>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    h.step();
    h.get_by_label(label).click_accesskit();
    h.step();
    h.step();
}

fn label_starting<S>(h: &Harness<'static, S>, prefix: &str) -> String {
    let found: Vec<String> = h
        .query_all_by_label_contains(prefix)
        .filter_map(|n| {
            let node = n.accesskit_node();
            node.label().or_else(|| node.value())
        })
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "one label starting {prefix:?}: {found:?}");
    found[0].clone()
}

/// The byte count written after `name ` in `text`, as the window writes them ("total 1.82 GiB").
fn bytes_after(text: &str, name: &str) -> f64 {
    let rest = text
        .split(&format!("{name} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name:?} figure in {text:?}"));
    let mut words = rest.split_whitespace();
    let number: f64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {name:?} in {text:?}"));
    let unit = words
        .next()
        .unwrap_or_default()
        .trim_end_matches([',', ';', ':', '.', ')']);
    let scale = match unit {
        "bytes" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} after {name:?} in {text:?}"),
    };
    number * scale
}

/// Texts the app put on the clipboard in the last frame.
fn copied<S>(h: &Harness<'static, S>) -> Vec<String> {
    h.output()
        .platform_output
        .commands
        .iter()
        .filter_map(|c| match c {
            egui::OutputCommand::CopyText(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// The `loft train` line that "Copy CLI command" on the Train step copies.
fn cli_line(h: &mut Harness<'static, LoftApp>) -> String {
    click(h, "4. Train");
    h.get_by_label("Copy CLI command").click();
    h.step();
    let lines = copied(h);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

#[test]
fn lora_and_qlora_side_by_side_change_the_estimate_the_verdict_and_the_cli_line() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[support::smollm2_gguf(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    wait_for(&mut h, "the device probe", |h| {
        h.state().method.device.is_some()
    });
    click(&mut h, "3. Method");

    // Sized by the data's real longest example, not batch size × max_seq_len.
    let shape = text(&h, "Estimated for the longest batch of your data");
    let longest: usize = shape
        .split("4 × ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{shape}"));
    assert!((16..1024).contains(&longest), "{shape}");

    // Both estimates side by side; QLoRA holds the model's layers in about a seventh.
    let lora = label_starting(&h, "LoRA memory:");
    let qlora = label_starting(&h, "QLoRA memory:");
    let layers = bytes_after(&lora, "Base weights (f32)")
        / (bytes_after(&qlora, "Base weights (NF4)")
            + bytes_after(&qlora, "Quantization constants (double-quantized absmax)"));
    assert!((6.5..8.0).contains(&layers), "{lora}\n{qlora}");
    let (lora_total, qlora_total) = (bytes_after(&lora, "total"), bytes_after(&qlora, "total"));
    assert!(qlora_total < lora_total * 0.9, "{lora}\n{qlora}");

    // Planned for memory between the two, only QLoRA fits, and the page says to choose it.
    click(&mut h, "another amount");
    let gib = 1024.0 * 1024.0 * 1024.0;
    h.get_by_label("Memory to plan for (GiB)")
        .set_value_accesskit((lora_total + qlora_total) / 2.0 / gib);
    h.step();
    h.step();
    let lora = label_starting(&h, "LoRA memory:");
    let qlora = label_starting(&h, "QLoRA memory:");
    assert!(lora.ends_with("available: does not fit"), "{lora}");
    assert!(qlora.contains("available: fits"), "{qlora}");
    // The verdict in words, not in colour alone.
    let verdict = label_starting(&h, "LoRA needs about");
    assert!(verdict.ends_with("available: does not fit."), "{verdict}");
    assert!(has(&h, "Recommended: QLoRA."));

    // The Model step's hint gives the same figures.
    click(&mut h, "1. Model");
    let hint = text(&h, "Training needs about");
    let total = |line: &str| {
        line.split("total ")
            .nth(1)
            .and_then(|r| r.split(" of ").next())
            .unwrap()
            .to_string()
    };
    assert!(
        hint.contains(&format!(
            "about {} with LoRA, {} with QLoRA",
            total(&lora),
            total(&qlora)
        )) && hint.contains("Choose QLoRA"),
        "{hint}\n{lora}\n{qlora}"
    );

    // With LoRA chosen, the run's plan says it does not fit, and the command line trains LoRA.
    let line = cli_line(&mut h);
    assert!(!line.contains("--method"), "{line}");
    let memory = text(&h, "Memory: ");
    assert!(
        memory.contains("Memory: LoRA needs about") && memory.ends_with("does not fit."),
        "{memory}"
    );

    // Switching to QLoRA changes the plan's estimate and verdict, and the command line.
    click(&mut h, "3. Method");
    click(&mut h, "QLoRA");
    assert_eq!(
        h.state().method.config.method,
        loft::engine::train::Method::Qlora
    );
    let line = cli_line(&mut h);
    assert!(line.contains("--method qlora"), "{line}");
    let memory = text(&h, "Memory: ");
    assert!(
        memory.contains(&format!("QLoRA needs about {}", total(&qlora)))
            && memory.contains("available: fits"),
        "{memory}"
    );

    // And back.
    click(&mut h, "3. Method");
    click(&mut h, "LoRA");
    let line = cli_line(&mut h);
    assert!(!line.contains("--method"), "{line}");
}

#[test]
fn when_neither_method_fits_the_page_says_what_would_and_applies_it() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[support::smollm2_gguf(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "3. Method");
    click(&mut h, "another amount");
    h.get_by_label("Memory to plan for (GiB)")
        .set_value_accesskit(1.0);
    h.step();
    h.step();
    assert!(label_starting(&h, "QLoRA memory:").ends_with("does not fit"));
    assert!(has(&h, "Neither method fits in 1.00 GiB. What would:"));
    let advice = text(&h, "Turn on gradient checkpointing with QLoRA");
    let needs = bytes_after(&advice, "needs about");
    assert!(needs < 1024.0 * 1024.0 * 1024.0, "{advice}");
    assert!(has(&h, "Or a smaller model"));
    // The Model step says the same, and whether a smaller run of this model fits at all.
    click(&mut h, "1. Model");
    let hint = text(&h, "Training needs about");
    assert!(
        hint.contains("neither fits at these settings, but")
            && hint.contains("at 1 × 512 tokens with gradient checkpointing"),
        "{hint}"
    );
    click(&mut h, "3. Method");

    click_first(&mut h, "Use these settings");
    let config = &h.state().method.config;
    assert!(config.gradient_checkpointing);
    assert_eq!(config.method, loft::engine::train::Method::Qlora);
    let qlora = label_starting(&h, "QLoRA memory:");
    assert!(qlora.contains("available: fits"), "{qlora}");
    assert_eq!(
        bytes_after(&qlora, "total"),
        needs,
        "the advice's estimate is the page's"
    );
}

#[test]
fn a_qlora_run_names_itself_and_its_quantization_cost_shows_on_the_method_page() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "3. Method");
    assert!(has(
        &h,
        "What 4 bits cost is measured before the first step"
    ));
    click(&mut h, "QLoRA");
    click(&mut h, "4. Train");
    click(&mut h, "Start training");
    wait_for(&mut h, "the quantization cost", |h| {
        h.state().train.quantization_cost.is_some()
    });
    let run = h.state().train.run_dir.clone().unwrap();
    assert!(
        run.display().to_string().ends_with("tiny-chat-qlora"),
        "{run:?}"
    );
    let toml = std::fs::read_to_string(run.join("run.toml")).unwrap();
    assert!(toml.contains("method = \"qlora\""), "{toml}");
    click(&mut h, "Cancel");
    wait_for(&mut h, "the cancel", |h| !h.state().train.is_running());
    click(&mut h, "3. Method");
    let (dense, quantized) = h.state().train.quantization_cost.unwrap();
    let cost = text(&h, "the last QLoRA run measured what 4 bits cost");
    assert!(
        cost.contains(&format!(
            "eval loss {dense:.3} with the full model, {quantized:.3} with the 4-bit one"
        )),
        "{cost}"
    );
}

#[test]
fn training_runs_live_pauses_resumes_cancels_and_resumes_from_the_runs_view() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "3. Method");
    click(&mut h, "steps");
    h.get_by_label("Max steps").set_value_accesskit(400.0);
    h.get_by_label("Batch size").set_value_accesskit(2.0);
    h.get_by_label("Gradient accumulation")
        .set_value_accesskit(1.0);
    h.step();
    assert_eq!(h.state().method.config.max_steps, Some(400));

    click(&mut h, "4. Train");
    h.get_by_label("Copy CLI command").click();
    h.step();
    let copied: Vec<String> = h
        .output()
        .platform_output
        .commands
        .iter()
        .filter_map(|c| match c {
            egui::OutputCommand::CopyText(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert!(
        copied
            .iter()
            .any(|t| t.starts_with("loft train --model ") && t.contains("--max-steps 400")),
        "{copied:?}"
    );
    click(&mut h, "Start training");
    wait_for(&mut h, "steps", |h| h.state().train.curves.loss.len() >= 3);
    assert!(has(&h, "step "), "the progress bar counts steps");
    let seen = h.state().train.curves.loss.len();
    wait_for(&mut h, "the plot to grow", |h| {
        h.state().train.curves.loss.len() > seen
    });

    click(&mut h, "Pause");
    wait_for(&mut h, "the pause", |h| {
        h.state().train.phase == Phase::Paused
    });
    let paused_at = h.state().train.curves.loss.len();
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(
        h.state().train.curves.loss.len(),
        paused_at,
        "no steps while paused"
    );
    click(&mut h, "Resume");
    wait_for(&mut h, "steps after resuming", |h| {
        h.state().train.curves.loss.len() > paused_at + 2
    });

    click(&mut h, "Cancel");
    wait_for(&mut h, "the cancel", |h| {
        matches!(h.state().train.phase, Phase::Cancelled { .. })
    });
    let Phase::Cancelled { step } = h.state().train.phase.clone() else {
        unreachable!()
    };
    assert!(step < 400);
    assert!(has(&h, "Resume it from the Runs view"));

    click(&mut h, "Runs");
    wait_for(&mut h, "the run list", |h| has(h, "interrupted"));
    let run = h.state().train.run_dir.clone().unwrap();
    let name = run.file_name().unwrap().to_string_lossy().into_owned();
    click_first(&mut h, &name);
    click(&mut h, "Resume");
    assert_eq!(h.state().page, Page::Train);
    wait_for(&mut h, "the resumed run to finish", |h| {
        matches!(h.state().train.phase, Phase::Finished { .. })
    });
    let curve = &h.state().train.curves.loss;
    assert_eq!(curve.last().unwrap()[0], 400.0);
    assert!(
        curve.windows(2).all(|w| w[1][0] == w[0][0] + 1.0),
        "one continuous curve across the resume"
    );
    assert!(run.join("adapter/adapter_model.safetensors").is_file());

    click(&mut h, "Runs");
    click(&mut h, "Refresh");
    wait_for(&mut h, "the finished run", |h| {
        h.query_by_label("finished").is_some()
    });
    click_first(&mut h, &name);
    assert!(has(&h, "Save adapter…"));
}

#[test]
fn try_it_streams_an_answer_from_the_base_model() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    open_tiny_model_and_type_prompt(&mut h, "How long does shipping take?");
    click(&mut h, "Send");
    wait_for(&mut h, "the answer", |h| has(h, "tokens/s (greedy)"));
    let stats = text(&h, "tokens/s (greedy)");
    let tokens: usize = stats.split_whitespace().next().unwrap().parse().unwrap();
    assert!(tokens > 0, "{stats}");
}

/// eframe's storage interface over a map, as eframe's own file storage keeps it in memory: what
/// `App::save` writes, the next launch's creation context reads.
#[derive(Default, Clone)]
struct Storage(HashMap<String, String>);

impl eframe::Storage for Storage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }

    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn flush(&mut self) {}
}

/// The window as eframe creates it: its creation context hands it `storage`.
fn open_window(runs: &Path, storage: &Storage) -> Harness<'static, LoftWindow> {
    let mut cc = eframe::CreationContext::_new_kittest(egui::Context::default());
    cc.storage = Some(storage);
    let window = LoftWindow::new(
        &cc,
        AppOptions {
            runs_dir: runs.to_path_buf(),
            ..AppOptions::default()
        },
    );
    Harness::builder()
        .with_size(egui::vec2(1280.0, 1000.0))
        .build_ui_state(|ui, w: &mut LoftWindow| w.app.ui(ui), window)
}

#[test]
fn choices_are_remembered_across_launches() {
    let runs = tempfile::tempdir().unwrap();
    let mut storage = Storage::default();
    let mut h = open_window(runs.path(), &storage);
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| {
        h.state().app.blocker().is_none()
    });
    h.state_mut().app.method.config.lora.r = 8;
    h.state_mut().app.data.eval = EvalChoice::Split(20.0);
    h.state_mut().app.page = Page::Method;
    eframe::App::save(h.state_mut(), &mut storage);
    drop(h);

    let mut h = open_window(runs.path(), &storage);
    wait_for(&mut h, "the model to reopen", |h| {
        h.state().app.blocker().is_none()
    });
    let app = &h.state().app;
    assert_eq!(app.page, Page::Method);
    assert_eq!(app.method.config.lora.r, 8);
    assert_eq!(app.data.eval, EvalChoice::Split(20.0));
    assert_eq!(app.data.files.len(), 1);
    assert_eq!(
        app.model.spec(),
        Some(tiny_chat_model().display().to_string().as_str())
    );
    assert!(!has(&h, "could not keep"), "nothing was reset");
}

#[test]
fn remembered_state_with_unknown_and_missing_settings_keeps_model_data_and_the_rest() {
    let runs = tempfile::tempdir().unwrap();
    let model = format!("{:?}", tiny_chat_model().display().to_string());
    let data = format!("{:?}", sample_chat().display().to_string());
    // As Loft 0.1 stored it (a RON struct), from a version whose config had a setting this one lacks
    // (`lora.init`) and lacked most of today's (`lr`, `max_grad_norm`, …).
    let older = format!(
        "(page:Method,model:Some({model}),data_files:[{data}],train_file:0,eval:Some(Split(20.0)),\
         skip_error_rows:false,truncate_overlong:false,train_on_all_tokens:false,\
         config:Some((lora:(r:8,alpha:16.0,init:\"pissa\"),epochs:2.0,schedule:linear)))"
    );
    // As this version stores it (a tree of fields), written by a newer one: a field it does not know,
    // a setting renamed (`lr` → `learning_rate`), and settings missing.
    let newer = format!(
        "{{\"page\":\"Method\",\"model\":{model},\"data_files\":[{data}],\"theme\":\"dark\",\
         \"config\":{{\"lora\":{{\"r\":8}},\"learning_rate\":0.001,\"epochs\":2.0}}}}"
    );
    for (stored, ignored) in [(older, "config.lora.init"), (newer, "config.learning_rate")] {
        let mut storage = Storage::default();
        eframe::Storage::set_string(&mut storage, eframe::APP_KEY, stored.clone());
        let mut h = open_window(runs.path(), &storage);
        wait_for(&mut h, "the model to reopen", |h| {
            h.state().app.blocker().is_none()
        });
        let app = &h.state().app;
        let defaults = loft::engine::train::TrainConfig::default();
        assert_eq!(
            app.model.spec(),
            Some(tiny_chat_model().display().to_string().as_str()),
            "{stored}"
        );
        assert_eq!(app.data.files.len(), 1, "{stored}");
        assert_eq!(app.page, Page::Method, "{stored}");
        assert_eq!(app.method.config.lora.r, 8, "{stored}");
        assert_eq!(app.method.config.epochs, 2.0, "{stored}");
        assert_eq!(app.method.config.lr, defaults.lr, "{stored}");
        assert_eq!(app.method.config.max_grad_norm, defaults.max_grad_norm);
        let notice = text(&h, "could not keep some remembered settings");
        assert!(notice.contains(ignored), "{notice}");
    }
}

#[test]
fn closing_the_window_mid_run_says_it_saves_a_checkpoint_and_closes_after() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    h.state_mut().method.config.max_steps = Some(100_000);
    click(&mut h, "4. Train");
    click(&mut h, "Start training");
    wait_for(&mut h, "steps", |h| h.state().train.curves.loss.len() >= 2);

    let root = egui::ViewportId::ROOT;
    let commands = |h: &Harness<'static, LoftApp>| {
        h.output()
            .viewport_output
            .get(&root)
            .map(|v| v.commands.clone())
            .unwrap_or_default()
    };
    h.input_mut()
        .viewports
        .entry(root)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    let asked = Instant::now();
    h.step();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the frame that saw the close waited for the run"
    );
    assert!(
        commands(&h).contains(&egui::ViewportCommand::CancelClose),
        "the close is held back while the run saves"
    );
    h.step();
    assert!(
        has(&h, "Saving a checkpoint"),
        "the window says why it stays"
    );
    wait_for(&mut h, "the window to close", |h| {
        commands(h).contains(&egui::ViewportCommand::Close)
    });
    assert!(matches!(h.state().train.phase, Phase::Cancelled { .. }));
    let run = h.state().train.run_dir.clone().unwrap();
    let (dir, _) = loft::engine::train::run::RunDir::open(&run).unwrap();
    assert!(
        !dir.checkpoints().is_empty(),
        "closing saved a checkpoint to resume from"
    );
}

#[test]
fn try_it_never_answers_with_the_model_it_replaced() {
    let runs = tempfile::tempdir().unwrap();
    // A second model: the same files in another folder, so opening it replaces the first.
    let second = support::copy_to_temp(&tiny_chat_model());
    let mut h = app(runs.path());
    open_tiny_model_and_type_prompt(&mut h, "How long does shipping take?");
    // "Send" to the first model in the frame that starts opening the second.
    h.get_by_label("Send").click_accesskit();
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(second.path().to_path_buf())));
    h.step();
    let second_spec = second.path().display().to_string();
    wait_for(&mut h, "the second model", |h| {
        h.state().model.spec() == Some(second_spec.as_str()) && !has(h, "Opening ")
    });
    // The first model answers within a second or two; nothing of it may reach the second's page.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            !has(&h, "tokens/s (greedy)") && !has(&h, "thinking…"),
            "an answer from the replaced model is shown"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    click(&mut h, "Send");
    wait_for(&mut h, "the second model's answer", |h| {
        has(h, "tokens/s (greedy)")
    });
}

#[test]
fn enter_in_try_it_sends_the_prompt() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    open_tiny_model_and_type_prompt(&mut h, "Where is my order?");
    h.key_press(egui::Key::Enter);
    h.step();
    wait_for(&mut h, "the answer", |h| has(h, "tokens/s (greedy)"));
}

/// Whether this test process can reach a D-Bus session, through which rfd asks the desktop's
/// file-dialog portal. The test machines (and CI) have none: there a dialog cannot open.
fn desktop_session() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        || std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists())
}

#[test]
fn where_no_file_dialog_opens_the_data_page_says_so_and_takes_a_typed_path() {
    let runs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a dataset").unwrap();
    let mut h = app(runs.path());
    click(&mut h, "2. Data");
    if desktop_session() {
        // A real dialog would open here; the typed path is offered by its link instead.
        click(&mut h, "or type a path");
    } else {
        click(&mut h, "Add dataset files…");
        wait_for(&mut h, "the page to say no dialog opened", |h| {
            has(h, "No file dialog could be opened here")
        });
    }
    let submit = |h: &mut Harness<'static, LoftApp>, path: &Path| {
        h.get_by_label("Dataset path")
            .set_text_value_accesskit(&path.display().to_string());
        h.step();
        click(h, "Add");
        h.state().data.files.len()
    };
    assert_eq!(submit(&mut h, &dir.path().join("missing.jsonl")), 0);
    assert!(
        has(&h, "missing.jsonl does not exist"),
        "a missing file is named"
    );
    assert_eq!(submit(&mut h, &notes), 0);
    assert!(has(&h, "is not a .json or .jsonl file"));
    assert_eq!(submit(&mut h, dir.path()), 0);
    assert!(has(&h, "is a folder"));
    assert_eq!(submit(&mut h, &sample_chat()), 1);
    wait_for(&mut h, "the validation summary", |h| {
        has(h, "Validation: ready")
    });
}

#[test]
fn a_typed_repo_id_downloads_from_the_hub_and_then_lists_as_cached() {
    let hub = hub_server::HubServer::start();
    hub.add_repo("loft-test/tiny-chat", &tiny_chat_model());
    let (runs, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let app = LoftApp::new(
        &egui::Context::default(),
        AppOptions {
            runs_dir: runs.path().to_path_buf(),
            hub: loft::engine::hub::HubOptions {
                endpoint: Some(hub.url()),
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            },
            ..AppOptions::default()
        },
        None,
    );
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 1000.0))
        .build_ui_state(|ui, app: &mut LoftApp| app.ui(ui), app);
    h.get_by_label("Folder, .gguf or repo id").click();
    h.step();
    h.get_by_label("Folder, .gguf or repo id")
        .type_text("loft-test/tiny-chat");
    h.step();
    click(&mut h, "Open");
    wait_for(&mut h, "the download", |h| {
        has(h, "Opened: loft-test/tiny-chat")
    });
    assert!(has(&h, "Context length"));
    assert!(
        hub.log()
            .iter()
            .any(|s| s.file.as_deref() == Some("model.safetensors") && !s.is_probe()),
        "the weights came from the hub"
    );
    click(&mut h, "Models already downloaded (Hugging Face cache)");
    wait_for(&mut h, "the cache list", |h| {
        h.query_by_label("loft-test/tiny-chat").is_some()
    });
}

#[test]
fn the_train_page_says_what_a_run_will_do_before_it_starts() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "4. Train");
    // 105 rows, 10% held out (11), 94 to train on; 3 epochs of ceil(94 / (4 × 4)) = 6 steps.
    let plan = text(&h, "Plan:");
    assert!(
        plan.contains("18 steps of 16 examples each (3 epochs) over 94 training examples")
            && plan.contains("11 examples held out"),
        "{plan}"
    );
    let folder = text(&h, "The run goes to");
    assert!(
        folder.contains(&runs.path().display().to_string()) && folder.contains("tiny-chat-lora"),
        "{folder}"
    );
    assert!(has(&h, "Time: no estimate yet"));

    // The run does what the plan said.
    click(&mut h, "Start training");
    wait_for(&mut h, "the first steps", |h| {
        h.state().train.curves.loss.len() >= 2
    });
    assert_eq!(h.state().train.total_steps, 18);
    let run = h.state().train.run_dir.clone().unwrap();
    assert_eq!(run.parent(), Some(runs.path()));
    assert!(
        run.display().to_string().ends_with("tiny-chat-lora"),
        "{run:?}"
    );
    assert!(has(&h, "94 training and 11 evaluation examples"));

    // The loss plot reads as text too.
    let summary = text(&h, "Loss plot:");
    assert!(
        summary.starts_with("Loss plot: training loss from ") && summary.contains(" at step 1 to "),
        "{summary}"
    );
    click(&mut h, "Cancel");
    wait_for(&mut h, "the cancel", |h| {
        matches!(h.state().train.phase, Phase::Cancelled { .. })
    });
}

#[test]
fn help_opens_from_the_keyboard_and_screen_readers_read_it() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    click(&mut h, "3. Method");
    let explanation = "How many independent directions";
    let help = h.get_by_label("Help: Rank (r)");
    let description = help.accesskit_node().description().unwrap_or_default();
    assert!(description.starts_with(explanation), "{description:?}");
    assert!(!has(&h, explanation), "hidden until asked for");
    help.focus();
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert!(has(&h, explanation), "Enter on the focused help shows it");
    h.get_by_label("Help: Rank (r)").focus();
    h.step();
    h.key_press(egui::Key::Space);
    h.step();
    h.step();
    assert!(!has(&h, explanation), "pressing it again hides it");
}

#[test]
fn the_eval_share_and_the_length_histogram_are_named_for_screen_readers() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "2. Data");
    h.get_by_label("Held-out share").set_value_accesskit(20.0);
    h.step();
    h.step();
    assert_eq!(h.state().data.eval, EvalChoice::Split(20.0));
    let histogram = text(&h, "Histogram of example lengths in tokens");
    assert!(
        histogram.contains(": 105 examples between ")
            && histogram.contains("at or over max_seq_len 1024"),
        "{histogram}"
    );
}

/// Read syscalls this thread has made (Linux's per-thread I/O accounting).
fn reads_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscr in /proc/thread-self/io")
}

#[test]
fn frames_read_no_files_on_the_ui_thread() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    wait_for(&mut h, "the device probe", |h| {
        h.state().method.device.is_some()
    });
    // What reading the counter itself costs.
    let overhead = {
        let a = reads_by_this_thread();
        reads_by_this_thread() - a
    };
    for page in Page::ALL {
        h.state_mut().page = page;
        // Let the page start its background work (the runs list) and settle.
        for _ in 0..5 {
            h.step();
        }
        std::thread::sleep(Duration::from_millis(200));
        h.step();
        let before = reads_by_this_thread();
        for _ in 0..20 {
            h.step();
        }
        let reads = reads_by_this_thread() - before - overhead;
        assert_eq!(reads, 0, "20 frames of the {page:?} page read files");
    }
}

/// Children of this process that run `program` (any state, a zombie included).
fn children_running(program: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid …": comm may hold spaces, so split after its closing parenthesis.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let ppid = rest.split_whitespace().nth(1);
            head.ends_with(&format!("({program}")) && ppid == Some(me.as_str())
        })
        .collect()
}

#[test]
fn opening_a_run_folder_leaves_no_zombie_and_a_failure_is_shown() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("20250101-000000-tiny-chat-lora");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run.toml"), "name = \"tiny-chat-lora\"\n").unwrap();
    let with_opener = |program: &str| {
        let app = LoftApp::new(
            &egui::Context::default(),
            AppOptions {
                runs_dir: runs.path().to_path_buf(),
                folder_opener: Some(program.into()),
                ..AppOptions::default()
            },
            None,
        );
        let mut h = Harness::builder()
            .with_size(egui::vec2(1280.0, 1000.0))
            .build_ui_state(|ui, app: &mut LoftApp| app.ui(ui), app);
        click(&mut h, "Runs");
        wait_for(&mut h, "the run list", |h| {
            h.query_by_label("20250101-000000-tiny-chat-lora").is_some()
        });
        click_first(&mut h, "20250101-000000-tiny-chat-lora");
        click(&mut h, "Open folder");
        h
    };
    // A file manager that opens the folder and exits: it is waited for, not left a zombie.
    let mut h = with_opener("true");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children_running("true").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the file manager is left a zombie: {:?}",
            children_running("true")
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    assert!(!has(&h, "could not open"));
    // One that fails says so.
    let mut h = with_opener("false");
    wait_for(&mut h, "the failure", |h| has(h, "could not open"));
    assert!(children_running("false").is_empty());
}

#[test]
fn qlora_on_a_model_s_own_quantized_blocks_is_offered_for_gguf_models_only() {
    let runs = tempfile::tempdir().unwrap();
    let mut h = app(runs.path());
    drop_files(&mut h, &[tiny_chat_model(), sample_chat()]);
    wait_for(&mut h, "model and data", |h| h.state().blocker().is_none());
    click(&mut h, "3. Method");
    click(&mut h, "QLoRA");
    click(&mut h, "Advanced");
    assert!(has(&h, "Optimizer offload"));
    // The combo sits below the fold of the page's scroll area.
    h.get_by_label("4-bit weights (QLoRA)").scroll_to_me();
    h.step();
    h.get_by_label("4-bit weights (QLoRA)").click_accesskit();
    h.run();
    assert!(
        h.get_by_label("source").accesskit_node().is_disabled(),
        "a safetensors model has no quantized blocks of its own"
    );
    h.key_press(egui::Key::Escape);
    h.run();
    // Set another way (a remembered choice), it blocks the run with what to do.
    h.state_mut().method.config.quant = loft::engine::train::QuantSource::Source;
    h.step();
    let blocker = h.state().blocker().unwrap_or_default();
    assert!(blocker.contains("needs a GGUF model"), "{blocker}");

    // Choosing LoRA resets it: the 4-bit format means nothing without QLoRA.
    h.get_by_label("LoRA").click_accesskit();
    h.run();
    assert_eq!(
        h.state().method.config.method,
        loft::engine::train::Method::Lora
    );
    assert_eq!(h.state().blocker(), None);
}

/// Step 5: a finished run is evaluated against its base from the Evaluate page; the metric cards and
/// the examples appear, the filters sort the examples, and one opens side by side.
#[test]
fn an_evaluation_runs_from_the_evaluate_page_and_opens_an_example_side_by_side() {
    let runs = tempfile::tempdir().unwrap();
    let data = runs.path().join("support.jsonl");
    std::fs::copy(sample_chat(), &data).unwrap();
    let original = std::fs::read(&data).unwrap();
    let out = support::loft(&[
        "train",
        "--model",
        tiny_chat_model().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        runs.path().to_str().unwrap(),
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = LoftApp::new(
        &egui::Context::default(),
        AppOptions {
            runs_dir: runs.path().to_path_buf(),
            eval_cache: Some(runs.path().join("eval-cache")),
            ..AppOptions::default()
        },
        None,
    );
    // The page shows the dataset's text and the tiny random model's answers, which hold characters
    // the default font lacks ("→"); the app draws those as boxes, as it does here.
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 1400.0))
        .allow_missing_glyphs()
        .build_ui_state(|ui, app: &mut LoftApp| app.ui(ui), app);
    click(&mut h, "5. Evaluate");
    wait_for(&mut h, "the finished run", |h| h.state().eval.run.is_some());
    h.get_by_label("Longest answer (tokens)").click();
    h.step();
    h.get_by_label("Longest answer (tokens)").type_text("8");
    h.step();
    click(&mut h, "Start evaluation");
    wait_for(&mut h, "the report", |h| h.state().eval.report.is_some());
    assert!(h.state().eval.error.is_none(), "{:?}", h.state().eval.error);
    let (report, folder) = h.state().eval.report.clone().unwrap();
    assert!(folder.starts_with(h.state().eval.run.clone().unwrap().join("eval")));
    assert!(folder.join("report.html").is_file());
    assert_eq!(report.models.len(), 2);
    assert!(report
        .rows
        .iter()
        .all(|r| r.answers.iter().all(|a| a.tokens_out <= 8)));
    h.step();
    for card in ["Exact match", "ROUGE-L", "Eval loss", "Tokens per answer"] {
        assert!(has(&h, card), "the {card} card");
    }
    // Each filter names how many examples it keeps, lists exactly those, and "All" lists every one.
    let outcomes = report.outcomes(1);
    let listed = |h: &Harness<'static, LoftApp>| {
        h.query_all_by_label_contains(" (line ")
            .filter(|n| {
                n.accesskit_node()
                    .label()
                    .is_some_and(|l| l.starts_with('#'))
            })
            .count()
    };
    for (filter, outcome) in [
        ("Regressed", RowOutcome::Regressed),
        ("Improved", RowOutcome::Improved),
        ("Failed by both", RowOutcome::FailedByBoth),
    ] {
        let kept = outcomes.iter().filter(|o| **o == Some(outcome)).count();
        click(&mut h, &format!("{filter} ({kept})"));
        assert_eq!(listed(&h), kept, "{filter}");
    }
    let n = report.rows.len();
    click(&mut h, &format!("All ({n})"));
    assert_eq!(h.state().eval.filter, loft::ui::EvalFilter::All);
    assert_eq!(listed(&h), n);
    let first = label_starting(&h, "#1 (line ");
    click_first(&mut h, &first);
    assert_eq!(h.state().eval.selected, Some(0));
    assert!(has(&h, "Example #1"));
    assert!(has(&h, "Reference"));
    assert!(has(&h, "Fine-tuned ("));

    // From the failure to better data: correct the nearest training example's answer and this
    // example's own (it was held out of the same file), save a new file, train again with it.
    wait_for(&mut h, "the training data", |h| {
        h.state().eval.fix.data.is_some()
    });
    let answer = h
        .query_all_by_label_contains("Answer of training row ")
        .filter_map(|n| n.accesskit_node().label())
        .next()
        .expect("the nearest training examples");
    let row: usize = answer["Answer of training row ".len()..].parse().unwrap();
    h.get_by_label(&answer).scroll_to_me();
    h.step();
    h.get_by_label(&answer).focus();
    h.step();
    assert!(
        h.get_by_label(&answer).is_focused(),
        "the answer field takes the focus"
    );
    h.get_by_label(&answer).type_text(" Edited in the test.");
    h.step();
    assert!(
        !h.state().eval.fix.edits.answers.is_empty(),
        "the typed answer is a staged edit"
    );
    h.step();
    press_below_the_fold(&mut h, "Correct this example's answer in the data");
    assert!(has(&h, "Corrected answer"));
    press_below_the_fold(&mut h, "Save new dataset");
    wait_for(&mut h, "the saved file", |h| {
        h.state().eval.fix.saved.is_some()
    });
    let saved = h.state().eval.fix.saved.clone().unwrap();
    assert_eq!(saved, runs.path().join("support.v2.jsonl"));
    assert_eq!(
        std::fs::read(&data).unwrap(),
        original,
        "the original stays byte-identical"
    );
    let lines: Vec<String> = std::fs::read_to_string(&saved)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let before: Vec<String> = String::from_utf8(original)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), before.len());
    assert!(
        lines[row - 1].contains("Edited in the test."),
        "{}",
        lines[row - 1]
    );
    let changed = lines.iter().zip(&before).filter(|(a, b)| a != b).count();
    assert!(changed <= 2, "only the edited rows change ({changed})");
    let message = h.state().eval.fix.message.clone().unwrap();
    assert!(message.0 && message.1.contains("Checked:"), "{message:?}");
    press_below_the_fold(&mut h, "Train again with this data");
    assert_eq!(h.state().page, Page::Train);
    assert_eq!(h.state().data.train_file().unwrap().path, saved);
    assert_eq!(
        h.state().method.config.max_steps,
        Some(4),
        "the run's settings come along"
    );
}

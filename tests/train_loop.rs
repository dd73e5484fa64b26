//! The training loop on a tiny model: the loss falls, runs repeat exactly, pause/resume/cancel work,
//! a cancelled run resumed from its checkpoint ends where an uninterrupted run ends, checkpoints are
//! saved by default and pruned, and a damaged checkpoint falls back to the one before.

mod support;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};

use loft::engine::data::Example;
use loft::engine::model::{LoraConfig, Model};
use loft::engine::train::config::LrChange;
use loft::engine::train::run::{RunDir, RunSpec};
use loft::engine::train::{self, TrainCommand, TrainConfig, TrainEvent, TrainJob};

fn tiny_llama() -> Model {
    support::tiny_model("llama")
}

/// A learnable toy task: after a 4-token prompt, the answer repeats a fixed pattern.
fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|row| {
            let mut ids = vec![1, (10 + row % 50) as u32, 7, 9];
            ids.extend([100, 101, 102, 103, 104, 105, 2]);
            let mask = (0..ids.len()).map(|i| i >= 4).collect();
            Example {
                row,
                ids,
                mask,
                truncated: false,
            }
        })
        .collect()
}

/// The same task with answers of 2 to 6 tokens, so batches by length differ from batches in random order.
fn varied_examples(n: usize) -> Vec<Example> {
    examples(n)
        .into_iter()
        .map(|mut e| {
            let keep = 4 + 2 + e.row % 5;
            e.ids.truncate(keep);
            e.mask.truncate(keep);
            e
        })
        .collect()
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            ..LoraConfig::default()
        },
        max_steps: Some(steps),
        micro_batch_size: 2,
        grad_accum: 2,
        lr: 1e-2,
        warmup_steps: Some(2),
        eval_every: 5,
        ..TrainConfig::default()
    }
}

fn spec(config: &TrainConfig) -> RunSpec {
    RunSpec {
        name: "tiny".into(),
        model: "tests/fixtures/tiny/llama".into(),
        data: "toy.jsonl".into(),
        data_sha256: "0".repeat(64),
        eval_data: None,
        eval_data_sha256: None,
        eval_split: 0.1,
        train_on_all_tokens: false,
        truncate_overlong: false,
        skip_error_rows: false,
        created: "now".into(),
        loft_version: "test".into(),
        train: config.clone(),
    }
}

fn job(run: RunDir, config: &TrainConfig, resume: bool) -> TrainJob {
    let train = match config.group_by_length {
        true => varied_examples(24),
        false => examples(24),
    };
    TrainJob {
        model: tiny_llama(),
        train,
        eval: examples(4),
        config: config.clone(),
        run,
        base_model: "tests/fixtures/tiny/llama".into(),
        resume,
        pad_id: 0,
        quantization: Default::default(),
    }
}

fn losses(events: &[TrainEvent]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(m) => Some(m.loss),
            _ => None,
        })
        .collect()
}

/// Two loss curves are the same: as long, and equal within `tolerance` step by step.
fn assert_same_losses(got: &[f64], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= tolerance, "{got:?} vs {want:?}");
    }
}

fn run_to_end(runs: &std::path::Path, config: &TrainConfig) -> (RunDir, Vec<TrainEvent>) {
    let run = RunDir::create(runs, &spec(config)).unwrap();
    let path = run.path.clone();
    let (tx, rx) = channel();
    let (_cmd_tx, cmd_rx) = channel();
    train::trainer::run_blocking(job(run, config, false), tx, cmd_rx).unwrap();
    (RunDir { path }, rx.try_iter().collect())
}

#[test]
fn loss_falls_and_runs_repeat_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let (run, events) = run_to_end(runs.path(), &config(30));
    let l = losses(&events);
    assert_eq!(l.len(), 30);
    assert!(l[29] < l[0] - 0.8, "loss should fall clearly (the tiny model tops out near 4.4 nats: its embeddings are too small for confident logits): {l:?}");
    let evals: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Eval { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(
        evals.len() >= 2 && evals.last() < evals.first(),
        "eval loss falls: {evals:?}"
    );
    assert!(
        matches!(events.last(), Some(TrainEvent::Finished { .. })),
        "{:?}",
        events.last()
    );
    assert!(run.adapter_dir().join("adapter_config.json").is_file());
    assert!(run.read_metrics().len() >= 30);
    let (_, again) = run_to_end(runs.path(), &config(30));
    assert_eq!(
        losses(&again),
        l,
        "same config and seed give the same losses"
    );
}

/// Follow a spawned run, answering each event with the commands `react` returns, until it ends.
fn follow(
    handle: train::TrainHandle,
    mut react: impl FnMut(&TrainEvent) -> Vec<TrainCommand>,
) -> Vec<TrainEvent> {
    let mut seen = Vec::new();
    for event in handle.events.iter() {
        for command in react(&event) {
            handle.send(command);
        }
        let end = matches!(
            event,
            TrainEvent::Cancelled { .. } | TrainEvent::Finished { .. } | TrainEvent::Failed { .. }
        );
        seen.push(event);
        if end {
            break;
        }
    }
    handle.join();
    seen
}

/// Start a run of `cfg` and cancel it once step `at` is done; returns its folder and events.
fn cancelled_run(runs: &Path, cfg: &TrainConfig, at: usize) -> (PathBuf, Vec<TrainEvent>) {
    let run = RunDir::create(runs, &spec(cfg)).unwrap();
    let path = run.path.clone();
    let events = follow(train::spawn(job(run, cfg, false)), |e| match e {
        TrainEvent::Step(m) if m.step == at => vec![TrainCommand::Cancel],
        _ => vec![],
    });
    (path, events)
}

/// Resume the run at `path` on this thread, with `commands` already waiting for the trainer.
fn resume(path: &Path, cfg: &TrainConfig, commands: &[TrainCommand]) -> Vec<TrainEvent> {
    let (tx, rx) = channel();
    let (ctx, crx): (Sender<TrainCommand>, Receiver<TrainCommand>) = channel();
    for c in commands {
        ctx.send(*c).unwrap();
    }
    train::trainer::run_blocking(job(RunDir { path: path.into() }, cfg, true), tx, crx).unwrap();
    rx.try_iter().collect()
}

fn last_cancel_step(events: &[TrainEvent]) -> usize {
    match events.last() {
        Some(TrainEvent::Cancelled {
            step,
            checkpoint: Some(_),
        }) => *step,
        other => panic!("expected a cancel with a checkpoint: {other:?}"),
    }
}

/// Pause, resume, cancel, then resume from the checkpoint: the same losses and bit-identical adapter
/// as a run never stopped.
fn cancel_and_resume_match(cfg: &TrainConfig) {
    let runs = tempfile::tempdir().unwrap();
    let (straight, straight_events) = run_to_end(runs.path(), cfg);

    let run = RunDir::create(runs.path(), &spec(cfg)).unwrap();
    let path = run.path.clone();
    let first = follow(train::spawn(job(run, cfg, false)), |event| match event {
        TrainEvent::Step(m) if m.step == 3 => vec![TrainCommand::Pause],
        TrainEvent::Paused { .. } => vec![TrainCommand::Resume],
        TrainEvent::Resumed { .. } => vec![TrainCommand::Cancel],
        _ => vec![],
    });
    let step = last_cancel_step(&first);
    assert!((3..12).contains(&step));

    let resumed = resume(&path, cfg, &[]);
    assert!(
        matches!(resumed.first(), Some(TrainEvent::Started { start_step, .. }) if *start_step == step)
    );
    let mut all = losses(&first);
    all.extend(losses(&resumed));
    assert_same_losses(&all, &losses(&straight_events), 0.0);
    support::assert_identical_adapters(&RunDir { path }.adapter_dir(), &straight.adapter_dir());
}

#[test]
fn cancelled_run_resumes_to_the_same_adapter() {
    cancel_and_resume_match(&config(12));
}

/// Batches by length are as deterministic as the random order: a resumed run sees the same batches.
#[test]
fn runs_batched_by_length_resume_exactly_too() {
    cancel_and_resume_match(&TrainConfig {
        group_by_length: true,
        ..config(12)
    });
}

/// A Cancel that waits while a step runs stops the run before the next step's work, and the
/// checkpoint holds the last completed step (today's trainer finished a whole further step first).
#[test]
fn a_cancel_is_honoured_before_the_next_micro_batch() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        grad_accum: 4,
        ..config(12)
    };
    let run = RunDir::create(runs.path(), &spec(&cfg)).unwrap();
    // Resume and Cancel are sent together: the trainer trains on as soon as it hears Resume, so it
    // hears the Cancel waiting behind it only where it listens during a step, between micro-batches.
    let mut paused_at = None;
    let events = follow(train::spawn(job(run, &cfg, false)), |e| match e {
        TrainEvent::Step(m) if m.step == 3 => vec![TrainCommand::Pause],
        TrainEvent::Paused { step } => {
            paused_at = Some(*step);
            vec![TrainCommand::Resume, TrainCommand::Cancel]
        }
        _ => vec![],
    });
    let paused_at = paused_at.expect("the run paused");
    assert_eq!(last_cancel_step(&events), paused_at, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, TrainEvent::Step(m) if m.step > paused_at)),
        "no step after the cancel: {events:?}"
    );
}

/// Every adapter value of `model`, as bits.
fn adapter_bits(model: &Model) -> Vec<u32> {
    model
        .adapters()
        .flat_map(|(_, ad)| [ad.a.as_tensor().clone(), ad.b.as_tensor().clone()])
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(f32::to_bits)
        .collect()
}

/// The step asks before every micro-batch whether to stop; stopped, it leaves the weights, the optimizer
/// and the gradient stash of checkpointed layers as they were, so the step can be redone exactly.
#[test]
fn an_abandoned_step_leaves_no_trace() {
    use loft::engine::train::checkpoint::optimizer_for;
    use loft::engine::train::step::{pack, train_step, Batch};
    let cfg = TrainConfig {
        gradient_checkpointing: true,
        ..config(1)
    };
    let ready = || {
        let mut model = tiny_llama();
        model.attach_lora(&cfg.lora, cfg.seed).unwrap();
        model.set_gradient_checkpointing(true).unwrap();
        let optimizer = optimizer_for(&model, &cfg).unwrap();
        (model, optimizer)
    };
    let data = examples(8);
    let batches: Vec<Batch> = data
        .chunks(2)
        .map(|rows| {
            pack(
                &rows.iter().collect::<Vec<_>>(),
                64,
                0,
                &candle_core::Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(batches.len(), 4);
    // A first full step, so that B is not zero and every gradient carries signal.
    let (model, mut optimizer) = ready();
    let (fresh, mut fresh_optimizer) = ready();
    for (m, o) in [(&model, &mut optimizer), (&fresh, &mut fresh_optimizer)] {
        train_step(m, o, &batches, 1e-2, 1.0, cfg.seed, 0, &mut || false)
            .unwrap()
            .unwrap();
    }
    let before = adapter_bits(&model);

    let mut asked = 0;
    let abandoned = train_step(
        &model,
        &mut optimizer,
        &batches,
        1e-2,
        1.0,
        cfg.seed,
        4,
        &mut || {
            asked += 1;
            asked == 3
        },
    )
    .unwrap();
    assert!(abandoned.is_none());
    assert_eq!(
        asked, 3,
        "asked before each micro-batch, stopped before the third"
    );
    assert_eq!(optimizer.step, 1, "no optimizer step was taken");
    assert_eq!(
        adapter_bits(&model),
        before,
        "the weights are the last completed step's"
    );

    // The same completed step, taken by the interrupted model and by a fresh one.
    let full_step = |model, optimizer| {
        train_step(
            model,
            optimizer,
            &batches,
            1e-2,
            1.0,
            cfg.seed,
            4,
            &mut || false,
        )
        .unwrap()
        .unwrap()
    };
    let redone = full_step(&model, &mut optimizer);
    let straight = full_step(&fresh, &mut fresh_optimizer);
    assert_eq!(redone, straight);
    assert_eq!(adapter_bits(&model), adapter_bits(&fresh));
}

/// Pausing saves a checkpoint of the steps done, before saying it paused.
#[test]
fn pause_saves_a_checkpoint() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every: 1000,
        save_every_minutes: 0.0,
        ..config(8)
    };
    let run = RunDir::create(runs.path(), &spec(&cfg)).unwrap();
    let path = run.path.clone();
    // (step, checkpoints on disk) when the run says it paused.
    let mut at_pause = None;
    let events = follow(train::spawn(job(run, &cfg, false)), |e| match e {
        TrainEvent::Step(m) if m.step == 3 => vec![TrainCommand::Pause],
        TrainEvent::Paused { step } => {
            at_pause = Some((*step, steps_on_disk(&RunDir { path: path.clone() })));
            vec![TrainCommand::Resume]
        }
        _ => vec![],
    });
    // The pause lands between steps: after step 3, or after step 4 if it arrived while 4 ran.
    let (paused, on_disk) = at_pause.expect("the run paused");
    assert!((3..=4).contains(&paused), "{events:?}");
    assert_eq!(on_disk, vec![paused], "{events:?}");
    let saved: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::CheckpointSaved { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        saved,
        vec![paused, 8],
        "the pause's and the final checkpoint"
    );
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })));
}

fn saved_steps(events: &[TrainEvent]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::CheckpointSaved { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

fn steps_on_disk(run: &RunDir) -> Vec<usize> {
    run.checkpoints().iter().map(|(s, _)| *s).collect()
}

/// With no checkpoint setting at all, a run saves one every tenth of its steps and keeps the last three
/// (today's default saved only at the end: a crash lost everything).
#[test]
fn checkpoints_are_saved_by_default_and_only_the_last_few_kept() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(20),
        ..config(20)
    };
    assert_eq!((cfg.save_every, cfg.keep_checkpoints), (0, 3));
    let (run, events) = run_to_end(runs.path(), &cfg);
    assert_eq!(
        saved_steps(&events),
        (1..=10).map(|i| 2 * i).collect::<Vec<_>>()
    );
    assert_eq!(steps_on_disk(&run), vec![16, 18, 20]);

    let keep_one = TrainConfig {
        keep_checkpoints: 1,
        save_every: 3,
        ..cfg.clone()
    };
    let (run, events) = run_to_end(runs.path(), &keep_one);
    assert_eq!(saved_steps(&events), vec![3, 6, 9, 12, 15, 18, 20]);
    assert_eq!(
        steps_on_disk(&run),
        vec![20],
        "the final checkpoint is always kept"
    );
}

/// Time-based checkpoints: once the set time has passed since the last one, the next step saves.
#[test]
fn checkpoints_are_saved_by_time() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every: 1000,
        save_every_minutes: f64::MIN_POSITIVE,
        keep_checkpoints: 0,
        ..config(5)
    };
    let (run, events) = run_to_end(runs.path(), &cfg);
    assert_eq!(saved_steps(&events), vec![1, 2, 3, 4, 5]);
    assert_eq!(steps_on_disk(&run), vec![1, 2, 3, 4, 5], "0 keeps them all");
}

/// A newest checkpoint damaged (here: its adapter cut short, as a crash mid-write on a file system
/// without ordering could leave it) is skipped with a notice, and the run resumes from the one
/// before — to the same adapter as a run never stopped.
#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        save_every: 2,
        ..config(12)
    };
    let (straight, _) = run_to_end(runs.path(), &cfg);
    let (path, first) = cancelled_run(runs.path(), &cfg, 7);
    let stopped = last_cancel_step(&first);
    let run = RunDir { path: path.clone() };
    let on_disk = steps_on_disk(&run);
    assert_eq!(on_disk.last(), Some(&stopped));
    let newest = run.checkpoints_dir().join(format!("step-{stopped}"));
    let weights = newest.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();

    let resumed = resume(&path, &cfg, &[]);
    let notice = resumed.iter().find_map(|e| match e {
        TrainEvent::Notice { message } => Some(message.clone()),
        _ => None,
    });
    let notice = notice.expect("a notice about the skipped checkpoint");
    assert!(
        notice.contains(&format!("step {stopped}")) && notice.contains("cannot be read"),
        "{notice}"
    );
    let previous = on_disk[on_disk.len() - 2];
    assert!(
        matches!(resumed.iter().find(|e| matches!(e, TrainEvent::Started { .. })), Some(TrainEvent::Started { start_step, .. }) if *start_step == previous),
        "{resumed:?}"
    );
    assert!(
        run.checkpoints_dir()
            .join(format!("unreadable-step-{stopped}"))
            .is_dir(),
        "the damaged checkpoint is kept aside"
    );
    assert!(matches!(resumed.last(), Some(TrainEvent::Finished { .. })));
    support::assert_identical_adapters(&run.adapter_dir(), &straight.adapter_dir());
}

/// After a divergence (or any time), a run resumes with a lower learning rate: the schedule keeps its
/// shape with the new peak, and the change is recorded in run.toml and metrics.jsonl.
#[test]
fn a_resumed_run_can_lower_the_learning_rate() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = config(12);
    let (path, first) = cancelled_run(runs.path(), &cfg, 5);
    let stopped = last_cancel_step(&first);
    let resumed = resume(&path, &cfg, &[TrainCommand::SetLr(2e-3)]);
    assert!(matches!(resumed.last(), Some(TrainEvent::Finished { .. })));
    assert!(resumed
        .iter()
        .any(|e| matches!(e, TrainEvent::Notice { message } if message.contains("2e-3"))));
    let run = RunDir { path };
    let spec = run.read_spec().unwrap();
    assert_eq!(
        spec.train.lr_changes,
        vec![LrChange {
            step: stopped,
            lr: 2e-3
        }]
    );
    let changed = TrainConfig {
        lr_changes: spec.train.lr_changes.clone(),
        ..cfg.clone()
    };
    for e in &resumed {
        if let TrainEvent::Step(m) = e {
            let want = changed.lr_at(m.step - 1, 12);
            assert_eq!(m.lr, want, "step {}", m.step);
            assert!(m.lr < cfg.lr_at(m.step - 1, 12));
        }
    }
    assert!(run
        .read_metrics()
        .iter()
        .any(|m| m["lr_change"] == 2e-3 && m["step"] == stopped as u64));
}

#[test]
fn divergence_stops_with_advice() {
    // An absurd alpha: the first steps are finite (B starts at zero), then the scaled update overflows.
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = config(10);
    cfg.lora.alpha = 1e38;
    let (run, events) = run_to_end(runs.path(), &cfg);
    match events.last() {
        Some(TrainEvent::Failed { reason, advice }) => {
            assert!(
                reason.contains("became") && reason.contains("at step"),
                "{reason}"
            );
            assert!(advice.contains("lower the learning rate"), "{advice}");
        }
        other => panic!("a diverging run must fail with advice, got {other:?}"),
    }
    assert!(
        !run.adapter_dir().exists(),
        "no final adapter from a diverged run"
    );
}

#[test]
fn gradient_checkpointing_trains_identically() {
    let runs = tempfile::tempdir().unwrap();
    let (plain, plain_events) = run_to_end(runs.path(), &config(6));
    let cfg = TrainConfig {
        gradient_checkpointing: true,
        ..config(6)
    };
    let (ckpt, ckpt_events) = run_to_end(runs.path(), &cfg);
    assert_same_losses(&losses(&ckpt_events), &losses(&plain_events), 1e-5);
    support::assert_same_adapters(&plain.adapter_dir(), &ckpt.adapter_dir(), 1e-5);
}

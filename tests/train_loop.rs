//! The training loop on a tiny model: the loss falls, runs repeat exactly, pause/resume/cancel work,
//! and a cancelled run resumed from its checkpoint ends where an uninterrupted run ends.

mod support;

use std::sync::mpsc::channel;

use loft::engine::data::Example;
use loft::engine::model::{LoraConfig, Model};
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
    TrainJob {
        model: tiny_llama(),
        train: examples(24),
        eval: examples(4),
        config: config.clone(),
        run,
        base_model: "tests/fixtures/tiny/llama".into(),
        resume,
        pad_id: 0,
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

#[test]
fn cancelled_run_resumes_to_the_same_adapter() {
    let runs = tempfile::tempdir().unwrap();
    let cfg = config(12);
    let (straight, straight_events) = run_to_end(runs.path(), &cfg);

    let run = RunDir::create(runs.path(), &spec(&cfg)).unwrap();
    let path = run.path.clone();
    let handle = train::spawn(job(run, &cfg, false));
    let mut first = Vec::new();
    for event in handle.events.iter() {
        if let TrainEvent::Step(m) = &event {
            if m.step == 3 {
                handle.send(TrainCommand::Pause);
            }
        }
        if let TrainEvent::Paused { .. } = &event {
            handle.send(TrainCommand::Resume);
        }
        if let TrainEvent::Resumed { .. } = &event {
            handle.send(TrainCommand::Cancel);
        }
        let end = matches!(
            event,
            TrainEvent::Cancelled { .. } | TrainEvent::Finished { .. } | TrainEvent::Failed { .. }
        );
        first.push(event);
        if end {
            break;
        }
    }
    handle.join();
    let Some(TrainEvent::Cancelled {
        step,
        checkpoint: Some(_),
    }) = first.last().cloned()
    else {
        panic!("expected a cancel with a checkpoint: {:?}", first.last())
    };
    assert!((3..12).contains(&step));

    let (tx, rx) = channel();
    let (_c, crx) = channel();
    train::trainer::run_blocking(job(RunDir { path: path.clone() }, &cfg, true), tx, crx).unwrap();
    let resumed: Vec<TrainEvent> = rx.try_iter().collect();
    assert!(
        matches!(resumed.first(), Some(TrainEvent::Started { start_step, .. }) if *start_step == step)
    );
    let mut all = losses(&first);
    all.extend(losses(&resumed));
    let want = losses(&straight_events);
    assert_eq!(all.len(), want.len());
    for (a, b) in all.iter().zip(&want) {
        assert!(
            (a - b).abs() < 1e-5,
            "resumed curve {all:?} vs straight {want:?}"
        );
    }
    support::assert_same_adapters(
        &RunDir { path }.adapter_dir(),
        &straight.adapter_dir(),
        1e-5,
    );
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
    for (a, b) in losses(&plain_events).iter().zip(losses(&ckpt_events)) {
        assert!(
            (a - b).abs() < 1e-5,
            "{:?} vs {:?}",
            losses(&plain_events),
            losses(&ckpt_events)
        );
    }
    support::assert_same_adapters(&plain.adapter_dir(), &ckpt.adapter_dir(), 1e-5);
}

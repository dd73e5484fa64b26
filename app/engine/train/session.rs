//! One training session from start to end on a worker thread: prepare (resolve and load the model, read
//! and encode the data), then train. The CLI and the app both follow a run through this, so they see the
//! same events and give the same commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::prepare::{prepare, PrepareEvent, Prepared};
use super::run::{RunDir, RunSpec};
use super::trainer::{failure_of, run_reporting, TrainCommand, TrainEvent};

/// What a session reports, in order: preparation progress, what preparation found, then training.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    Preparing(PrepareEvent),
    Prepared(Prepared),
    Train(TrainEvent),
}

impl SessionEvent {
    /// Whether this is the last event of the session.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SessionEvent::Train(
                TrainEvent::Finished { .. }
                    | TrainEvent::Cancelled { .. }
                    | TrainEvent::Failed { .. }
            )
        )
    }
}

/// A running session: read `events`, give commands with [`Session::send`].
pub struct Session {
    pub events: Receiver<SessionEvent>,
    commands: Sender<TrainCommand>,
    /// Stops preparation (a download, reading or encoding) early; training itself hears `Cancel`.
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Called after every event is sent, from the worker thread (the app asks egui to repaint).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

impl Session {
    /// Start a new run (`resume` false) or continue `run` from its last checkpoint.
    pub fn start(spec: RunSpec, run: RunDir, resume: bool, wake: Wake) -> Session {
        let (event_tx, events) = channel();
        let (commands, command_rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("loft-session".into())
            .spawn(move || {
                let send = |e: SessionEvent| {
                    let _ = event_tx.send(e);
                    wake();
                };
                let mut on_prepare = |e| send(SessionEvent::Preparing(e));
                let job = match prepare(&spec, run, resume, &mut on_prepare, &stop) {
                    Ok((job, prepared)) => {
                        send(SessionEvent::Prepared(prepared));
                        job
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        send(SessionEvent::Train(TrainEvent::Cancelled {
                            step: 0,
                            checkpoint: None,
                        }));
                        return;
                    }
                    Err(e) => {
                        send(SessionEvent::Train(failure_of(&e.to_string())));
                        return;
                    }
                };
                // The trainer sends plain TrainEvents; a small relay wraps them and wakes the listener.
                let (train_tx, train_rx) = channel::<TrainEvent>();
                let relay = {
                    let event_tx = event_tx.clone();
                    let wake = wake.clone();
                    std::thread::spawn(move || {
                        for e in train_rx {
                            let _ = event_tx.send(SessionEvent::Train(e));
                            wake();
                        }
                    })
                };
                run_reporting(job, train_tx, command_rx);
                let _ = relay.join();
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                let (tx, rx) = channel();
                let _ = tx.send(SessionEvent::Train(failure_of(&format!(
                    "could not start the training thread: {e}"
                ))));
                return Session {
                    events: rx,
                    commands,
                    cancel,
                    thread: None,
                };
            }
        };
        Session {
            events,
            commands,
            cancel,
            thread,
        }
    }

    pub fn send(&self, command: TrainCommand) {
        if command == TrainCommand::Cancel {
            self.cancel.store(true, Ordering::Relaxed);
        }
        // After the worker ended there is nothing left to command.
        let _ = self.commands.send(command);
    }

    /// Wait for the worker to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

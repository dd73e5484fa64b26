//! Background work for the UI: a job runs a closure on its own thread, reports through a channel, wakes
//! the UI on every report, and can be cancelled. The UI thread only ever polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

/// The worker's side: send reports, check for cancellation.
pub struct Reporter<T> {
    tx: Sender<T>,
    ctx: egui::Context,
    cancel: Arc<AtomicBool>,
}

impl<T> Reporter<T> {
    pub fn send(&self, report: T) {
        // The UI may have dropped the job (the user moved on); then nobody is listening.
        let _ = self.tx.send(report);
        self.ctx.request_repaint();
    }

    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }
}

/// The UI's side of one background job.
pub struct Job<T> {
    rx: Receiver<T>,
    cancel: Arc<AtomicBool>,
    running: bool,
}

impl<T: Send + 'static> Job<T> {
    pub fn spawn(
        ctx: &egui::Context,
        name: &str,
        work: impl FnOnce(&Reporter<T>) + Send + 'static,
    ) -> Job<T> {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let reporter = Reporter {
            tx,
            ctx: ctx.clone(),
            cancel: cancel.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("loft-{name}"))
            .spawn(move || {
                work(&reporter);
                // Wake the UI once more so it sees the channel close.
                reporter.ctx.request_repaint();
            });
        Job {
            rx,
            cancel,
            running: spawned.is_ok(),
        }
    }
}

impl<T> Job<T> {
    /// Reports that arrived since the last poll.
    pub fn poll(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(report) => out.push(report),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.running = false;
                    break;
                }
            }
        }
        out
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl<T> Drop for Job<T> {
    /// A job nobody follows any more stops at its next check.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

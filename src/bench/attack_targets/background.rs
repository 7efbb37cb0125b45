//! The attack in the background, on a thread and runtime of its own, and
//! the server's memory meanwhile: its peak while the attack runs, and a
//! settled baseline before.

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{attack_failed, RSS_EVERY, SETTLE_LIMIT};
use crate::bench::attack::{AttackError, AttackReport};
use crate::bench::server_process::ServerProcess;
use crate::bench::BenchError;

/// An attack running on a thread and runtime of its own.
pub(super) struct Background {
    report: oneshot::Receiver<Result<AttackReport, AttackError>>,
    thread: std::thread::JoinHandle<()>,
    done: watch::Receiver<bool>,
    done_tx: watch::Sender<bool>,
}

impl Background {
    pub(super) fn start<F, Fut>(attack: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<AttackReport, AttackError>>,
    {
        let (tx, report) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            // A runtime that cannot start drops `tx`: reported by `watch`.
            if let Ok(runtime) = runtime {
                let _ = tx.send(runtime.block_on(attack()));
            }
        });
        let (done_tx, done) = watch::channel(false);
        Background {
            report,
            thread,
            done,
            done_tx,
        }
    }

    /// Becomes true when the attack has ended.
    pub(super) fn done(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }

    /// Runs `measuring` beside the attack while the server's peak RSS is
    /// sampled; returns the peak, the attack's report and what `measuring`
    /// measured, once both have ended.
    pub(super) async fn watch<T>(
        self,
        server: &ServerProcess,
        measuring: impl std::future::Future<Output = T>,
    ) -> Result<(u64, AttackReport, T), BenchError> {
        let Background {
            report,
            thread,
            done,
            done_tx,
        } = self;
        let ending = async {
            let report = report.await;
            let _ = done_tx.send(true);
            report
        };
        let (peak, report, measured) =
            tokio::join!(peak_rss(server, done.clone()), ending, measuring);
        let _ = thread.join();
        let report = report
            .map_err(|_| BenchError::Other("the attack's thread failed".into()))?
            .map_err(attack_failed)?;
        Ok((peak?, report, measured))
    }
}

/// The highest RSS read every [`RSS_EVERY`] until `done`.
async fn peak_rss(
    server: &ServerProcess,
    mut done: watch::Receiver<bool>,
) -> Result<u64, BenchError> {
    let mut peak = 0;
    let mut tick = tokio::time::interval(RSS_EVERY);
    // Bounded by the attack, which is bounded in time.
    loop {
        // A server that is gone fails the run: it did not survive.
        peak = peak.max(server.rss().map_err(|e| {
            BenchError::Other(format!("the server is gone during the attack: {e}"))
        })?);
        if *done.borrow_and_update() {
            return Ok(peak);
        }
        tokio::select! {
            _ = done.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

/// The server's RSS once it has stopped changing (by more than 64 KiB over
/// 200 ms), or after [`SETTLE_LIMIT`].
pub(super) async fn settled_rss(server: &ServerProcess) -> Result<u64, BenchError> {
    let until = Instant::now() + SETTLE_LIMIT;
    let mut last = server.rss()?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.rss()?;
        if now.abs_diff(last) <= 64 << 10 || Instant::now() >= until {
            return Ok(now);
        }
        last = now;
    }
}

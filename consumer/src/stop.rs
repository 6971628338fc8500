//! How the worker is asked to stop ([`Shutdown`], held by whoever runs it:
//! `main` turns signals into it) and why one shard reader stops ([`Stop`],
//! read from [`Stops`]). Abort is the parent of the graceful stop, so an
//! abort is a stop too and nothing needs to watch both.

use std::sync::Arc;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// Why the worker gave up waiting for its final flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// A second SIGTERM/SIGINT (exit status 130).
    Signal,
    /// `shutdown_timeout` passed after the first (exit status 1).
    Timeout,
}

impl AbortCause {
    /// The exit status of a process aborted for this cause.
    pub fn exit_code(self) -> i32 {
        match self {
            AbortCause::Signal => 130,
            AbortCause::Timeout => 1,
        }
    }
}

/// The handle that stops a running worker: [`Shutdown::stop`] flushes,
/// commits and ends; [`Shutdown::abort`] gives up waiting (uploads and
/// checkpoint writes in flight are abandoned, nothing more is committed;
/// whatever was not committed is read again on restart).
#[derive(Debug, Clone)]
pub struct Shutdown {
    abort: CancellationToken,
    stop: CancellationToken,
    cause: Arc<OnceLock<AbortCause>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A worker not asked to stop yet.
    pub fn new() -> Self {
        let abort = CancellationToken::new();
        Shutdown { stop: abort.child_token(), abort, cause: Arc::new(OnceLock::new()) }
    }

    /// Asks for a graceful stop: stop reading, flush, commit, end.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Gives up waiting; the first cause given is kept.
    pub fn abort(&self, cause: AbortCause) {
        let _ = self.cause.set(cause);
        self.abort.cancel();
    }

    /// Whether a stop (or an abort) was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Waits for a stop (or an abort).
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// Waits for an abort; returns its cause.
    pub async fn aborted(&self) -> AbortCause {
        self.abort.cancelled().await;
        *self.cause.get().unwrap_or(&AbortCause::Signal)
    }

    /// The graceful stop's token (cancelled by an abort too).
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The abort's token.
    pub(crate) fn abort_token(&self) -> &CancellationToken {
        &self.abort
    }
}

/// Why a shard reader stops, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// The worker is stopping: stop reading; flush and commit what is read.
    Flush,
    /// Fleet mode: another worker took the shard's lease. The batch is
    /// dropped uncommitted (the store would refuse the commit anyway).
    LeaseLost,
    /// The worker gave up waiting: abandon uploads and checkpoint writes.
    Abort,
}

/// What one shard reader watches: the worker's stop and abort, and its own
/// lease.
#[derive(Debug, Clone)]
pub struct Stops {
    stop: CancellationToken,
    abort: CancellationToken,
    lost: CancellationToken,
}

impl Stops {
    /// The stops of a reader of the worker stopped by `shutdown`, whose
    /// lease is lost when `lost` fires (never for a single worker).
    pub fn new(shutdown: &Shutdown, lost: CancellationToken) -> Self {
        Stops { stop: shutdown.stop_token().clone(), abort: shutdown.abort_token().clone(), lost }
    }

    /// The strongest stop asked for so far; `None` while the reader reads on.
    pub fn reason(&self) -> Option<Stop> {
        if self.abort.is_cancelled() {
            Some(Stop::Abort)
        } else if self.lost.is_cancelled() {
            Some(Stop::LeaseLost)
        } else if self.stop.is_cancelled() {
            Some(Stop::Flush)
        } else {
            None
        }
    }

    /// Whether the lease was lost: the batch must not be committed.
    pub fn lease_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The token that fires when the lease is lost (for work handed to
    /// another task, such as a table commit).
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Waits until any stop is asked for: reads and pauses end here.
    pub async fn any(&self) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.lost.cancelled() => {}
        }
    }

    /// Waits until work in flight must be abandoned (the lease lost, or an
    /// abort); a graceful stop lets a flush finish.
    pub async fn abandon(&self) {
        tokio::select! {
            _ = self.abort.cancelled() => {}
            _ = self.lost.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_is_a_stop_and_the_strongest_reason() {
        let shutdown = Shutdown::new();
        let lost = CancellationToken::new();
        let stops = Stops::new(&shutdown, lost.clone());
        assert_eq!(stops.reason(), None);
        shutdown.stop();
        assert_eq!(stops.reason(), Some(Stop::Flush));
        lost.cancel();
        assert_eq!(stops.reason(), Some(Stop::LeaseLost));
        shutdown.abort(AbortCause::Timeout);
        assert_eq!(stops.reason(), Some(Stop::Abort));

        let aborted = Shutdown::new();
        aborted.abort(AbortCause::Signal);
        aborted.abort(AbortCause::Timeout);
        assert!(aborted.is_stopping(), "an abort stops too");
        let cause = tokio_test_block_on(aborted.aborted());
        assert_eq!(cause, AbortCause::Signal, "the first cause is kept");
        assert_eq!(cause.exit_code(), 130);
    }

    fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}

//! Why and how a run stops early: SIGINT/SIGTERM (the first stops the
//! input and starts the shutdown deadline, the second gives up at once), a
//! target that stopped taking records, and the exit code that says so.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shardlake_producer::Producer;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::outcomes::Summary;

/// Every record read was sent.
pub(crate) const EXIT_OK: u8 = 0;
/// The input was read to the end; some records failed or have an unknown
/// outcome (see the failures file).
pub(crate) const EXIT_FAILED: u8 = 1;
/// Bad usage or setup (config, a missing stream at start, a control-plane
/// call past its deadline); nothing was sent.
pub(crate) const EXIT_SETUP: u8 = 2;
/// Stopped before the end of the input (a signal, or a stream that stopped
/// taking records) with records failed or of unknown outcome.
pub(crate) const EXIT_STOPPED_WITH_FAILURES: u8 = 3;

/// The exit code of a run: 0 all sent; 1 input read to the end with
/// failures or unknown outcomes; 3 stopped early with failures or unknown
/// outcomes; 128 + the signal number (130 SIGINT, 143 SIGTERM) stopped by a
/// signal with every record read sent (resume after `lines_read`).
pub(crate) fn exit_code(s: &Summary) -> u8 {
    let clean = s.failed == 0 && s.unknown == 0;
    match (&s.stopped, clean) {
        (None, true) => EXIT_OK,
        (None, false) => EXIT_FAILED,
        (Some(Stop::Signal { number, .. }), true) => 128 + number,
        (Some(_), _) => EXIT_STOPPED_WITH_FAILURES,
    }
}

/// Why the input was not read to the end.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    /// SIGINT or SIGTERM.
    Signal {
        /// `SIGINT` or `SIGTERM`.
        name: &'static str,
        /// Its number, for the exit code.
        number: u8,
    },
    /// The target stopped taking records (deleted, access denied).
    TargetUnusable(String),
}

impl Stop {
    pub(crate) fn label(&self) -> &str {
        match self {
            Stop::Signal { name, .. } => name,
            Stop::TargetUnusable(_) => "target_unusable",
        }
    }
}

/// State shared by the reader, the collector and the signal task.
#[derive(Clone)]
pub(crate) struct Control {
    /// Stop reading input: the first signal, or a target that stopped
    /// taking records.
    pub(crate) stop: CancellationToken,
    /// Why, set once (the first reason wins).
    pub(crate) reason: Arc<OnceLock<Stop>>,
}

impl Control {
    pub(crate) fn stop(&self, why: Stop) {
        if self.reason.set(why).is_ok() {
            self.stop.cancel();
        }
    }
}

/// Watches SIGINT and SIGTERM: the first stops the input and starts the
/// shutdown deadline, the second gives up on what is left at once.
pub(crate) fn watch_signals(
    (mut sigint, mut sigterm): (Signal, Signal),
    control: Control,
    producer: Producer,
    shutdown_timeout: Duration,
) {
    let deadline_producer = producer.clone();
    let stop = control.stop.clone();
    // The deadline counts from the first signal (or the stream stopping).
    tokio::spawn(async move {
        stop.cancelled().await;
        tokio::time::sleep(shutdown_timeout).await;
        eprintln!(
            "shardlake-producer: the shutdown deadline of {}s passed; giving up on the records not resolved",
            shutdown_timeout.as_secs()
        );
        deadline_producer.abort();
    });
    tokio::spawn(async move {
        let (name, number) = next_signal(&mut sigint, &mut sigterm).await;
        eprintln!(
            "shardlake-producer: {name}: no more input is read; sending what was read within {}s \
             (--shutdown-timeout); a second signal gives up at once",
            shutdown_timeout.as_secs()
        );
        control.stop(Stop::Signal { name, number });
        let (name, _) = next_signal(&mut sigint, &mut sigterm).await;
        eprintln!("shardlake-producer: {name} again: giving up on the records not resolved");
        producer.abort();
    });
}

/// The next SIGINT or SIGTERM: its name and number.
pub(crate) async fn next_signal(sigint: &mut Signal, sigterm: &mut Signal) -> (&'static str, u8) {
    tokio::select! {
        _ = sigint.recv() => ("SIGINT", 2),
        _ = sigterm.recv() => ("SIGTERM", 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_say_whether_anything_failed_and_whether_input_was_read_to_the_end() {
        let sigterm = || Some(Stop::Signal { name: "SIGTERM", number: 15 });
        let s = |stopped, failed, unknown| Summary { stopped, failed, unknown, ..Summary::default() };
        assert_eq!(exit_code(&s(None, 0, 0)), 0);
        assert_eq!(exit_code(&s(None, 1, 0)), 1);
        assert_eq!(exit_code(&s(None, 0, 1)), 1);
        assert_eq!(exit_code(&s(sigterm(), 0, 0)), 143);
        assert_eq!(exit_code(&s(Some(Stop::Signal { name: "SIGINT", number: 2 }), 0, 0)), 130);
        assert_eq!(exit_code(&s(sigterm(), 0, 3)), 3);
        assert_eq!(exit_code(&s(Some(Stop::TargetUnusable("gone".into())), 5, 0)), 3);
    }
}

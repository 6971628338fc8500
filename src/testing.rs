//! For the workspace's tests (the binaries never call it): the local AWS
//! stack that `scripts/test` starts, and one test file at a time on it.
//!
//! A test that needs the emulators begins with
//! `let Some(_stack) = shardlake::testing::stack() else { return };`.
//! Without the stack's variables it returns there, saying so in one line on
//! stderr, so a plain `cargo test` passes on a machine without the
//! emulators. Under `SHARDLAKE_REQUIRE_STACK=1`, which `scripts/test` (the
//! README's and CI's test command) sets, a missing variable fails the test
//! instead: CI never skips silently.
//!
//! Each crate's integration tests are one binary (`tests/it/`), so the tests
//! of different files share a process. Those of one file were written to
//! run beside each other only (each file was a binary of its own, and
//! `cargo test` runs binaries one after the other): timing windows such as
//! the fault tests' health checks or the fleet's takeover bound are sized
//! for that on a 2-core machine. The guard `stack` returns keeps it so: a
//! test waits while tests of another file hold the stack. The file is read
//! from the name the test harness gives the test's thread, so `stack` is
//! called first thing in the test, on that thread.

use std::io::Write;
use std::sync::{Condvar, Mutex, PoisonError};

/// The variables `scripts/emulators start` (and `env`) export: the
/// emulators' endpoints and the Python with DuckDB and pyarrow.
pub const STACK_VARIABLES: [&str; 7] = [
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_FIREHOSE",
    "AWS_ENDPOINT_URL_GLUE",
    "SHARDLAKE_KINESALITE_ENDPOINT",
    "SHARDLAKE_PYTHON",
];

/// Set to `1` (by `scripts/test`): a test that needs the stack fails when
/// a variable of it is missing, instead of being skipped.
pub const REQUIRE_STACK: &str = "SHARDLAKE_REQUIRE_STACK";

/// The first of [`STACK_VARIABLES`] that is not set (or empty).
pub fn missing_stack_variable() -> Option<&'static str> {
    STACK_VARIABLES.into_iter().find(|name| std::env::var_os(name).is_none_or(|v| v.is_empty()))
}

/// The calling test's hold on the local AWS stack: tests of other files
/// wait until it is dropped (at the end of the test).
#[must_use = "the test holds the stack until this is dropped"]
#[derive(Debug)]
pub struct Stack(());

/// The stack for the calling test, after tests of other files have
/// released it; `None` when a variable of the stack is missing (the test
/// then returns: it is skipped, with a line on stderr). Panics instead when
/// [`REQUIRE_STACK`] is `1`.
pub fn stack() -> Option<Stack> {
    let thread = std::thread::current();
    // The test harness names each test's thread after the test
    // (`faults::s3_black_holed_then_healthy_every_shard_resumes`).
    let test = thread.name().unwrap_or("a test");
    if let Some(name) = missing_stack_variable() {
        if std::env::var_os(REQUIRE_STACK).is_some_and(|v| v == "1") {
            panic!(
                "{name} is not set, and {REQUIRE_STACK}=1: {test} needs the local AWS stack (scripts/test starts it)"
            );
        }
        // Straight to stderr, past the harness's capture of `eprintln!`,
        // so the skip shows in a passing run.
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipped {test}: needs the local AWS stack ({name} not set); scripts/test runs it"
        );
        return None;
    }
    Some(turn(test.rsplit_once("::").map_or("", |(file, _)| file)))
}

/// Waits until no test of another file holds the stack, then holds it for
/// `file` (a module path).
fn turn(file: &str) -> Stack {
    let mut turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    while turn.file.as_deref().is_some_and(|holder| holder != file) {
        turn = TURN_ENDED.wait(turn).unwrap_or_else(PoisonError::into_inner);
    }
    turn.file = Some(file.to_string());
    turn.tests += 1;
    Stack(())
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        turn.tests -= 1;
        if turn.tests == 0 {
            turn.file = None;
            TURN_ENDED.notify_all();
        }
    }
}

/// Which test file (module path) holds the stack, by how many of its tests.
struct Turn {
    file: Option<String>,
    tests: usize,
}

static TURN: Mutex<Turn> = Mutex::new(Turn { file: None, tests: 0 });
static TURN_ENDED: Condvar = Condvar::new();

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::turn;

    #[test]
    fn tests_of_one_file_share_the_stack_and_those_of_another_wait() {
        let a1 = turn("gate_a");
        let a2 = turn("gate_a");
        let (sender, receiver) = mpsc::channel();
        let b = std::thread::spawn(move || {
            let _b = turn("gate_b");
            sender.send(()).unwrap();
        });
        drop(a1);
        assert!(receiver.recv_timeout(Duration::from_millis(300)).is_err(), "gate_b waits while gate_a runs");
        drop(a2);
        receiver.recv_timeout(Duration::from_secs(10)).expect("gate_b's turn once gate_a is done");
        b.join().unwrap();
        drop(turn("gate_a"));
    }
}

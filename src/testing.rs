//! For the workspace's tests (the binaries never call it): the local AWS
//! stack that `scripts/test` starts.
//!
//! A test that needs the emulators begins with
//! `let Some(_stack) = shardlake::testing::stack() else { return };`.
//! Without the stack's variables it returns there, saying so in one line on
//! stderr, so a plain `cargo test` passes on a machine without the
//! emulators. Under `SHARDLAKE_REQUIRE_STACK=1`, which `scripts/test` (the
//! README's and CI's test command) sets, a missing variable fails the test
//! instead: CI never skips silently.

use std::io::Write;

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

/// The calling test's hold on the local AWS stack.
#[must_use = "the test holds the stack until this is dropped"]
#[derive(Debug)]
pub struct Stack(());

/// The stack for the calling test; `None` when a variable of the stack is
/// missing (the test then returns: it is skipped, with a line on stderr).
/// Panics instead when [`REQUIRE_STACK`] is `1`.
pub fn stack() -> Option<Stack> {
    let thread = std::thread::current();
    // The test harness names each test's thread after the test.
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
    Some(Stack(()))
}

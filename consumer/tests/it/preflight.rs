//! Issue 26, row 7, "Preflight": what a config needs is checked before `run`
//! reads a record (and by `config check --online`). No credentials, no
//! region, a missing bucket or stream: `run` exits non-zero within 10 s with
//! one line that names the problem and the fix, never a worker retrying at
//! 503 for ever; `convert` to a missing bucket is one line too, never the
//! SDK's `Debug` dump. A healthy config starts as before.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;
use faultproxy::{FaultProxy, Flavor, Mode};

/// What a permanent problem may take, from start to exit.
const LIMIT: Duration = Duration::from_secs(10);

/// How the AWS environment of a run is changed.
#[derive(Clone, Copy, PartialEq)]
enum Env {
    /// The emulators' (credentials, region, endpoints).
    Stack,
    /// No credentials anywhere in the chain.
    NoCredentials,
    /// No region anywhere.
    NoRegion,
}

/// Runs the consumer with `args` in `env`, killing it after 30 s; returns
/// its output and how long it ran.
fn consumer(args: &[&str], env: Env, home: &Path) -> (Output, Duration) {
    stack_env("AWS_ENDPOINT_URL_KINESIS");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Empty profile files: a developer's ~/.aws must not answer for the test.
    for file in ["aws-config", "aws-credentials"] {
        std::fs::write(home.join(file), "").unwrap();
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    match env {
        Env::Stack => {}
        Env::NoCredentials => {
            for var in [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ] {
                cmd.env_remove(var);
            }
        }
        Env::NoRegion => {
            cmd.env_remove("AWS_REGION").env_remove("AWS_DEFAULT_REGION");
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out, started.elapsed())
}

/// The stderr of a run that must fail within [`LIMIT`] with exactly one
/// line, and no SDK `Debug` output.
fn one_line_failure((out, took): (Output, Duration)) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure:\n{err}");
    assert!(took < LIMIT, "took {took:?} to fail:\n{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    for dump in ["ServiceError {", "raw: Response", "ErrorMetadata {", "DispatchFailure(", " { "] {
        assert!(!err.contains(dump), "SDK Debug output ({dump}) reached the user:\n{err}");
    }
    err
}

fn run(setup: &Setup, env: Env) -> (Output, Duration) {
    let config = setup.dir.path().join("consumer.toml");
    consumer(&["run", "--config", config.to_str().unwrap()], env, setup.dir.path())
}

#[test]
fn without_credentials_run_exits_at_once_naming_them_and_the_fix() {
    let Some(_stack) = stack() else { return };
    let setup = Setup::new("any-stream");
    setup.config("");
    let err = one_line_failure(run(&setup, Env::NoCredentials));
    assert!(err.contains("credentials: no AWS credentials found"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_PROFILE"), "{err}");

    let config = setup.dir.path().join("consumer.toml");
    let args = ["config", "check", "--online", "--config", config.to_str().unwrap()];
    let (out, took) = consumer(&args, Env::NoCredentials, setup.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && took < LIMIT, "{took:?}\n{text}");
    assert!(text.contains("credentials       PROBLEM: credentials: no AWS credentials found"), "{text}");
    assert!(text.contains("stream            skipped: needs credentials and a region"), "{text}");
}

#[test]
fn without_a_region_run_exits_at_once_naming_it_and_the_fix() {
    let Some(_stack) = stack() else { return };
    let setup = Setup::new("any-stream");
    setup.config("");
    let err = one_line_failure(run(&setup, Env::NoRegion));
    assert!(err.contains("region: no AWS region is set; set AWS_REGION"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_ends_run_at_once_naming_the_bucket_without_sdk_dumps() {
    let Some(_stack) = stack() else { return };
    let stream = create_stream(&kinesis().await, 1).await;
    let setup = Setup::new(&stream);
    let bucket = unique("missing-bucket");
    setup.config_to(&format!("s3://{bucket}/lake"), "");
    let err = one_line_failure(run(&setup, Env::Stack));
    assert!(err.contains(&format!("destination: bucket `{bucket}` does not exist")), "{err}");
    assert!(err.contains("S3 PutObject: NoSuchBucket: The specified bucket does not exist"), "{err}");
    assert!(err.contains("create it, or fix `destination`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_ends_run_at_once_with_the_fix() {
    let Some(_stack) = stack() else { return };
    let setup = Setup::new(&unique("no-such-stream"));
    setup.config("");
    let err = one_line_failure(run(&setup, Env::Stack));
    assert!(err.contains(&format!("stream `{}` does not exist in us-east-1", setup.stream)), "{err}");
    assert!(err.contains("AWS_ENDPOINT_URL_KINESIS"), "{err}");
}

#[test]
fn convert_to_a_missing_bucket_is_one_line() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 100, 5);
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, shardlake::events::EVENTS_SCHEMA_TOML).unwrap();
    let bucket = unique("missing-bucket");
    let destination = format!("s3://{bucket}/lake/");
    let args = ["convert", "--input", input.to_str().unwrap(), "--destination", &destination];
    let args = [&args[..], &["--schema", schema.to_str().unwrap(), "--time-field", "ts", "--quiet"]].concat();
    let err = one_line_failure(consumer(&args, Env::Stack, dir.path()));
    assert!(err.contains(&format!("--destination: bucket `{bucket}` does not exist")), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");

    let err = one_line_failure(consumer(&args, Env::NoCredentials, dir.path()));
    assert!(err.contains("no AWS credentials found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_online_lists_every_check_and_fails_on_a_missing_stream() {
    let Some(_stack) = stack() else { return };
    let s3 = s3_client().await;
    let stream = create_stream(&kinesis().await, 2).await;
    let bucket = unique("preflight");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let setup = Setup::new(&stream);
    let table = unique("leases");
    let database = unique("lake").replace('-', "_");
    let top = format!(
        "checkpoint_store = \"dynamodb://{table}\"\ncatalog = \"glue://{database}/events\"\ncatalog_create = true\n"
    );
    let config = setup.config_to(&format!("s3://{bucket}/lake/"), "");
    // The generated file's store is a folder; this one is the fleet's table.
    let text = std::fs::read_to_string(&config).unwrap();
    let text: String = text.lines().filter(|l| !l.starts_with("checkpoint_store")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&config, format!("{top}{text}[fleet]\ncreate_table = true\n")).unwrap();
    let args = ["config", "check", "--online", "--config", config.to_str().unwrap()];

    let (out, took) = consumer(&args, Env::Stack, setup.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < LIMIT, "{took:?}");
    for want in [
        "credentials       ok: access key ID ending in test".to_string(),
        "region            ok: us-east-1".into(),
        format!("stream            ok: `{stream}` ACTIVE, 2 open shards"),
        "destination       ok: a probe object was written and deleted".into(),
        format!("checkpoint_store  ok: DynamoDB table `{table}` missing: created at start"),
        format!("catalog           ok: Glue database `{database}` missing: created at start"),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    let left = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert!(left.contents().is_empty(), "the probe object was left: {:?}", left.contents());

    let missing = unique("no-such-stream");
    let text = std::fs::read_to_string(&config).unwrap().replace(&stream, &missing);
    std::fs::write(&config, text).unwrap();
    let (out, took) = consumer(&args, Env::Stack, setup.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && took < LIMIT, "{took:?}\n{text}\n{err}");
    assert!(text.contains(&format!("stream            PROBLEM: stream: stream `{missing}` does not exist")), "{text}");
    assert!(text.contains("destination       ok"), "the other checks still ran:\n{text}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: stream: stream `{missing}` does not exist")), "{err}");
}

/// A healthy S3 config starts as it did before, and the probe leaves
/// nothing in the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_config_starts_and_leaves_no_probe_behind() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let s3 = s3_client().await;
    let stream = create_stream(&client, 1).await;
    let bucket = unique("healthy");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let setup = Setup::new(&stream);
    setup.config_to(&format!("s3://{bucket}/lake/"), "");
    let started = Instant::now();
    let mut consumer = setup.start(&[]);
    let ready = started.elapsed();
    let landed = put_records(&client, &stream, &keyed(events(50, 3, 1))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert!(!setup.log().contains("warning"), "{}", setup.log());
    let keys: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(!keys.is_empty() && keys.iter().all(|k| !k.contains("_shardlake_preflight")), "{keys:?}");
    eprintln!("ready after {ready:?}");
}

/// Transient failures at start (S3 answering 500, Kinesis throttling) are
/// retried, as before: the worker starts once they pass, and nothing is
/// reported as a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_at_start_are_retried_until_they_pass() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let s3 = s3_client().await;
    let stream = create_stream(&client, 1).await;
    let bucket = unique("flaky");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let s3_proxy = Arc::new(FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_S3"), Flavor::S3).await.unwrap());
    let kinesis_proxy =
        Arc::new(FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap());
    s3_proxy.set(Mode::ServerError);
    kinesis_proxy.set(Mode::Throttle);
    let setup = Setup::new(&stream);
    setup.config_to(&format!("s3://{bucket}/lake/"), "");
    let healed = {
        let (s3_proxy, kinesis_proxy) = (s3_proxy.clone(), kinesis_proxy.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            s3_proxy.set(Mode::Pass);
            kinesis_proxy.set(Mode::Pass);
        })
    };
    let started = Instant::now();
    let mut consumer = setup
        .start(&[("AWS_ENDPOINT_URL_S3", &s3_proxy.endpoint), ("AWS_ENDPOINT_URL_KINESIS", &kinesis_proxy.endpoint)]);
    let ready = started.elapsed();
    healed.await.unwrap();
    assert!(consumer.try_wait().unwrap().is_none(), "exited at start:\n{}", setup.log());
    assert!(ready >= Duration::from_secs(3), "ready after {ready:?}, before the failures passed");
    assert!(
        s3_proxy.counts.errors.load(Ordering::Relaxed) > 0 && kinesis_proxy.counts.errors.load(Ordering::Relaxed) > 0
    );
    assert!(!setup.log().contains("error") && !setup.log().contains("warning"), "{}", setup.log());
    let landed = put_records(&client, &stream, &keyed(events(20, 8, 1))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    eprintln!("ready {ready:?} after start, with 3 s of 500s and throttles");
}

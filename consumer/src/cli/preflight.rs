//! Preflight: what a config needs, checked before `run` reads a record and
//! by `config check --online`. Credentials and region resolve; the stream
//! exists and can be described; the destination takes a write and a delete
//! of a probe object (and a listing, when the catalog lists the lake); the
//! fleet's DynamoDB table exists or may be created; the Glue database
//! answers. A missing credential, region, bucket or permission is one line
//! naming the setting, what failed and the fix, and `run` exits non-zero at
//! once instead of a worker retrying at 503 for ever. A transient failure (a
//! throttle, a 5xx, a timeout, a refused connection) is retried with capped,
//! jittered back-off until the patience runs out; `run` then starts anyway
//! and its workers retry as they always have.
//!
//! Each check is a pure classification of what its one AWS call answered
//! (`*_outcome`, unit-tested below) and a runner that retries the transient
//! ones ([`patiently`]).

use std::future::Future;
use std::time::Duration;

use shardlake::aws::{CallError, CredentialsProblem};
use shardlake::catalog::TableName;
use shardlake::retry::{FailedAttempt, GaveUp, RetryClass, RetryPolicy};
use shardlake::store::{Location, ObjectStore, ProbeError, S3Options};
use tokio::time::Instant;

use crate::config::Settings;
use crate::kinesis::StreamSummary;

/// How long `run` retries a check that keeps failing transiently before it
/// starts anyway: long enough for an endpoint that is coming up, short
/// enough that an outage delays nothing much (the workers retry it too).
pub const RUN_PATIENCE: Duration = Duration::from_secs(20);

/// How long `config check --online` retries a transiently failing check
/// before it reports it as not confirmed (and exits non-zero).
pub const CHECK_PATIENCE: Duration = Duration::from_secs(10);

/// The limit of one credentials resolution (the chain may ask an instance
/// metadata service or STS).
const CREDENTIALS_LIMIT: Duration = Duration::from_secs(5);

/// Back-off between attempts of a transiently failing check.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(200), cap: Duration::from_secs(4) };

/// Where probe objects go under the destination: a folder Hive-style readers
/// (Athena, Spark, Glue crawlers) skip because of its leading `_`.
pub const PROBE_FOLDER: &str = "_shardlake_preflight/";

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed; what was found.
    Ok(String),
    /// Passed, with something to fix (a probe object left behind).
    Warning(String),
    /// Needs a fix: one line naming the setting, what failed and the fix.
    Problem(String),
    /// Failed transiently until the patience ran out: not confirmed.
    Unsure(String),
    /// Not checked, because an earlier check failed.
    Skipped(String),
}

/// One named check and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The setting checked (`credentials`, `stream`, `destination`, ...).
    pub name: &'static str,
    /// What was found.
    pub verdict: Verdict,
}

/// How one attempt of a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Worth another attempt; the line says what failed.
    Transient(String),
    /// Needs a fix; the line says which.
    Problem(String),
}

/// The passing verdicts of one attempt, or how it failed.
type Attempt = Result<Verdict, Failure>;

/// Runs `check` until it passes or finds a problem, retrying transient
/// failures with capped, jittered back-off until `deadline`; each attempt
/// is cut off at the deadline too.
async fn patiently<F, Fut>(deadline: Instant, mut check: F) -> Verdict
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let classify = |f: &Failure| match f {
        Failure::Transient(_) => RetryClass::Transient,
        Failure::Problem(_) => RetryClass::Fatal,
    };
    let report = |f: &FailedAttempt<'_, Failure>| {
        if let (Failure::Transient(line), Some(_)) = (f.error, f.retry_in) {
            tracing::debug!(attempt = f.attempt, error = line, "preflight: transient failure, retrying");
        }
    };
    match BACKOFF.run_until(|_| check(), classify, report, tokio::time::sleep_until(deadline)).await {
        Ok(verdict) => verdict,
        Err(GaveUp::Failed(Failure::Problem(line))) => Verdict::Problem(line),
        // Out of patience: the last transient failure, or an attempt cut off.
        Err(GaveUp::Failed(Failure::Transient(line))) | Err(GaveUp::Stopped(Some(Failure::Transient(line)))) => {
            Verdict::Unsure(line)
        }
        Err(GaveUp::Stopped(Some(Failure::Problem(line)))) => Verdict::Problem(line),
        Err(GaveUp::Stopped(None)) => Verdict::Unsure("no answer in time".into()),
    }
}

/// The credentials check: none found (or a broken profile) needs a fix; a
/// provider that timed out or failed (STS answering 503) is retried.
fn credentials_outcome(found: Result<String, CredentialsProblem>) -> Attempt {
    match found {
        Ok(which) => Ok(Verdict::Ok(which)),
        Err(p) if p.transient => Err(Failure::Transient(format!("credentials: {}", p.message))),
        Err(p) => Err(Failure::Problem(format!(
            "credentials: no AWS credentials found ({}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
             AWS_PROFILE, or run on an instance or task role",
            p.message
        ))),
    }
}

/// The region check: nothing to retry, the SDK config has one or not.
fn region_outcome(region: Option<&str>) -> Attempt {
    match region {
        Some(r) => Ok(Verdict::Ok(r.to_string())),
        None => Err(Failure::Problem(
            "region: no AWS region is set; set AWS_REGION (e.g. AWS_REGION=us-east-1), or `region` in the profile \
             AWS_PROFILE names"
                .into(),
        )),
    }
}

/// A failed call: transient ones are retried, the rest need `fix`.
fn call_failure(setting: &str, what: &str, e: &CallError, fix: &str) -> Failure {
    if e.transient {
        Failure::Transient(format!("{setting}: {e}"))
    } else {
        Failure::Problem(format!("{setting}: {what} ({e}); {fix}"))
    }
}

/// The stream check (DescribeStreamSummary).
fn stream_outcome(stream: &str, region: &str, answer: Result<Option<StreamSummary>, CallError>) -> Attempt {
    match answer {
        Ok(Some(s)) => Ok(Verdict::Ok(format!("`{stream}` {}, {} open shards", s.status, s.open_shards))),
        Ok(None) => Err(Failure::Problem(format!(
            "stream: stream `{stream}` does not exist in {region}; check `stream`, AWS_REGION and \
             AWS_ENDPOINT_URL_KINESIS, or create the stream"
        ))),
        Err(e) if is_denied(e.code.as_deref()) => Err(call_failure(
            "stream",
            &format!("may not describe stream `{stream}`"),
            &e,
            "allow kinesis:DescribeStreamSummary, ListShards, GetShardIterator and GetRecords on it (docs/getting-started-aws.md: \
             IAM role)",
        )),
        Err(e) => Err(call_failure(
            "stream",
            &format!("cannot describe stream `{stream}` in {region}"),
            &e,
            "check `stream`, the credentials and AWS_ENDPOINT_URL_KINESIS",
        )),
    }
}

/// Codes (or, for bodiless answers, the status) that mean the credentials
/// may not do this, or are not valid at all.
fn is_denied(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AccessDenied"
                | "AccessDeniedException"
                | "UnauthorizedOperation"
                | "UnrecognizedClientException"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidClientTokenId"
                | "HTTP 403"
        )
    )
}

/// The destination check (put, delete, list of a probe object). `setting`
/// is the key or flag that names the destination.
fn destination_outcome(setting: &str, location: &Location, answer: Result<(), ProbeError>) -> Attempt {
    let e = match answer {
        Ok(()) => return Ok(Verdict::Ok("a probe object was written and deleted".into())),
        Err(e) => e,
    };
    if e.transient {
        return Err(Failure::Transient(format!("{setting}: {e}")));
    }
    let Location::S3 { bucket, prefix } = location else {
        return Err(Failure::Problem(format!(
            "{setting}: cannot {} in the lake folder ({}); make the folder writable by this user, or fix `{setting}`",
            e.step, e.message
        )));
    };
    let arn = format!("arn:aws:s3:::{bucket}/{}*", shardlake::store::folder_prefix(prefix));
    let line = match (e.step, e.code.as_deref()) {
        (_, Some("NoSuchBucket")) => {
            format!("{setting}: bucket `{bucket}` does not exist ({}); create it, or fix `{setting}`", e.message)
        }
        // The data is written: only the probe object is left behind.
        ("delete", _) => {
            return Ok(Verdict::Warning(format!(
                "{setting}: the probe object {} could not be deleted ({}); allow s3:DeleteObject on \
                 {arn} or delete it by hand",
                e.url, e.message
            )));
        }
        ("put", code) if is_denied(code) => format!(
            "{setting}: may not write to bucket `{bucket}` ({}); allow s3:PutObject on {arn} (and \
             kms:GenerateDataKey with sse_kms_key_id)",
            e.message
        ),
        ("list", code) if is_denied(code) => format!(
            "{setting}: may not list bucket `{bucket}` ({}); the catalog needs s3:ListBucket on \
             arn:aws:s3:::{bucket}",
            e.message
        ),
        (step, _) => {
            format!("{setting}: cannot {step} in bucket `{bucket}` ({}); fix `{setting}` or the bucket", e.message)
        }
    };
    Err(Failure::Problem(line))
}

/// The fleet table check (DescribeTable).
fn table_outcome(table: &str, create: bool, answer: Result<Option<String>, CallError>) -> Attempt {
    match answer {
        Ok(Some(status)) => Ok(Verdict::Ok(format!("DynamoDB table `{table}` {status}"))),
        Ok(None) if create => Ok(Verdict::Ok(format!("DynamoDB table `{table}` missing: created at start"))),
        Ok(None) => Err(Failure::Problem(format!(
            "checkpoint_store: DynamoDB table `{table}` does not exist and fleet.create_table is false; create it \
             (docs/fleet.md) or set fleet.create_table = true"
        ))),
        Err(e) => Err(call_failure(
            "checkpoint_store",
            &format!("cannot describe DynamoDB table `{table}`"),
            &e,
            "allow dynamodb:DescribeTable (and the table's other actions, docs/fleet.md) and check \
             AWS_ENDPOINT_URL_DYNAMODB",
        )),
    }
}

/// The Glue check (GetDatabase) of the database of `table`. `create`: the
/// database is created when missing (`catalog_create`).
fn database_outcome(setting: &str, table: &TableName, create: bool, answer: Result<bool, CallError>) -> Attempt {
    let database = &table.database;
    match answer {
        Ok(true) => Ok(Verdict::Ok(format!("Glue database `{database}`"))),
        Ok(false) if create => Ok(Verdict::Ok(format!("Glue database `{database}` missing: created at start"))),
        // Said as the catalog says a missing table, which it is too.
        Ok(false) if setting == "catalog" => Err(Failure::Problem(format!(
            "catalog {table}: the table does not exist, nor its Glue database `{database}`; create them (`schema \
             ddl` prints the table's DDL) or set catalog_create = true"
        ))),
        Ok(false) => Err(Failure::Problem(format!(
            "{setting}: Glue database `{database}` does not exist; create it with the table {table}, or fix \
             `{setting}`"
        ))),
        Err(e) => Err(call_failure(
            setting,
            &format!("cannot read Glue database `{database}`"),
            &e,
            "allow glue:GetDatabase and the other Glue actions (docs/getting-started-aws.md), and check AWS_ENDPOINT_URL_GLUE",
        )),
    }
}

/// A probe key no other worker uses at the same time.
fn probe_key() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{PROBE_FOLDER}{}-{ms}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Credentials and region of `sdk`: everything else waits for them.
async fn identity(sdk: &aws_config::SdkConfig, deadline: Instant) -> Vec<Check> {
    let credentials = patiently(deadline, || async {
        credentials_outcome(shardlake::aws::resolve_credentials(sdk, CREDENTIALS_LIMIT).await)
    })
    .await;
    let region = match region_outcome(sdk.region().map(|r| r.as_ref())) {
        Ok(v) => v,
        Err(Failure::Problem(l) | Failure::Transient(l)) => Verdict::Problem(l),
    };
    vec![Check { name: "credentials", verdict: credentials }, Check { name: "region", verdict: region }]
}

fn blocked(checks: &[Check]) -> bool {
    checks.iter().any(|c| matches!(c.verdict, Verdict::Problem(_)))
}

/// The destination's probe, retried while it fails transiently.
async fn destination(setting: &str, url: &str, s3: &S3Options, list: bool, deadline: Instant) -> Verdict {
    let location = match Location::parse(url) {
        Ok(l) => l,
        Err(e) => return Verdict::Problem(format!("{setting}: {e}")),
    };
    let store = match ObjectStore::open(url, s3).await {
        Ok(s) => s,
        Err(e) => return Verdict::Problem(format!("{setting}: {e}")),
    };
    patiently(deadline, || async { destination_outcome(setting, &location, store.probe(&probe_key(), list).await) })
        .await
}

/// Every check `settings` needs, the independent ones at once; transient
/// failures are retried for `patience`.
pub async fn check(settings: &Settings, patience: Duration) -> Vec<Check> {
    let deadline = Instant::now() + patience;
    let c = &settings.config;
    // An Iceberg table in Glue: its database is checked as the catalog's.
    let iceberg_table =
        settings.iceberg.as_deref().filter(|u| u.starts_with("glue://")).and_then(|u| TableName::parse(u).ok());
    let catalog = settings.catalog.as_ref().or(iceberg_table.as_ref());
    let sdk = shardlake::aws::sdk_config().await;
    let mut checks = identity(&sdk, deadline).await;
    let skipped =
        |name: &'static str| Check { name, verdict: Verdict::Skipped("needs credentials and a region".into()) };
    if blocked(&checks) {
        checks.push(skipped("stream"));
        if matches!(Location::parse(&c.destination), Ok(Location::S3 { .. })) {
            checks.push(skipped("destination"));
        }
        if c.checkpoint_store.starts_with("dynamodb://") {
            checks.push(skipped("checkpoint_store"));
        }
        checks.extend(catalog.map(|_| skipped("catalog")));
        checks.extend(settings.schema_table.as_ref().map(|_| skipped("schema")));
        return checks;
    }
    let timeouts = c.timeouts.aws();
    let region = sdk.region().map_or_else(String::new, |r| r.to_string());
    let stream = async {
        let kinesis = crate::kinesis::get_records::kinesis_client(&sdk, &timeouts);
        let verdict = patiently(deadline, || async {
            stream_outcome(&c.stream, &region, crate::kinesis::describe_stream(&kinesis, &c.stream).await)
        })
        .await;
        Check { name: "stream", verdict }
    };
    let lake = async {
        // The catalog lists the lake when it creates the table over it.
        let verdict =
            destination("destination", &c.destination, &settings.s3, settings.catalog.is_some(), deadline).await;
        Check { name: "destination", verdict }
    };
    let table = async {
        let table = c.checkpoint_store.strip_prefix("dynamodb://")?;
        let client = crate::checkpoint::dynamodb::dynamodb_client(&sdk, &timeouts);
        let verdict = patiently(deadline, || async {
            table_outcome(table, c.fleet.create_table, crate::checkpoint::dynamodb::table_status(&client, table).await)
        })
        .await;
        Some(Check { name: "checkpoint_store", verdict })
    };
    let glue = async {
        let mut out = Vec::new();
        let databases: Vec<(&'static str, &TableName, bool)> = [
            catalog.map(|t| ("catalog", t, c.catalog_create)),
            settings.schema_table.as_ref().map(|t| ("schema", t, false)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if databases.is_empty() {
            return out;
        }
        let client = shardlake::aws::glue_client(&sdk, &timeouts);
        for (setting, table, create) in databases {
            let verdict = patiently(deadline, || async {
                let answer = shardlake::catalog::database_exists(&client, &table.database).await;
                database_outcome(setting, table, create, answer)
            })
            .await;
            out.push(Check { name: setting, verdict });
        }
        out
    };
    let (stream, lake, table, glue) = tokio::join!(stream, lake, table, glue);
    checks.extend([stream, lake]);
    checks.extend(table);
    checks.extend(glue);
    checks
}

/// `convert`'s check of its destination (and, for S3, of credentials and
/// region) before it reads any input.
pub async fn check_destination(url: &str, s3: &S3Options, patience: Duration) -> Vec<Check> {
    let deadline = Instant::now() + patience;
    let mut checks = Vec::new();
    if matches!(Location::parse(url), Ok(Location::S3 { .. })) {
        let sdk = shardlake::aws::sdk_config().await;
        checks = identity(&sdk, deadline).await;
        if blocked(&checks) {
            return checks;
        }
    }
    checks.push(Check { name: "destination", verdict: destination("--destination", url, s3, false, deadline).await });
    checks
}

/// The problems of `checks` as one error, one line each (`error: ` starts
/// every line once `main` prints it), or `Ok` when there are none.
pub fn problems(checks: &[Check]) -> anyhow::Result<()> {
    let lines: Vec<&str> = checks
        .iter()
        .filter_map(|c| match &c.verdict {
            Verdict::Problem(line) => Some(line.as_str()),
            _ => None,
        })
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", lines.join("\nerror: "))
}

/// What `run` and `convert` say of the checks that passed with a warning or
/// could not be confirmed (the problems are their error).
pub fn report_doubts(checks: &[Check], patience: Duration) {
    for c in checks {
        match &c.verdict {
            Verdict::Warning(line) => eprintln!("shardlake-consumer: warning: {line}"),
            Verdict::Unsure(line) => eprintln!(
                "shardlake-consumer: warning: {}: not confirmed within {} ({line}); going on anyway, the calls are \
                 retried as they are made",
                c.name,
                humantime::format_duration(patience)
            ),
            Verdict::Ok(found) => tracing::info!(check = c.name, found, "preflight"),
            Verdict::Problem(_) | Verdict::Skipped(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: Option<&str>, transient: bool) -> CallError {
        CallError {
            service: "S3",
            operation: "PutObject",
            code: code.map(str::to_string),
            message: "the message".into(),
            transient,
        }
    }

    fn problem(a: Attempt) -> String {
        match a {
            Err(Failure::Problem(line)) => {
                assert!(!line.contains('\n'), "{line}");
                line
            }
            other => panic!("expected a problem, got {other:?}"),
        }
    }

    #[test]
    fn missing_credentials_and_region_are_problems_with_the_fix() {
        let none =
            CredentialsProblem { message: "no providers in chain provided credentials".into(), transient: false };
        let line = problem(credentials_outcome(Err(none)));
        assert!(line.starts_with("credentials: no AWS credentials found (no providers"), "{line}");
        assert!(line.contains("AWS_ACCESS_KEY_ID") && line.contains("AWS_PROFILE"), "{line}");
        let slow = CredentialsProblem { message: "timed out".into(), transient: true };
        assert!(matches!(credentials_outcome(Err(slow)), Err(Failure::Transient(_))));
        assert!(problem(region_outcome(None)).contains("set AWS_REGION"));
        assert_eq!(region_outcome(Some("eu-west-1")), Ok(Verdict::Ok("eu-west-1".into())));
    }

    #[test]
    fn a_missing_stream_or_a_denied_one_is_a_problem_a_throttle_is_retried() {
        let line = problem(stream_outcome("events", "us-east-1", Ok(None)));
        assert!(line.contains("stream `events` does not exist in us-east-1") && line.contains("create the stream"));
        let denied = failed(Some("AccessDeniedException"), false);
        let line = problem(stream_outcome("events", "us-east-1", Err(denied)));
        assert!(line.contains("may not describe") && line.contains("kinesis:DescribeStreamSummary"), "{line}");
        let throttled = failed(Some("LimitExceededException"), true);
        assert!(matches!(stream_outcome("events", "us-east-1", Err(throttled)), Err(Failure::Transient(_))));
        let ok = Ok(Some(StreamSummary { status: "ACTIVE".into(), open_shards: 4, retention_hours: 24 }));
        assert_eq!(stream_outcome("events", "r", ok), Ok(Verdict::Ok("`events` ACTIVE, 4 open shards".into())));
    }

    fn probe_failed(step: &'static str, code: Option<&str>, transient: bool) -> Result<(), ProbeError> {
        Err(ProbeError {
            step,
            url: "s3://b/lake/_shardlake_preflight/1".into(),
            code: code.map(str::to_string),
            message: format!("S3 X: {}: m", code.unwrap_or("-")),
            transient,
        })
    }

    #[test]
    fn a_missing_or_denied_bucket_is_a_problem_naming_it_and_the_fix() {
        let s3 = Location::S3 { bucket: "b".into(), prefix: "lake".into() };
        let line = problem(destination_outcome("destination", &s3, probe_failed("put", Some("NoSuchBucket"), false)));
        assert!(line.starts_with("destination: bucket `b` does not exist (S3 X: NoSuchBucket: m)"), "{line}");
        assert!(line.ends_with("create it, or fix `destination`"), "{line}");
        let line = problem(destination_outcome("destination", &s3, probe_failed("put", Some("AccessDenied"), false)));
        assert!(line.contains("allow s3:PutObject on arn:aws:s3:::b/lake/*"), "{line}");
        let line = problem(destination_outcome("destination", &s3, probe_failed("list", Some("AccessDenied"), false)));
        assert!(line.contains("s3:ListBucket on arn:aws:s3:::b"), "{line}");
        let left = destination_outcome("destination", &s3, probe_failed("delete", Some("AccessDenied"), false));
        assert!(matches!(&left, Ok(Verdict::Warning(w)) if w.contains("s3:DeleteObject")), "{left:?}");
        let slow = destination_outcome("destination", &s3, probe_failed("put", Some("SlowDown"), true));
        assert!(matches!(slow, Err(Failure::Transient(_))));
        let folder = Location::File("/ro/lake".into());
        let line = problem(destination_outcome("--destination", &folder, probe_failed("put", None, false)));
        assert!(line.contains("make the folder writable") && line.contains("fix `--destination`"), "{line}");
    }

    #[test]
    fn a_missing_table_or_database_is_a_problem_unless_it_may_be_created() {
        assert!(problem(table_outcome("leases", false, Ok(None))).contains("set fleet.create_table = true"));
        assert!(matches!(table_outcome("leases", true, Ok(None)), Ok(Verdict::Ok(_))));
        let down = failed(Some("InternalServerError"), true);
        assert!(matches!(table_outcome("leases", true, Err(down)), Err(Failure::Transient(_))));
        let table = TableName::parse("glue://lake/events").unwrap();
        let line = problem(database_outcome("catalog", &table, false, Ok(false)));
        assert!(line.starts_with("catalog glue://lake/events: the table does not exist"), "{line}");
        assert!(line.contains("database `lake`") && line.contains("set catalog_create = true"), "{line}");
        let line = problem(database_outcome("schema", &table, false, Ok(false)));
        assert!(line.starts_with("schema: Glue database `lake` does not exist"), "{line}");
        assert!(matches!(database_outcome("catalog", &table, true, Ok(false)), Ok(Verdict::Ok(_))));
        let denied = failed(Some("AccessDeniedException"), false);
        assert!(problem(database_outcome("catalog", &table, true, Err(denied))).contains("glue:GetDatabase"));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_deadline_problems_end_at_once() {
        let start = Instant::now();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let verdict = patiently(start + Duration::from_secs(10), || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0..3 => Err(Failure::Transient("503".into())),
                _ => Ok(Verdict::Ok("found".into())),
            }
        })
        .await;
        assert_eq!((verdict, calls.into_inner()), (Verdict::Ok("found".into()), 4));

        let verdict =
            patiently(start + Duration::from_secs(10), || async { Err(Failure::Transient("503".into())) }).await;
        assert_eq!(verdict, Verdict::Unsure("503".into()));
        assert!(Instant::now() <= start + Duration::from_secs(10));

        let at = Instant::now();
        let verdict =
            patiently(at + Duration::from_secs(10), || async { Err(Failure::Problem("no bucket".into())) }).await;
        assert_eq!((verdict, Instant::now()), (Verdict::Problem("no bucket".into()), at));

        // An attempt that never answers ends at the deadline.
        let at = Instant::now();
        let verdict = patiently(at + Duration::from_secs(3), std::future::pending).await;
        assert_eq!(
            (verdict, Instant::now()),
            (Verdict::Unsure("no answer in time".into()), at + Duration::from_secs(3))
        );
    }
}

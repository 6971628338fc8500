//! `config iam-policy` against what `run` really calls: the worker runs with
//! every service behind its own fault proxy (passing everything), which
//! records the IAM action of each request; the policy must allow each of
//! them, and every action it allows must have been called, but for a short
//! list of actions no run of this kind can show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use faultproxy::{FaultProxy, Flavor};
use shardlake_consumer::checkpoint::{CheckpointStore, FleetOptions, compare_sequences};

/// Actions of the policy that the run below cannot show, and why.
const NOT_CALLED_HERE: [(&str, &str); 3] = [
    ("s3:AbortMultipartUpload", "only after a failed multipart upload (objects of 32 MiB and more)"),
    ("kms:GenerateDataKey", "S3 calls KMS for the worker's SSE-KMS puts; the worker sends no KMS request"),
    ("kms:Decrypt", "the same, for the parts of multipart uploads"),
];

/// An SSE-KMS key id; moto stores it with each object without asking KMS.
const KEY: &str = "arn:aws:kms:us-east-1:000000000000:key/11111111-2222-3333-4444-555555555555";

/// Runs `config iam-policy` with `args`; returns stdout (which must be the
/// JSON document alone) parsed, and stderr.
fn iam_policy(config: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["config", "iam-policy", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stderr}"));
    (json, stderr)
}

/// Every action of a policy document.
fn actions(policy: &serde_json::Value) -> BTreeSet<String> {
    let statements = policy["Statement"].as_array().unwrap();
    statements.iter().flat_map(|s| s["Action"].as_array().unwrap()).map(|a| a.as_str().unwrap().to_string()).collect()
}

#[test]
fn stdout_is_the_policy_alone_and_placeholders_are_named_on_stderr() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (policy, notes) = iam_policy(&examples.join("glue-register.toml"), &["--region", "eu-west-1"]);
    assert_eq!(policy["Version"], "2012-10-17");
    assert!(notes.contains("replace ACCOUNT_ID"), "{notes}");
    let text = policy.to_string();
    assert!(text.contains("arn:aws:glue:eu-west-1:ACCOUNT_ID:table/lake/events"), "{text}");
    let (policy, notes) = iam_policy(
        &examples.join("local-lake.toml"),
        &["--region", "eu-west-1", "--account", "123456789012", "--convert-input", "s3://in/events.jsonl.gz"],
    );
    assert!(!notes.contains("ACCOUNT_ID"), "{notes}");
    let kinesis =
        ["DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords"].map(|a| format!("kinesis:{a}"));
    let mut want: BTreeSet<String> = kinesis.into_iter().collect();
    want.insert("s3:GetObject".into());
    assert_eq!(actions(&policy), want);
    assert!(policy.to_string().contains("arn:aws:s3:::in/events.jsonl.gz"));
}

/// The docs show the command's own output for `examples/glue-register.toml`
/// (in the README or, once moved, a page under `docs/`).
#[test]
fn the_documented_policy_is_the_commands_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["config", "iam-policy", "--config"])
        .arg(root.join("examples/glue-register.toml"))
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).into_iter().flatten().map(|e| e.unwrap().path());
    pages.extend(docs.filter(|p| p.extension().is_some_and(|x| x == "md")));
    const MARK: &str = "For `examples/glue-register.toml`:\n\n```json\n";
    let shown: Vec<String> = pages
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|text| {
            let start = text.find(MARK)? + MARK.len();
            Some(text[start..].split("\n```").next()?.to_string())
        })
        .collect();
    assert_eq!(shown, [printed.trim_end().to_string()], "regenerate the docs' policy with the command");
}

/// The catalog (created, partitions registered), evolution (a new field
/// becomes a column), a DynamoDB fleet store (created) and an S3 lake with
/// SSE-KMS: the actions the worker's requests need are exactly the policy's,
/// but for [`NOT_CALLED_HERE`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_calls_exactly_the_actions_of_its_iam_policy() {
    let Some(_stack) = stack() else { return };
    let glue = glue().await;
    let db = unique("iam").replace('-', "_");
    let top = format!(
        "catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\nsse_kms_key_id = \"{KEY}\"\n"
    );
    let (allowed, called) = run_through_proxies(&top, || async {
        let table = glue.get_table().database_name(&db).name("events").send().await.ok()?.table?;
        let columns = table.storage_descriptor()?.columns();
        columns.iter().any(|c| c.name() == "coupon").then_some(())?;
        let partitions = glue.get_partitions().database_name(&db).table_name("events").send().await.ok()?;
        (!partitions.partitions().is_empty()).then_some(())
    })
    .await;
    let beyond: Vec<&String> = called.difference(&allowed).collect();
    assert!(beyond.is_empty(), "called but not in the policy: {beyond:?}\npolicy: {allowed:?}");
    let unused: BTreeSet<&str> = allowed.difference(&called).map(String::as_str).collect();
    let explained: BTreeSet<&str> = NOT_CALLED_HERE.iter().map(|(a, _)| *a).collect();
    assert_eq!(unused, explained, "in the policy but never called (called: {called:?})");
}

/// The same for an Iceberg table in Glue (created, evolved, committed to):
/// every call is allowed, and every allowed action but the multipart abort
/// is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_table_in_glue_calls_exactly_the_actions_of_its_iam_policy() {
    let Some(_stack) = stack() else { return };
    let glue = glue().await;
    let db = unique("iam").replace('-', "_");
    let top = format!(
        "table_format = \"iceberg\"\ncatalog = \"glue://{db}/events\"\ncatalog_create = true\n\
         unknown_fields = \"evolve\"\ncommit_interval = \"500ms\"\n"
    );
    let (allowed, called) = run_through_proxies(&top, || async {
        let table = glue.get_table().database_name(&db).name("events").send().await.ok()?.table?;
        let columns = table.storage_descriptor()?.columns();
        columns.iter().any(|c| c.name() == "coupon").then_some(())
    })
    .await;
    let beyond: Vec<&String> = called.difference(&allowed).collect();
    assert!(beyond.is_empty(), "called but not in the policy: {beyond:?}\npolicy: {allowed:?}");
    let unused: BTreeSet<&str> = allowed.difference(&called).map(String::as_str).collect();
    assert_eq!(
        unused,
        BTreeSet::from(["s3:AbortMultipartUpload"]),
        "in the policy but never called (called: {called:?})"
    );
    for action in ["glue:CreateTable", "glue:UpdateTable", "s3:GetObject"] {
        assert!(called.contains(action), "{action} never called: {called:?}");
    }
}

/// Runs a worker with `top` (config lines) on a 2-shard stream into an S3
/// lake, with every service behind a recording fault proxy; puts 200 events
/// and 200 with new fields, waits until every shard is committed and `done`
/// holds, and returns the policy's actions and the actions called.
async fn run_through_proxies<F, Fut>(top: &str, done: F) -> (BTreeSet<String>, BTreeSet<String>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let client = kinesis().await;
    let bucket = unique("iam-lake").to_lowercase();
    s3_client().await.create_bucket().bucket(&bucket).send().await.unwrap();
    let table = unique("iam-leases");
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    let config = setup.dir.path().join("consumer.toml");
    std::fs::write(
        &config,
        format!(
            "stream = \"{stream}\"\ndestination = \"s3://{bucket}/lake/\"\ncheckpoint_store = \"dynamodb://{table}\"\n\
             schema = \"schema.toml\"\ntime_field = \"ts\"\nshutdown_timeout = \"30s\"\n{top}\
             [fleet]\nworker_id = \"w0\"\ncreate_table = true\n\
             [buffer]\nmax_age = \"1s\"\n\
             [polling]\nidle_interval = \"200ms\"\nmax_idle_interval = \"1s\"\nshard_refresh = \"1s\"\n\
             [metrics]\naddress = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let (policy, _) = iam_policy(&config, &["--region", "us-east-1", "--account", "000000000000"]);
    let allowed = actions(&policy);

    let mut proxies = Vec::new();
    for (flavor, variable) in [
        (Flavor::Kinesis, "AWS_ENDPOINT_URL_KINESIS"),
        (Flavor::S3, "AWS_ENDPOINT_URL_S3"),
        (Flavor::DynamoDb, "AWS_ENDPOINT_URL_DYNAMODB"),
        (Flavor::Glue, "AWS_ENDPOINT_URL_GLUE"),
    ] {
        proxies.push((variable, FaultProxy::start(&stack_env(variable), flavor).await.unwrap()));
    }
    let env: Vec<(&str, &str)> = proxies.iter().map(|(v, p)| (*v, p.endpoint.as_str())).collect();
    let mut consumer = setup.start(&env);
    let mut landed = put_records(&client, &stream, &keyed(events(200, 91, 2))).await;
    landed.extend(put_records(&client, &stream, &keyed(with_coupons(events(200, 92, 2)))).await);

    // Committed: each shard's checkpoint in the table is at its last record.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (shard, seq) in landed {
        let e = last.entry(shard).or_insert_with(|| seq.clone());
        if compare_sequences(&seq, e).is_gt() {
            *e = seq;
        }
    }
    let options = FleetOptions {
        worker_id: "observer".into(),
        lease_duration: Duration::from_secs(10),
        create_table: false,
        timeouts: Default::default(),
    };
    let store = CheckpointStore::connect(&format!("dynamodb://{table}"), "shardlake", &stream, &options).await.unwrap();
    let observer = store.fleet().unwrap().clone();
    poll("every shard committed", Duration::from_secs(90), || async {
        let leases = observer.leases().await.ok()?;
        last.iter()
            .all(|(shard, seq)| {
                leases.iter().any(|l| {
                    &l.shard == shard && l.checkpoint.as_deref().is_some_and(|c| compare_sequences(c, seq).is_ge())
                })
            })
            .then_some(())
    })
    .await;
    poll("the run's catalog work done", Duration::from_secs(60), done).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    let mut called: BTreeMap<String, u64> = BTreeMap::new();
    for (_, proxy) in &proxies {
        for (action, n) in proxy.actions() {
            *called.entry(action).or_default() += n;
        }
    }
    eprintln!("actions called (requests): {called:?}");
    (allowed, called.into_keys().collect())
}

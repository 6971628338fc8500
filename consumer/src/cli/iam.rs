//! `config iam-policy`: the least-privilege IAM policy of a config.
//!
//! Which AWS calls `run` makes follows from a handful of settings (the
//! destination, the checkpoint store, the catalog and its partition mode,
//! `unknown_fields`, the retrieval mode, the KMS key), so the policy is a
//! pure function of the loaded [`Settings`] instead of a hand-written block
//! that drifts from the code (the README's lacked `s3:ListBucket`). Each
//! action below names the calls that need it; `tests/it/iam_policy.rs` runs the
//! worker through proxies that record every call it makes and checks that
//! the calls and the policy agree.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use shardlake::catalog::{PartitionMode, TableName};
use shardlake::schema::UnknownFieldPolicy;
use shardlake::store::Location;
use shardlake::store::folder_prefix;

use crate::config::{RetrievalMode, Settings};

/// Where the policy's ARNs point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `us-east-1`, ...; also decides the ARN partition (`aws-cn`, `aws-us-gov`).
    pub region: String,
    /// The 12-digit account id (or a placeholder the user replaces).
    pub account: String,
}

impl Scope {
    fn partition(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }

    /// `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
    fn arn(&self, service: &str, resource: &str) -> String {
        format!("arn:{}:{service}:{}:{}:{resource}", self.partition(), self.region, self.account)
    }

    /// S3 ARNs name neither region nor account.
    fn s3(&self, resource: &str) -> String {
        format!("arn:{}:s3:::{resource}", self.partition())
    }
}

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// What the statement is for (`ReadStream`, `WriteLake`, ...).
    pub sid: &'static str,
    /// `service:Action` names.
    pub actions: Vec<&'static str>,
    /// ARNs.
    pub resources: Vec<String>,
    /// An IAM condition block, when the resource alone is too wide.
    pub condition: Option<Value>,
}

impl Statement {
    fn allow(sid: &'static str, actions: &[&'static str], resources: Vec<String>) -> Self {
        Statement { sid, actions: actions.to_vec(), resources, condition: None }
    }

    fn when(mut self, condition: Value) -> Self {
        self.condition = Some(condition);
        self
    }
}

/// An IAM policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The policy language version, `2012-10-17`.
    version: &'static str,
    /// Its statements, one per resource and purpose.
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Every action the policy allows.
    #[cfg(test)]
    pub fn actions(&self) -> BTreeSet<&'static str> {
        self.statements.iter().flat_map(|s| s.actions.iter().copied()).collect()
    }

    /// The document as IAM takes it, one line per statement field so that
    /// it reads (and diffs) by statement.
    pub fn to_json(&self) -> String {
        let text = |v: &str| Value::from(v).to_string();
        let list =
            |items: &mut dyn Iterator<Item = &str>| format!("[{}]", items.map(text).collect::<Vec<_>>().join(", "));
        let mut out = format!("{{\n  \"Version\": {},\n  \"Statement\": [\n", text(self.version));
        for (i, s) in self.statements.iter().enumerate() {
            out += &format!("    {{\n      \"Sid\": {},\n      \"Effect\": \"Allow\",\n", text(s.sid));
            out += &format!("      \"Action\": {},\n", list(&mut s.actions.iter().copied()));
            out += &format!("      \"Resource\": {}", list(&mut s.resources.iter().map(String::as_str)));
            if let Some(c) = &s.condition {
                out += &format!(",\n      \"Condition\": {c}");
            }
            out += if i + 1 < self.statements.len() { "\n    },\n" } else { "\n    }\n" };
        }
        out + "  ]\n}"
    }
}

/// The policy `run` needs with `settings`, and nothing more.
pub fn policy(settings: &Settings, scope: &Scope) -> Policy {
    let mut statements = stream(settings, scope);
    statements.extend(lake(settings, scope));
    statements.extend(checkpoints(settings, scope));
    statements.extend(catalog(settings, scope));
    statements.extend(iceberg(settings, scope));
    Policy { version: "2012-10-17", statements }
}

/// `convert --input s3://bucket/key`: GetObject on that object (or, for a
/// key ending in `/`, on the objects under it). `convert` reads its input
/// with GetObject alone; a missing key is then reported as AccessDenied
/// rather than NoSuchKey, which ListBucket would tell apart.
pub fn convert_input(url: &str, scope: &Scope) -> anyhow::Result<Statement> {
    match Location::parse(url) {
        Ok(Location::S3 { bucket, prefix }) if !prefix.is_empty() => {
            let object =
                if prefix.ends_with('/') { format!("{bucket}/{prefix}*") } else { format!("{bucket}/{prefix}") };
            Ok(Statement::allow("ReadConvertInput", &["s3:GetObject"], vec![scope.s3(&object)]))
        }
        _ => anyhow::bail!("--convert-input: `{url}` is not s3://bucket/key (local input needs no IAM permission)"),
    }
}

/// Kinesis: the stream, and the fan-out consumer when there is one.
fn stream(settings: &Settings, scope: &Scope) -> Vec<Statement> {
    let c = &settings.config;
    let stream = scope.arn("kinesis", &format!("stream/{}", c.stream));
    let mut actions = vec![
        // Preflight, the retention check, and fan-out's stream ARN.
        "kinesis:DescribeStreamSummary",
        // Shard discovery, at start and every `polling.shard_refresh`.
        "kinesis:ListShards",
        // Polling; fan-out too, for replays and when a subscription falls back.
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    ];
    if c.retrieval.mode == RetrievalMode::FanOut {
        actions.push("kinesis:RegisterStreamConsumer");
    }
    let mut out = vec![Statement::allow("ReadStream", &actions, vec![stream.clone()])];
    if c.retrieval.mode == RetrievalMode::FanOut {
        // Both act on the consumer, whose ARN ends in its creation time.
        let consumer = format!("{stream}/consumer/{}:*", c.retrieval.consumer_name(&c.application));
        out.push(Statement::allow(
            "FanOutConsumer",
            &["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
            vec![consumer],
        ));
    }
    out
}

/// S3 and KMS: the lake under its prefix (a local destination needs none).
fn lake(settings: &Settings, scope: &Scope) -> Vec<Statement> {
    let c = &settings.config;
    let Ok(Location::S3 { bucket, prefix }) = Location::parse(&c.destination) else { return Vec::new() };
    let prefix = folder_prefix(&prefix);
    let mut out = vec![
        // PutObject covers CreateMultipartUpload, UploadPart and
        // CompleteMultipartUpload; a failed multipart upload is aborted.
        Statement::allow(
            "WriteLake",
            &["s3:PutObject", "s3:AbortMultipartUpload"],
            vec![scope.s3(&format!("{bucket}/{prefix}*"))],
        ),
        // Only the start-up probe deletes, and only its own object.
        Statement::allow(
            "DeletePreflightProbe",
            &["s3:DeleteObject"],
            vec![scope.s3(&format!("{bucket}/{prefix}{}*", crate::cli::preflight::PROBE_FOLDER))],
        ),
    ];
    if settings.catalog.is_some() {
        // The probe lists the prefix, and a table created over a lake that
        // holds data gets the lake's partitions from a listing.
        let list = Statement::allow("ListLake", &["s3:ListBucket"], vec![scope.s3(&bucket)]);
        out.push(match prefix.is_empty() {
            true => list,
            false => list.when(json!({"StringLike": {"s3:prefix": [format!("{prefix}*")]}})),
        });
    }
    if let Some(key) = &c.sse_kms_key_id {
        // S3 asks KMS for a data key on each put, and multipart uploads
        // decrypt it again for each part.
        let (resource, condition) = kms_key(key, scope);
        let statement = Statement::allow("EncryptLake", &["kms:GenerateDataKey", "kms:Decrypt"], vec![resource]);
        out.push(match condition {
            Some(condition) => statement.when(condition),
            None => statement,
        });
    }
    out
}

/// The key's ARN; an alias is matched by condition, as IAM does not
/// authorise a key's use through an alias ARN.
fn kms_key(key: &str, scope: &Scope) -> (String, Option<Value>) {
    let by_alias = |alias: String| Some(json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias}}));
    if let Some((head, name)) = key.split_once(":alias/") {
        return (format!("{head}:key/*"), by_alias(format!("alias/{name}")));
    }
    if key.starts_with("arn:") {
        return (key.to_string(), None);
    }
    if key.starts_with("alias/") {
        return (scope.arn("kms", "key/*"), by_alias(key.to_string()));
    }
    (scope.arn("kms", &format!("key/{key}")), None)
}

/// DynamoDB: the fleet's lease and checkpoint table.
fn checkpoints(settings: &Settings, scope: &Scope) -> Option<Statement> {
    let c = &settings.config;
    let table = c.checkpoint_store.strip_prefix("dynamodb://")?;
    let mut actions = vec![
        // Preflight, and waiting for a created table to be ACTIVE.
        "dynamodb:DescribeTable",
        // Checkpoints and stored schema versions.
        "dynamodb:GetItem",
        // A shard's first lease, and each new schema version.
        "dynamodb:PutItem",
        // Intents, commits, lease renewals, takes and releases.
        "dynamodb:UpdateItem",
        // Every lease, to balance the fleet.
        "dynamodb:Scan",
    ];
    if c.fleet.create_table {
        actions.push("dynamodb:CreateTable");
    }
    Some(Statement::allow("Checkpoints", &actions, vec![scope.arn("dynamodb", &format!("table/{table}"))]))
}

/// Glue: the catalog table and the schema table.
fn catalog(settings: &Settings, scope: &Scope) -> Vec<Statement> {
    let c = &settings.config;
    let tables: Vec<&TableName> = settings.catalog.iter().chain(&settings.schema_table).collect();
    if tables.is_empty() {
        return Vec::new();
    }
    let resources = |tables: &[&TableName]| {
        let mut out = vec![scope.arn("glue", "catalog")];
        for t in tables {
            out.push(scope.arn("glue", &format!("database/{}", t.database)));
        }
        for t in tables {
            out.push(scope.arn("glue", &format!("table/{}/{}", t.database, t.table)));
        }
        let mut seen = BTreeSet::new();
        out.retain(|r| seen.insert(r.clone()));
        out
    };
    // GetDatabase: the preflight; GetTable: checking the table (at start,
    // every `catalog_check_interval`, before adding columns) and reading a
    // schema table.
    let mut out = vec![Statement::allow("ReadCatalog", &["glue:GetDatabase", "glue:GetTable"], resources(&tables))];
    let Some(table) = &settings.catalog else { return out };
    let mut actions = Vec::new();
    if c.catalog_partitions == PartitionMode::Register {
        actions.push("glue:BatchCreatePartition");
    }
    if c.unknown_fields == UnknownFieldPolicy::Evolve {
        actions.push("glue:UpdateTable");
    }
    if c.catalog_create {
        actions.extend(["glue:CreateDatabase", "glue:CreateTable"]);
    }
    if !actions.is_empty() {
        out.push(Statement::allow("WriteCatalog", &actions, resources(&[table])));
    }
    out
}

/// An Iceberg table: reading its metadata (the table's metadata file,
/// manifest lists and manifests under `metadata/`, which commits write
/// beside the data files) and, in the Glue Data Catalog, swapping its
/// `metadata_location`.
fn iceberg(settings: &Settings, scope: &Scope) -> Vec<Statement> {
    let c = &settings.config;
    let Some(url) = &settings.iceberg else { return Vec::new() };
    let mut out = Vec::new();
    if let Ok(Location::S3 { bucket, prefix }) = Location::parse(&c.destination) {
        let prefix = folder_prefix(&prefix);
        // GetObject covers HeadObject and ranged reads.
        let metadata = scope.s3(&format!("{bucket}/{prefix}metadata/*"));
        out.push(Statement::allow("ReadTableMetadata", &["s3:GetObject"], vec![metadata]));
    }
    let Ok(crate::lake::iceberg::CatalogUrl::Glue { database, table }) =
        crate::lake::iceberg::CatalogUrl::parse(url, std::path::Path::new("/"))
    else {
        return out;
    };
    let resources = vec![
        scope.arn("glue", "catalog"),
        scope.arn("glue", &format!("database/{database}")),
        scope.arn("glue", &format!("table/{database}/{table}")),
    ];
    // GetTable: each load of the table (before every commit and replay
    // check); UpdateTable: each commit (fenced on the table's VersionId).
    let mut actions = vec!["glue:GetDatabase", "glue:GetTable", "glue:UpdateTable"];
    if c.catalog_create {
        actions.extend(["glue:CreateDatabase", "glue:CreateTable"]);
    }
    out.push(Statement::allow("IcebergTable", &actions, resources));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsumerConfig;

    fn scope() -> Scope {
        Scope { region: "eu-west-1".into(), account: "123456789012".into() }
    }

    fn example(name: &str) -> Policy {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        let settings = crate::cli::run::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        policy(&settings, &scope())
    }

    fn settings(text: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.toml"), "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
        let text = format!("stream = \"events\"\nschema = \"schema.toml\"\n{text}");
        ConsumerConfig::parse(&text, "consumer.toml").unwrap().resolve(dir.path()).unwrap()
    }

    fn set(actions: &[&'static str]) -> BTreeSet<&'static str> {
        actions.iter().copied().collect()
    }

    const STREAM: [&str; 4] =
        ["kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"];
    const LAKE: [&str; 3] = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"];
    const TABLE: [&str; 5] =
        ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan"];

    fn with(parts: &[&[&'static str]]) -> BTreeSet<&'static str> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn each_example_gets_the_actions_of_what_it_sets() {
        let cases: [(&str, BTreeSet<&str>); 8] = [
            ("local-lake.toml", with(&[&STREAM])),
            ("s3-file-store.toml", with(&[&STREAM, &LAKE])),
            ("fleet-dynamodb.toml", with(&[&STREAM, &LAKE, &TABLE, &["dynamodb:CreateTable"]])),
            (
                "fan-out.toml",
                with(&[
                    &STREAM,
                    &LAKE,
                    &TABLE,
                    &["dynamodb:CreateTable"],
                    &["kinesis:RegisterStreamConsumer", "kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
                ]),
            ),
            (
                "glue-register.toml",
                with(&[
                    &STREAM,
                    &LAKE,
                    &TABLE,
                    &["dynamodb:CreateTable", "s3:ListBucket", "glue:GetDatabase", "glue:GetTable"],
                    &["glue:BatchCreatePartition", "glue:CreateDatabase", "glue:CreateTable"],
                ]),
            ),
            (
                "glue-projection.toml",
                with(&[
                    &STREAM,
                    &LAKE,
                    &TABLE,
                    &["dynamodb:CreateTable", "s3:ListBucket", "glue:GetDatabase", "glue:GetTable"],
                    &["glue:CreateDatabase", "glue:CreateTable"],
                ]),
            ),
            (
                "evolve.toml",
                with(&[
                    &STREAM,
                    &LAKE,
                    &TABLE,
                    &["dynamodb:CreateTable", "s3:ListBucket", "glue:GetDatabase", "glue:GetTable"],
                    &["glue:BatchCreatePartition", "glue:UpdateTable", "glue:CreateDatabase", "glue:CreateTable"],
                ]),
            ),
            (
                "iceberg-glue.toml",
                with(&[
                    &STREAM,
                    &LAKE,
                    &TABLE,
                    &["dynamodb:CreateTable", "s3:GetObject", "glue:GetDatabase", "glue:GetTable", "glue:UpdateTable"],
                    &["glue:CreateDatabase", "glue:CreateTable"],
                ]),
            ),
        ];
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut shipped: Vec<String> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml") && n != "producer.toml" && n != "schema.toml")
            .collect();
        shipped.sort();
        let mut covered: Vec<String> = cases.iter().map(|(n, _)| n.to_string()).collect();
        covered.sort();
        assert_eq!(shipped, covered, "every consumer example has its expected actions here");
        for (name, want) in cases {
            assert_eq!(example(name).actions(), want, "{name}");
        }
    }

    #[test]
    fn resources_are_the_stream_the_prefix_the_table_and_the_glue_names() {
        let p = example("glue-register.toml");
        let resources = |sid: &str| p.statements.iter().find(|s| s.sid == sid).unwrap().resources.clone();
        assert_eq!(resources("ReadStream"), ["arn:aws:kinesis:eu-west-1:123456789012:stream/events"]);
        assert_eq!(resources("WriteLake"), ["arn:aws:s3:::my-lake/events/*"]);
        assert_eq!(resources("DeletePreflightProbe"), ["arn:aws:s3:::my-lake/events/_shardlake_preflight/*"]);
        assert_eq!(resources("ListLake"), ["arn:aws:s3:::my-lake"]);
        let list = p.statements.iter().find(|s| s.sid == "ListLake").unwrap();
        assert_eq!(list.condition, Some(json!({"StringLike": {"s3:prefix": ["events/*"]}})));
        assert_eq!(resources("Checkpoints"), ["arn:aws:dynamodb:eu-west-1:123456789012:table/shardlake-leases"]);
        let glue = [
            "arn:aws:glue:eu-west-1:123456789012:catalog",
            "arn:aws:glue:eu-west-1:123456789012:database/lake",
            "arn:aws:glue:eu-west-1:123456789012:table/lake/events",
        ];
        assert_eq!(resources("ReadCatalog"), glue);
        assert_eq!(resources("WriteCatalog"), glue);
        let iceberg = example("iceberg-glue.toml");
        let resources = |sid: &str| iceberg.statements.iter().find(|s| s.sid == sid).unwrap().resources.clone();
        assert_eq!(resources("ReadTableMetadata"), ["arn:aws:s3:::my-lake/events/metadata/*"]);
        assert_eq!(
            resources("IcebergTable"),
            [
                "arn:aws:glue:eu-west-1:123456789012:catalog",
                "arn:aws:glue:eu-west-1:123456789012:database/analytics",
                "arn:aws:glue:eu-west-1:123456789012:table/analytics/events",
            ]
        );
        let fan_out = example("fan-out.toml");
        let consumer = fan_out.statements.iter().find(|s| s.sid == "FanOutConsumer").unwrap();
        assert_eq!(
            consumer.resources,
            ["arn:aws:kinesis:eu-west-1:123456789012:stream/events/consumer/events-to-lake:*"]
        );
    }

    #[test]
    fn a_kms_key_adds_generate_data_key_and_decrypt_on_that_key() {
        let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let p = policy(&settings(&format!("destination = \"s3://b/lake/\"\nsse_kms_key_id = \"{key}\"\n")), &scope());
        let kms = p.statements.iter().find(|s| s.sid == "EncryptLake").unwrap();
        assert_eq!(kms.actions, ["kms:GenerateDataKey", "kms:Decrypt"]);
        assert_eq!(kms.resources, [key]);
        assert_eq!(kms.condition, None);
        let p = policy(&settings("destination = \"s3://b/lake/\"\nsse_kms_key_id = \"1234abcd\"\n"), &scope());
        assert_eq!(p.statements.last().unwrap().resources, ["arn:aws:kms:eu-west-1:123456789012:key/1234abcd"]);
        let p = policy(&settings("destination = \"s3://b/lake/\"\nsse_kms_key_id = \"alias/lake\"\n"), &scope());
        let kms = p.statements.last().unwrap();
        assert_eq!(kms.resources, ["arn:aws:kms:eu-west-1:123456789012:key/*"]);
        assert_eq!(kms.condition, Some(json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/lake"}})));
        let p = policy(
            &settings("destination = \"s3://b/lake/\"\nsse_kms_key_id = \"arn:aws:kms:eu-west-1:1:alias/lake\"\n"),
            &scope(),
        );
        assert_eq!(p.statements.last().unwrap().resources, ["arn:aws:kms:eu-west-1:1:key/*"]);
        assert_eq!(p.statements.last().unwrap().condition, kms.condition);
        // A local lake is not encrypted by S3: no KMS, no S3.
        let p = policy(&settings("destination = \"./lake\"\nsse_kms_key_id = \"alias/lake\"\n"), &scope());
        assert_eq!(p.actions(), set(&STREAM));
    }

    #[test]
    fn a_schema_table_is_read_and_never_written() {
        let text = "destination = \"s3://b/\"\n";
        let mut s = settings(text);
        s.schema_table = Some(TableName::parse("glue://owners/events").unwrap());
        let p = policy(&s, &scope());
        assert_eq!(p.actions(), with(&[&STREAM, &LAKE, &["glue:GetDatabase", "glue:GetTable"]]));
        let read = p.statements.iter().find(|s| s.sid == "ReadCatalog").unwrap();
        assert!(read.resources.iter().any(|r| r.ends_with(":table/owners/events")), "{:?}", read.resources);
        // No prefix: the whole bucket, and no listing without a catalog.
        let write = p.statements.iter().find(|s| s.sid == "WriteLake").unwrap();
        assert_eq!(write.resources, ["arn:aws:s3:::b/*"]);
    }

    #[test]
    fn the_document_is_iam_json_and_china_regions_get_their_partition() {
        let s = settings("destination = \"s3://b/lake\"\n");
        let json: Value = serde_json::from_str(&policy(&s, &scope()).to_json()).unwrap();
        assert_eq!(json["Version"], "2012-10-17");
        assert_eq!(json["Statement"][0]["Effect"], "Allow");
        assert_eq!(json["Statement"][0]["Sid"], "ReadStream");
        assert!(json["Statement"][0].get("Condition").is_none());
        let p = example("evolve.toml");
        let json: Value = serde_json::from_str(&p.to_json()).unwrap();
        let statements = json["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), p.statements.len());
        for (s, want) in statements.iter().zip(&p.statements) {
            assert_eq!(s["Sid"], want.sid);
            assert_eq!(s["Action"], json!(want.actions));
            assert_eq!(s["Resource"], json!(want.resources));
            assert_eq!(s.get("Condition"), want.condition.as_ref());
        }
        let cn = Scope { region: "cn-north-1".into(), account: "ACCOUNT_ID".into() };
        let p = policy(&s, &cn);
        assert_eq!(p.statements[0].resources, ["arn:aws-cn:kinesis:cn-north-1:ACCOUNT_ID:stream/events"]);
        assert_eq!(p.statements[1].resources, ["arn:aws-cn:s3:::b/lake/*"]);
    }

    #[test]
    fn convert_input_is_get_object_on_the_object() {
        let read = convert_input("s3://in/2026/events.jsonl.gz", &scope()).unwrap();
        assert_eq!(
            (read.actions.as_slice(), read.resources[0].as_str()),
            (["s3:GetObject"].as_slice(), "arn:aws:s3:::in/2026/events.jsonl.gz")
        );
        assert!(convert_input("./events.jsonl", &scope()).unwrap_err().to_string().contains("s3://bucket/key"));
        assert!(convert_input("s3://in", &scope()).is_err());
    }
}

//! The fleet's checkpoint store: one DynamoDB item per (application, stream,
//! shard) holding the lease (owner, counter, expiry), the checkpoint, the
//! pending intent, `ended` and the parent shards; the inferred schema is one
//! more item.
//!
//! Fencing: every write names the lease it relies on. Checkpoint writes
//! (intent, commit), renewals and releases are conditional on
//! `owner = :me AND lease_counter = :n`, where `n` is the counter this worker
//! got when it took the lease; takes and steals are conditional on the owner
//! and counter the taker observed. A take bumps the counter, so a worker that
//! paused past its expiry (GC, partition, SIGSTOP) and wakes up fails every
//! write with [`Error::LeaseLost`] instead of committing a stale batch. Only
//! single-item conditional writes are used: no `TransactWriteItems`.
//!
//! Table schema (see docs/fleet.md for the IAM policy): partition key
//! `lease_key` (S) = `{application}/{stream}/{shard}`, no sort key, on-demand
//! capacity. Attributes: `shard` (S), `owner` (S, absent when free),
//! `lease_counter` (N), `expiry` (N, epoch ms), `checkpoint` (S), `intent`
//! (M: `first` S, `last` S, `records` N), `ended` (BOOL), `parents` (L of S);
//! the schema item `{application}/{stream}/#schema` holds `schema` (S).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::{Commit, Intent, SequenceNumber, ShardState};
use shardlake::error::{Error, Result, error_chain};

/// Key suffix of the inferred-schema item; shard ids never start with `#`.
const SCHEMA_SUFFIX: &str = "#schema";

/// Key suffix of schema version `version`: `#schema`, then `#schema-v2`, ...
fn schema_suffix(version: u32) -> String {
    if version <= 1 { SCHEMA_SUFFIX.to_string() } else { format!("{SCHEMA_SUFFIX}-v{version}") }
}
/// Bound on Scan pages read by [`DynamoCheckpoints::leases`] (1 MB each).
const MAX_SCAN_PAGES: usize = 1000;
/// How long `create_table` waits for the table to become ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the DynamoDB store, from the consumer's `[fleet]` section.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// This worker's id, written as the lease owner.
    pub worker_id: String,
    /// How long a lease lasts after its last renewal.
    pub lease_duration: Duration,
    /// Create the table when it is missing.
    pub create_table: bool,
    /// Time limits of the DynamoDB calls.
    pub timeouts: shardlake::aws::Timeouts,
}

/// One shard's lease as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id.
    pub shard: String,
    /// The worker holding it; `None` when released or never taken.
    pub owner: Option<String>,
    /// Bumped by every change of owner (take, steal, release).
    pub counter: u64,
    /// Epoch milliseconds after which the lease is free to take.
    pub expiry_ms: u64,
    /// The shard is closed and fully committed.
    pub ended: bool,
    /// The checkpoint, for tests and tools.
    pub checkpoint: Option<SequenceNumber>,
}

impl Lease {
    /// Whether another worker may take this lease at `now_ms` without
    /// stealing: nobody holds it, or its holder stopped renewing.
    pub fn is_free(&self, now_ms: u64) -> bool {
        self.owner.is_none() || self.expiry_ms <= now_ms
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A DynamoDB client for the fleet's lease and checkpoint table. SDK retries
/// stay on (standard mode): every write is conditional, so a retried write
/// whose first attempt landed fails its condition instead of applying twice.
/// Each attempt is bounded by `timeouts.call`.
pub fn dynamodb_client(config: &aws_config::SdkConfig, timeouts: &shardlake::aws::Timeouts) -> Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(config).timeout_config(timeouts.call_config()).build();
    Client::from_conf(conf)
}

/// The status of `table` (`ACTIVE`, `CREATING`, ...), `None` when it does
/// not exist (DescribeTable: the start-up check of the fleet's table).
pub async fn table_status(
    client: &Client,
    table: &str,
) -> std::result::Result<Option<String>, shardlake::aws::CallError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(Some(out.table().and_then(|t| t.table_status()).map_or("unknown", |s| s.as_str()).to_string())),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => Ok(None),
        Err(e) => Err(shardlake::aws::call_error("DynamoDB", "DescribeTable", &e)),
    }
}

/// The DynamoDB store, with the leases this worker holds.
#[derive(Debug, Clone)]
pub struct DynamoCheckpoints {
    client: Client,
    table: String,
    /// `{application}/{stream}/`: every key of this store starts with it.
    prefix: String,
    options: FleetOptions,
    /// Shard → the lease counter this worker holds it at. Fencing reads the
    /// counter from here; it is never held across an `.await`.
    held: Arc<Mutex<HashMap<String, u64>>>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> u64 {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn get_bool(item: &HashMap<String, AttributeValue>, k: &str) -> bool {
    item.get(k).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false)
}

fn intent_value(i: &Intent) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("first".to_string(), s(&i.first)),
        ("last".to_string(), s(&i.last)),
        ("records".to_string(), n(i.records)),
        ("schema_version".to_string(), n(u64::from(i.schema_version))),
    ]))
}

fn state_from_item(item: &HashMap<String, AttributeValue>) -> ShardState {
    let intent = item.get("intent").and_then(|v| v.as_m().ok()).map(|m| Intent {
        first: get_s(m, "first").unwrap_or_default().into(),
        last: get_s(m, "last").unwrap_or_default().into(),
        records: get_n(m, "records"),
        // Intents written before schema versions existed were built with the first.
        schema_version: u32::try_from(get_n(m, "schema_version")).unwrap_or(1).max(1),
    });
    let catalog_pending = item.get("catalog_pending").and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    ShardState {
        checkpoint: get_s(item, "checkpoint").map(SequenceNumber::from),
        intent,
        ended: get_bool(item, "ended"),
        catalog_pending,
    }
}

/// The condition every write of a lease holder carries.
const HELD: &str = "#o = :me AND #c = :n";

impl DynamoCheckpoints {
    /// Opens the store on `table` (a name [`super::CheckpointUrl`] checked),
    /// creating the table first when asked.
    pub async fn connect(
        client: Client,
        table: &str,
        application: &str,
        stream: &str,
        options: FleetOptions,
    ) -> Result<Self> {
        let store = DynamoCheckpoints {
            client,
            table: table.to_string(),
            prefix: format!("{application}/{stream}/"),
            options,
            held: Arc::new(Mutex::new(HashMap::new())),
        };
        if store.options.create_table {
            store.create_table().await?;
        }
        Ok(store)
    }

    /// This worker's id (the owner it writes).
    pub fn worker_id(&self) -> &str {
        &self.options.worker_id
    }

    /// The lease duration.
    pub fn lease_duration(&self) -> Duration {
        self.options.lease_duration
    }

    fn err(&self, op: &'static str, e: &dyn std::error::Error) -> Error {
        Error::Store { op, url: self.url(), message: error_chain(e) }
    }

    fn key(&self, shard: &str) -> AttributeValue {
        s(format!("{}{shard}", self.prefix))
    }

    /// `dynamodb://table/app/stream/` for logs.
    pub fn url(&self) -> String {
        format!("dynamodb://{}/{}", self.table, self.prefix)
    }

    /// Creates the table (on-demand, key `lease_key`) unless it exists, and
    /// waits until it is ACTIVE.
    async fn create_table(&self) -> Result<()> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("lease_key")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete attribute definition"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("lease_key")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("complete key schema"),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(e) = created
            && !e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception())
        {
            return Err(self.err("create table", &e));
        }
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        loop {
            let d = self.client.describe_table().table_name(&self.table).send().await;
            match d {
                Ok(d) if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(self.err("describe table", &e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Store {
                    op: "create table",
                    url: self.url(),
                    message: format!("not ACTIVE after {TABLE_ACTIVE_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The counter this worker holds `shard` at, or `LeaseLost`.
    fn held_counter(&self, shard: &str) -> Result<u64> {
        self.held
            .lock()
            .expect("lease lock")
            .get(shard)
            .copied()
            .ok_or_else(|| Error::LeaseLost { shard: shard.to_string() })
    }

    /// Forgets a lease this worker found it no longer holds (taken by
    /// another, or expired because its renewals kept failing).
    pub fn forget(&self, shard: &str, counter: u64) {
        let mut held = self.held.lock().expect("lease lock");
        if held.get(shard) == Some(&counter) {
            held.remove(shard);
        }
    }

    /// Shards this worker holds, with the counter it holds each at.
    pub fn held(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            self.held.lock().expect("lease lock").iter().map(|(s, c)| (s.clone(), *c)).collect();
        v.sort();
        v
    }

    /// The counter this worker holds `shard` at, if it holds it.
    pub fn lease_counter(&self, shard: &str) -> Option<u64> {
        self.held.lock().expect("lease lock").get(shard).copied()
    }

    /// Whether this worker holds `shard`.
    pub fn holds(&self, shard: &str) -> bool {
        self.held.lock().expect("lease lock").contains_key(shard)
    }

    /// A conditional update by the holder of the lease at `counter`:
    /// `Err(LeaseLost)` when the condition fails (the lease moved), and the
    /// lease is forgotten unless this worker has since taken it again.
    async fn held_update(
        &self,
        op: &'static str,
        shard: &str,
        counter: u64,
        update: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<()> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("lease_key", self.key(shard))
            .update_expression(update)
            .condition_expression(HELD)
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_values(":me", s(&self.options.worker_id))
            .expression_attribute_values(":n", n(counter));
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                self.forget(shard, counter);
                Err(Error::LeaseLost { shard: shard.to_string() })
            }
            Err(e) => Err(self.err(op, &e)),
        }
    }

    /// The state of `shard` (strongly consistent read).
    pub async fn load(&self, shard: &str) -> Result<ShardState> {
        let item = self.get_item(shard).await.map_err(|e| self.err("load checkpoint", &e))?;
        Ok(item.map(|i| state_from_item(&i)).unwrap_or_default())
    }

    async fn get_item(
        &self,
        shard: &str,
    ) -> std::result::Result<
        Option<HashMap<String, AttributeValue>>,
        aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::get_item::GetItemError>,
    > {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("lease_key", self.key(shard))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item)
    }

    /// Records the intent, fenced on the lease at `counter`.
    pub async fn record_intent(&self, shard: &str, counter: u64, intent: &Intent) -> Result<()> {
        let value = vec![(":i", intent_value(intent))];
        self.held_update("record intent", shard, counter, "SET #i = :i", &[("#i", "intent")], value).await
    }

    /// Checkpoint = `last`, intent cleared, `ended` set, in one write fenced
    /// on the lease at `counter`.
    pub async fn commit(&self, shard: &str, counter: u64, commit: &Commit<'_>) -> Result<()> {
        // DynamoDB rejects expression names and values that are not used.
        let mut values = Vec::new();
        let mut sets = Vec::new();
        let mut names = vec![("#i", "intent"), ("#cat", "catalog_pending")];
        if let Some(last) = commit.last {
            sets.push("#cp = :cp");
            names.push(("#cp", "checkpoint"));
            values.push((":cp", s(last)));
        }
        if commit.ended {
            sets.push("#e = :e");
            names.push(("#e", "ended"));
            values.push((":e", AttributeValue::Bool(true)));
        }
        // A string set cannot be empty: no partitions pending is no attribute.
        let mut removes = vec!["#i"];
        if commit.catalog_pending.is_empty() {
            removes.push("#cat");
        } else {
            sets.push("#cat = :cat");
            values.push((":cat", AttributeValue::Ss(commit.catalog_pending.to_vec())));
        }
        let removes = removes.join(", ");
        let update = if sets.is_empty() {
            format!("REMOVE {removes}")
        } else {
            format!("SET {} REMOVE {removes}", sets.join(", "))
        };
        self.held_update("commit", shard, counter, &update, &names, values).await
    }

    /// Replaces the partitions still to register in the catalog, fenced on
    /// the lease at `counter`.
    pub async fn set_catalog_pending(&self, shard: &str, counter: u64, pending: &[String]) -> Result<()> {
        let names = [("#cat", "catalog_pending")];
        if pending.is_empty() {
            // A string set cannot be empty: none pending is no attribute.
            return self.held_update("update pending partitions", shard, counter, "REMOVE #cat", &names, vec![]).await;
        }
        let value = vec![(":cat", AttributeValue::Ss(pending.to_vec()))];
        self.held_update("update pending partitions", shard, counter, "SET #cat = :cat", &names, value).await
    }

    /// Every lease of this application and stream (consistent scan).
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        let mut start = None;
        for _ in 0..MAX_SCAN_PAGES {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(lease_key, :p)")
                .expression_attribute_values(":p", s(&self.prefix))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.err("list leases", &e))?;
            for item in page.items() {
                let Some(shard) = get_s(item, "shard") else { continue };
                let state = state_from_item(item);
                out.push(Lease {
                    shard,
                    owner: get_s(item, "owner"),
                    counter: get_n(item, "lease_counter"),
                    expiry_ms: get_n(item, "expiry"),
                    ended: state.ended,
                    checkpoint: state.checkpoint,
                });
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    /// Takes `shard`: `observed` is its lease as last read (`None`: no item
    /// yet). The write is conditional on that owner and counter, so of two
    /// racing takers exactly one wins: `Ok(Some(counter))` with the counter
    /// now held, `Ok(None)` when another won.
    pub async fn take(
        &self,
        shard: &str,
        observed: Option<&Lease>,
        parents: &[crate::kinesis::ShardId],
    ) -> Result<Option<u64>> {
        let expiry = now_ms() + self.options.lease_duration.as_millis() as u64;
        let counter = observed.map_or(0, |l| l.counter) + 1;
        let result = match observed {
            None => {
                let mut item = HashMap::from([
                    ("lease_key".to_string(), self.key(shard)),
                    ("shard".to_string(), s(shard)),
                    ("owner".to_string(), s(&self.options.worker_id)),
                    ("lease_counter".to_string(), n(counter)),
                    ("expiry".to_string(), n(expiry)),
                ]);
                if !parents.is_empty() {
                    item.insert("parents".to_string(), AttributeValue::L(parents.iter().map(s).collect()));
                }
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(lease_key)")
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) {
                            None
                        } else {
                            Some(self.err("take lease", &e))
                        }
                    })
            }
            Some(lease) => {
                let mut req = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("lease_key", self.key(shard))
                    .update_expression("SET #o = :me, #c = :next, #x = :x")
                    .expression_attribute_names("#o", "owner")
                    .expression_attribute_names("#c", "lease_counter")
                    .expression_attribute_names("#x", "expiry")
                    .expression_attribute_values(":me", s(&self.options.worker_id))
                    .expression_attribute_values(":next", n(counter))
                    .expression_attribute_values(":x", n(expiry))
                    .expression_attribute_values(":n", n(lease.counter));
                req = match &lease.owner {
                    Some(owner) => req
                        .condition_expression("#o = :prev AND #c = :n")
                        .expression_attribute_values(":prev", s(owner)),
                    None => req.condition_expression("attribute_not_exists(#o) AND #c = :n"),
                };
                req.send().await.map(|_| ()).map_err(|e| {
                    if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) {
                        None
                    } else {
                        Some(self.err("take lease", &e))
                    }
                })
            }
        };
        match result {
            Ok(()) => {
                self.held.lock().expect("lease lock").insert(shard.to_string(), counter);
                Ok(Some(counter))
            }
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    /// Extends the lease held at `counter` by the lease duration.
    /// `LeaseLost` when it moved.
    pub async fn renew(&self, shard: &str, counter: u64) -> Result<()> {
        let expiry = now_ms() + self.options.lease_duration.as_millis() as u64;
        let value = vec![(":x", n(expiry))];
        self.held_update("renew lease", shard, counter, "SET #x = :x", &[("#x", "expiry")], value).await
    }

    /// Gives a held lease up (owner removed, counter bumped) so another
    /// worker takes it at once instead of waiting for it to expire.
    pub async fn release(&self, shard: &str) -> Result<()> {
        let counter = self.held_counter(shard)?;
        let result = self
            .held_update(
                "release lease",
                shard,
                counter,
                "SET #c = :next, #x = :zero REMOVE #o",
                &[("#x", "expiry")],
                vec![(":next", n(counter + 1)), (":zero", n(0))],
            )
            .await;
        self.held.lock().expect("lease lock").remove(shard);
        result
    }

    /// Schema version `version` (1: the inferred or Glue schema), if stored.
    pub async fn load_schema(&self, version: u32) -> Result<Option<String>> {
        let item = self.get_item(&schema_suffix(version)).await.map_err(|e| self.err("load schema", &e))?;
        Ok(item.and_then(|i| get_s(&i, "schema")))
    }

    /// Stores schema version `version` unless it is stored already (the
    /// first worker to write it wins; the others load its schema). `true`
    /// when this call stored it.
    pub async fn save_schema(&self, version: u32, toml: &str) -> Result<bool> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("lease_key", self.key(&schema_suffix(version)))
            .item("schema", s(toml))
            .condition_expression("attribute_not_exists(lease_key)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(self.err("save schema", &e)),
        }
    }
}

#[cfg(test)]
#[path = "dynamodb_tests.rs"]
mod tests;

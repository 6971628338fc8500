//! The checkpoint store: per shard, the last committed position, the pending
//! intent of a batch being uploaded, and whether the shard reached its end.
//! It carries the exactly-once protocol (docs/exactly-once.md): record the intent, upload
//! the batch's files under deterministic keys, then commit (checkpoint = last,
//! intent cleared) in one atomic write.
//!
//! `file://` is the single-worker store: one JSON document per shard, written
//! to a temp file, fsynced and renamed. The fleet's DynamoDB store adds lease
//! fields and makes every write conditional on the lease; the operations stay
//! the same.

use std::cmp::Ordering;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use shardlake::error::{Error, Result};
use shardlake::store::file::FileStore;

pub mod dynamodb;

pub use dynamodb::{DynamoCheckpoints, FleetOptions, Lease};

pub use crate::kinesis::SequenceNumber;

/// Kinesis sequence numbers are decimal strings without leading zeros: order
/// by length, then lexically ([`SequenceNumber`]'s order).
pub fn compare_sequences(a: &str, b: &str) -> Ordering {
    SequenceNumber::compare(a, b)
}

/// A batch being uploaded: the range of Kinesis records it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Sequence number of the batch's first Kinesis record.
    pub first: SequenceNumber,
    /// Sequence number of the batch's last Kinesis record (inclusive).
    pub last: SequenceNumber,
    /// Kinesis records in the range, to check a replay read them all.
    pub records: u64,
    /// The schema version the batch was built with; a replay rebuilds it
    /// with the same one, whatever the current version is.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub schema_version: u32,
}

fn first_version() -> u32 {
    1
}

fn is_first_version(v: &u32) -> bool {
    *v == 1
}

/// What the store holds for one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardState {
    /// The last Kinesis record whose data is committed in the lake; reading
    /// resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SequenceNumber>,
    /// A batch that was being uploaded; a restart replays exactly this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// The shard is closed and every record of it is committed.
    #[serde(default)]
    pub ended: bool,
    /// Partitions (paths under the destination) that committed batches wrote
    /// and the catalog was not yet known to have: whoever reads the shard
    /// next registers them, so a crash right after a commit loses no
    /// partition registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog_pending: Vec<String>,
}

/// What a commit writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Commit<'a> {
    /// The batch's last Kinesis record; `None` when the shard ended with no
    /// batch.
    pub last: Option<&'a str>,
    /// The shard is closed and this is its last batch.
    pub ended: bool,
    /// Partitions not yet known to be in the catalog (see
    /// [`ShardState::catalog_pending`]).
    pub catalog_pending: &'a [String],
}

/// A checkpoint store's URL, parsed once: a mistyped scheme or table name is
/// a config error naming the fix, before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointUrl {
    /// `file:///path` or a plain path: a folder, for one worker.
    File(PathBuf),
    /// `dynamodb://TABLE`: a DynamoDB table, for a fleet.
    DynamoDb(String),
}

impl CheckpointUrl {
    /// Parses `file:///path`, a plain path, or `dynamodb://TABLE`.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(fix) = shardlake::store::scheme_mistake(url, &["file", "dynamodb"]) {
            return Err(Error::Config(format!(
                "checkpoint store `{url}` looks like a URL with a mistyped scheme: {fix}"
            )));
        }
        if let Some(table) = url.strip_prefix("dynamodb://") {
            // DynamoDB's table name rule.
            let valid = (3..=255).contains(&table.len())
                && table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                return Err(Error::Config(format!(
                    "checkpoint store dynamodb://{table}: expected dynamodb://TABLE_NAME (3 to 255 of a-z A-Z 0-9 _ - .)"
                )));
            }
            return Ok(CheckpointUrl::DynamoDb(table.to_string()));
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(Error::Config(format!("checkpoint store `{url}`: expected file:///path or dynamodb://TABLE")));
        }
        Ok(CheckpointUrl::File(PathBuf::from(url.strip_prefix("file://").unwrap_or(url))))
    }

    /// Whether this is the fleet's store (leases live there).
    pub fn is_fleet(&self) -> bool {
        matches!(self, CheckpointUrl::DynamoDb(_))
    }
}

/// Where checkpoints live.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    /// One JSON file per shard under a local directory.
    File(FileCheckpoints),
    /// One DynamoDB item per shard, with its lease: the fleet's store.
    DynamoDb(DynamoCheckpoints),
}

impl CheckpointStore {
    /// Opens the store at `url`: `file:///path` (or a plain path) for a
    /// single worker, `dynamodb://TABLE` for a fleet, whose worker id and
    /// lease settings come from `fleet`.
    pub async fn connect(url: &str, application: &str, stream: &str, fleet: &FleetOptions) -> Result<Self> {
        let table = match CheckpointUrl::parse(url)? {
            CheckpointUrl::File(root) => return Self::file_store(root, application, stream),
            CheckpointUrl::DynamoDb(table) => table,
        };
        Self::check_names(application, stream)?;
        let sdk = shardlake::aws::sdk_config().await;
        let client = dynamodb::dynamodb_client(&sdk, &fleet.timeouts);
        let store = DynamoCheckpoints::connect(client, &table, application, stream, fleet.clone()).await?;
        Ok(CheckpointStore::DynamoDb(store))
    }

    /// Opens the `file://` store at `url` (`file:///path` or a plain path)
    /// for one application reading one stream; `dynamodb://` needs
    /// [`CheckpointStore::connect`].
    pub fn open(url: &str, application: &str, stream: &str) -> Result<Self> {
        if let Some(table) = url.strip_prefix("dynamodb://") {
            return Err(Error::Config(format!(
                "checkpoint store dynamodb://{table}: the fleet store is opened with CheckpointStore::connect"
            )));
        }
        match CheckpointUrl::parse(url)? {
            CheckpointUrl::File(root) => Self::file_store(root, application, stream),
            CheckpointUrl::DynamoDb(_) => unreachable!("dynamodb:// refused above"),
        }
    }

    /// The file store under `root` for one application reading one stream.
    fn file_store(root: PathBuf, application: &str, stream: &str) -> Result<Self> {
        Self::check_names(application, stream)?;
        Ok(CheckpointStore::File(FileCheckpoints { store: FileStore::new(root.join(application).join(stream)) }))
    }

    fn check_names(application: &str, stream: &str) -> Result<()> {
        for (what, name) in [("application", application), ("stream", stream)] {
            shardlake::store::check_key(name)
                .ok()
                .filter(|_| !name.contains('/'))
                .ok_or_else(|| Error::Config(format!("{what} name `{name}` cannot name a checkpoint folder")))?;
        }
        Ok(())
    }

    /// The fleet store, when this is one (leases live there).
    pub fn fleet(&self) -> Option<&DynamoCheckpoints> {
        match self {
            CheckpointStore::DynamoDb(d) => Some(d),
            CheckpointStore::File(_) => None,
        }
    }

    /// The state of `shard` (the default when it was never seen).
    pub async fn load(&self, shard: &str) -> Result<ShardState> {
        match self {
            CheckpointStore::File(f) => f.load(shard).await,
            CheckpointStore::DynamoDb(d) => d.load(shard).await,
        }
    }

    /// Every shard's pending intent: a batch being uploaded or committed,
    /// which the shard's next reader replays.
    pub async fn pending_intents(&self) -> Result<Vec<(String, Intent)>> {
        let shards: Vec<String> = match self {
            CheckpointStore::File(f) => {
                let keys = f.store.list("").await?;
                keys.iter()
                    .filter_map(|k| k.strip_suffix(".json"))
                    .filter(|s| !s.contains('/'))
                    .map(str::to_string)
                    .collect()
            }
            CheckpointStore::DynamoDb(d) => d.leases().await?.into_iter().map(|l| l.shard).collect(),
        };
        let mut out = Vec::new();
        for shard in shards {
            if let Some(intent) = self.load(&shard).await?.intent {
                out.push((shard, intent));
            }
        }
        Ok(out)
    }

    /// Step 1 of a flush: records the range about to be uploaded. `lease` is
    /// the counter the writer took the shard's lease at (fleet; `None` for
    /// the file store): the write fails with [`Error::LeaseLost`] once that
    /// lease moved, even if this worker has taken the shard again since.
    pub async fn record_intent(&self, shard: &str, lease: Option<u64>, intent: &Intent) -> Result<()> {
        match self {
            CheckpointStore::File(f) => {
                let mut state = f.load(shard).await?;
                state.intent = Some(intent.clone());
                f.save(shard, &state).await
            }
            CheckpointStore::DynamoDb(d) => d.record_intent(shard, Self::fence(shard, lease)?, intent).await,
        }
    }

    /// Step 3 of a flush: checkpoint = `last`, intent cleared, `ended` set
    /// when the shard is finished and the partitions still to register in
    /// the catalog replaced by `catalog_pending`, in one atomic write. In a
    /// fleet it fails with [`Error::LeaseLost`] once the lease at `lease`
    /// moved: nothing is committed.
    pub async fn commit(&self, shard: &str, lease: Option<u64>, commit: &Commit<'_>) -> Result<()> {
        match self {
            CheckpointStore::File(f) => {
                let mut state = f.load(shard).await?;
                if let Some(last) = commit.last {
                    state.checkpoint = Some(SequenceNumber::from(last));
                }
                state.intent = None;
                state.ended |= commit.ended;
                state.catalog_pending = commit.catalog_pending.to_vec();
                f.save(shard, &state).await
            }
            CheckpointStore::DynamoDb(d) => d.commit(shard, Self::fence(shard, lease)?, commit).await,
        }
    }

    /// Replaces the partitions still to register in the catalog, and
    /// nothing else (the catalog confirmed some of them after the last
    /// commit); fenced like a commit.
    pub async fn set_catalog_pending(&self, shard: &str, lease: Option<u64>, pending: &[String]) -> Result<()> {
        match self {
            CheckpointStore::File(f) => {
                let mut state = f.load(shard).await?;
                state.catalog_pending = pending.to_vec();
                f.save(shard, &state).await
            }
            CheckpointStore::DynamoDb(d) => d.set_catalog_pending(shard, Self::fence(shard, lease)?, pending).await,
        }
    }

    /// A fleet write needs the lease it is made under.
    fn fence(shard: &str, lease: Option<u64>) -> Result<u64> {
        lease.ok_or_else(|| Error::LeaseLost { shard: shard.to_string() })
    }

    /// Schema version `version` (TOML), if stored. Version 1 is the schema
    /// of inferred and Glue mode; later ones are added by schema evolution.
    pub async fn load_schema(&self, version: u32) -> Result<Option<String>> {
        match self {
            CheckpointStore::File(f) => {
                let key = schema_key(version);
                match f.store.get(&key).await {
                    Ok(data) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
                    Err(_) if !f.store.exists(&key) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            CheckpointStore::DynamoDb(d) => d.load_schema(version).await,
        }
    }

    /// Stores schema version `version` (TOML) unless it is stored already:
    /// the first writer wins and everyone then loads its text. A version
    /// never changes afterwards, so a replayed batch is rebuilt with the
    /// schema it was first written with. `true` when this call stored it.
    pub async fn save_schema(&self, version: u32, toml: &str) -> Result<bool> {
        match self {
            CheckpointStore::File(f) => f.store.put_new(&schema_key(version), toml.as_bytes().to_vec()).await,
            CheckpointStore::DynamoDb(d) => d.save_schema(version, toml).await,
        }
    }

    /// Locks a `file://` store for this process (`None` for DynamoDB, whose
    /// leases share it): a second worker on the same folder is refused with
    /// the holder named, and a lock whose process died is free again (the
    /// kernel drops it with the process).
    pub fn lock(&self) -> Result<Option<StoreLock>> {
        let Some(folder) = self.folder() else { return Ok(None) };
        StoreLock::take(folder, &self.url()).map(Some)
    }

    /// The folder of a `file://` store's shard files (`None` for DynamoDB).
    pub fn folder(&self) -> Option<&std::path::Path> {
        match self {
            CheckpointStore::File(f) => Some(f.store.root()),
            CheckpointStore::DynamoDb(_) => None,
        }
    }

    /// A description for logs.
    pub fn url(&self) -> String {
        match self {
            CheckpointStore::File(f) => f.store.url(""),
            CheckpointStore::DynamoDb(d) => d.url(),
        }
    }
}

/// Where schema version `version` is kept, beside the shard files:
/// `schema.toml` (inferred or Glue mode), then `schema-v2.toml`, ...
fn schema_key(version: u32) -> String {
    if version <= 1 { "schema.toml".to_string() } else { format!("schema-v{version}.toml") }
}

/// A worker's exclusive hold on a `file://` checkpoint store: an advisory
/// lock (`flock`) on `.lock` in the store's folder, which names the holder.
#[derive(Debug)]
pub struct StoreLock {
    file: std::fs::File,
    path: PathBuf,
}

impl StoreLock {
    fn take(dir: &std::path::Path, url: &str) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(".lock");
        let io =
            |e: std::io::Error| Error::Store { op: "lock", url: path.display().to_string(), message: e.to_string() };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Config(format!(
                    "checkpoint store {url} is in use by another worker ({}; lock {}): a file store serves one \
                     worker. Stop that worker, or use checkpoint_store = \"dynamodb://TABLE\" for a fleet",
                    holder.trim(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!("host {}, pid {}", host.trim(), std::process::id());
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{holder}")).map_err(io)?;
        Ok(StoreLock { file, path })
    }

    /// `Err` with what happened when the store's folder is no longer the one
    /// this worker locked (deleted, moved or replaced under it): its
    /// checkpoints are gone, and a restart would read every shard again.
    pub fn check(&self) -> std::result::Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let held = self.file.metadata().map_err(|e| e.to_string())?;
        let gone = "the checkpoint folder was deleted, moved or replaced under the running worker: its checkpoints \
                    are gone and a restart would read every shard again; stop the worker and restore the folder";
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (held.dev(), held.ino()) => Ok(()),
            Ok(_) => Err(format!("{}: {gone}", self.path.display())),
            Err(e) => Err(format!("{}: {e}: {gone}", self.path.display())),
        }
    }
}

/// The `file://` checkpoint store.
#[derive(Debug, Clone)]
pub struct FileCheckpoints {
    store: FileStore,
}

impl FileCheckpoints {
    fn key(shard: &str) -> Result<String> {
        let key = format!("{shard}.json");
        shardlake::store::check_key(&key)?;
        Ok(key)
    }

    async fn load(&self, shard: &str) -> Result<ShardState> {
        let key = Self::key(shard)?;
        let data = match self.store.get(&key).await {
            Ok(d) => d,
            Err(_) if !self.store.exists(&key) => return Ok(ShardState::default()),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Store {
            op: "load checkpoint",
            url: self.store.url(&key),
            message: format!("{e}; the file is corrupt: restore it, or delete it to re-read the shard"),
        })
    }

    async fn save(&self, shard: &str, state: &ShardState) -> Result<()> {
        let data = serde_json::to_vec_pretty(state).expect("a shard state serializes");
        self.store.put(&Self::key(shard)?, data).await
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[tokio::test]
    async fn a_file_store_is_locked_by_one_worker_and_its_loss_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = CheckpointStore::open(&url, "app", "events").unwrap();
        let lock = store.lock().unwrap().expect("a file store locks");
        lock.check().unwrap();
        let err = CheckpointStore::open(&url, "app", "events").unwrap().lock().unwrap_err().to_string();
        assert!(
            err.contains("in use by another worker") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        // Another stream of the same folder is another store.
        CheckpointStore::open(&url, "app", "other").unwrap().lock().unwrap();
        drop(lock);
        let lock = store.lock().unwrap().unwrap();
        std::fs::remove_dir_all(dir.path().join("app")).unwrap();
        assert!(lock.check().unwrap_err().contains("deleted, moved or replaced"));
        let err = CheckpointStore::open("dynamodb:/leases", "app", "events").unwrap_err().to_string();
        assert!(err.contains("write dynamodb://leases"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_urls_are_parsed_once_with_the_fix_for_a_typo() {
        let parse = |u: &str| CheckpointUrl::parse(u).map_err(|e| e.to_string());
        assert_eq!(
            parse("dynamodb://shardlake-checkpoints"),
            Ok(CheckpointUrl::DynamoDb("shardlake-checkpoints".into()))
        );
        assert_eq!(parse("file:///var/lib/x"), Ok(CheckpointUrl::File("/var/lib/x".into())));
        assert_eq!(parse("./checkpoints"), Ok(CheckpointUrl::File("./checkpoints".into())));
        for (bad, says) in [
            ("dynamodb://ab", "3 to 255"),
            ("dynamodb://my table", "3 to 255"),
            ("dynamodb://t/app", "3 to 255"),
            ("s3://bucket/cp", "use file:// or dynamodb://"),
            ("dynamdb://t", "mistyped scheme"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sequences_order_numerically() {
        assert_eq!(compare_sequences("9", "10"), Ordering::Less);
        assert_eq!(
            compare_sequences(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        assert_eq!(compare_sequences("12", "12"), Ordering::Equal);
    }

    #[tokio::test]
    async fn intent_then_commit_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = CheckpointStore::open(&url, "app", "events").unwrap();
        assert_eq!(store.load("shardId-000000000000").await.unwrap(), ShardState::default());
        let intent = Intent { first: "100".into(), last: "250".into(), records: 7, schema_version: 1 };
        store.record_intent("shardId-000000000000", None, &intent).await.unwrap();
        let reopened = CheckpointStore::open(&url, "app", "events").unwrap();
        let state = reopened.load("shardId-000000000000").await.unwrap();
        assert_eq!(state.intent.as_ref(), Some(&intent));
        assert_eq!(state.checkpoint, None);
        let pending = ["year=2026/".to_string()];
        let commit = Commit { last: Some("250"), catalog_pending: &pending, ..Commit::default() };
        reopened.commit("shardId-000000000000", None, &commit).await.unwrap();
        let state = store.load("shardId-000000000000").await.unwrap();
        let want =
            ShardState { checkpoint: Some("250".into()), catalog_pending: pending.to_vec(), ..ShardState::default() };
        assert_eq!(state, want);
        store.commit("shardId-000000000000", None, &Commit { ended: true, ..Commit::default() }).await.unwrap();
        assert!(store.load("shardId-000000000000").await.unwrap().ended);
        assert!(dir.path().join("app/events/shardId-000000000000.json").exists());
    }

    #[tokio::test]
    async fn corrupt_files_and_bad_urls_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "s").unwrap();
        std::fs::create_dir_all(dir.path().join("app/s")).unwrap();
        std::fs::write(dir.path().join("app/s/shard-1.json"), "{not json").unwrap();
        let err = store.load("shard-1").await.unwrap_err().to_string();
        assert!(err.contains("shard-1.json") && err.contains("corrupt"), "{err}");
        assert!(
            CheckpointStore::open("s3://b/x", "app", "s")
                .unwrap_err()
                .to_string()
                .contains("use file:// or dynamodb://")
        );
        assert!(CheckpointStore::open("dynamodb://t", "app", "s").unwrap_err().to_string().contains("connect"));
        assert!(CheckpointStore::open("/tmp/x", "app", "../up").is_err());
    }
}

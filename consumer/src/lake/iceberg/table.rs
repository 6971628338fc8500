//! The lake's Iceberg table: opened (or created) in its catalog, and
//! appended to in snapshots that name the batches they hold.
//!
//! Exactly once: every append is checked against the very table state it
//! commits on. iceberg-rust's transaction reloads the table before each
//! attempt (and again after a conflict with another writer) through the
//! catalog it is given; that catalog here is [`Fenced`], whose load fails
//! when any of the batches being appended is already named by a snapshot.
//! The catalog's own check (the table's metadata location for SQL, its
//! version for Glue) then makes sure nothing landed between that load and
//! the commit. So a batch that another worker (or this one, before a crash)
//! appended is never appended again, whoever wins.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use iceberg::spec::{DataFile, Schema as IcebergSchema};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent};

use super::data_file::{WrittenFile, data_file};
use super::spec::{PartitionMapping, SpecError};

/// Snapshot summary key whose value lists the batches a snapshot appended
/// (a JSON array of [`BatchKey`] texts).
pub const BATCHES_SUMMARY_KEY: &str = "shardlake.batches";

/// Table properties shardlake sets on a table it creates: Parquet with
/// Snappy, as the files are written.
const CREATED_PROPERTIES: [(&str, &str); 2] =
    [("write.format.default", "parquet"), ("write.parquet.compression-codec", "snappy")];

/// Names one batch across the fleet and across restarts: the same records
/// always form the same batch (its intent fixes the range), so its key is
/// how a replay recognises a batch the table already holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchKey(pub String);

impl fmt::Display for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One batch's files, ready to append.
#[derive(Debug, Clone)]
pub struct BatchFiles {
    /// Which batch.
    pub key: BatchKey,
    /// Its data files.
    pub files: Vec<WrittenFile>,
}

/// What an append did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Batches appended by this call, in one snapshot.
    pub appended: Vec<BatchKey>,
    /// Batches a snapshot already held (appended before a crash, or by
    /// another worker): not appended again.
    pub already: Vec<BatchKey>,
    /// The new snapshot, when anything was appended.
    pub snapshot_id: Option<i64>,
}

/// An Iceberg catalog error, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The config and the table disagree, or the config has no Iceberg form.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The catalog or the table's storage failed.
    #[error("Iceberg table {table}: {what}: {source}")]
    Catalog {
        /// The table.
        table: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: iceberg::Error,
    },
    /// The table does not exist and may not be created.
    #[error("Iceberg table {0} does not exist; create it, or set catalog_create = true (--catalog-create)")]
    Missing(String),
}

impl TableError {
    /// Whether retrying may help: a conflict that outlasted iceberg-rust's
    /// own retries, or the catalog or storage failing for a while.
    pub fn transient(&self) -> bool {
        match self {
            TableError::Catalog { source, .. } => {
                source.retryable()
                    || matches!(
                        source.kind(),
                        iceberg::ErrorKind::Unexpected | iceberg::ErrorKind::CatalogCommitConflicts
                    )
            }
            _ => false,
        }
    }
}

/// The lake's Iceberg table in its catalog.
#[derive(Debug, Clone)]
pub struct IcebergTable {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    mapping: PartitionMapping,
    /// The table's schema as last read or committed.
    schema: Arc<RwLock<Arc<IcebergSchema>>>,
}

impl IcebergTable {
    /// Opens `ident`, creating it (and its namespace) at `location` from
    /// `schema` and `mapping` when missing and `create` allows. An existing
    /// table must be partitioned as the template says.
    pub async fn open(
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        location: &str,
        schema: &IcebergSchema,
        mapping: PartitionMapping,
        time_field: Option<&str>,
        create: bool,
    ) -> Result<Self, TableError> {
        let name = ident.to_string();
        let fail = |what| {
            let name = name.clone();
            move |source| TableError::Catalog { table: name, what, source }
        };
        let exists = catalog.table_exists(&ident).await.map_err(fail("looking it up"))?;
        let table = if exists {
            catalog.load_table(&ident).await.map_err(fail("loading it"))?
        } else if !create {
            return Err(TableError::Missing(name));
        } else {
            let namespace = ident.namespace().clone();
            if !catalog.namespace_exists(&namespace).await.map_err(fail("looking up its namespace"))? {
                match catalog.create_namespace(&namespace, HashMap::new()).await {
                    Ok(Namespace { .. }) => {}
                    // Another worker created it first.
                    Err(_) if catalog.namespace_exists(&namespace).await.unwrap_or(false) => {}
                    Err(e) => return Err(fail("creating its namespace")(e)),
                }
            }
            let creation = TableCreation::builder()
                .name(ident.name().to_string())
                .location(location.trim_end_matches('/').to_string())
                .schema(schema.clone())
                .partition_spec(mapping.spec(schema, time_field)?)
                .properties(CREATED_PROPERTIES.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .build();
            match catalog.create_table(&namespace, creation).await {
                Ok(t) => t,
                // Another worker created it first: use theirs.
                Err(_) if catalog.table_exists(&ident).await.unwrap_or(false) => {
                    catalog.load_table(&ident).await.map_err(fail("loading it"))?
                }
                Err(e) => return Err(fail("creating it")(e)),
            }
        };
        let ours = mapping.spec(table.metadata().current_schema(), time_field)?;
        let theirs = table.metadata().default_partition_spec();
        let same = ours.fields().len() == theirs.fields().len()
            && ours
                .fields()
                .iter()
                .zip(theirs.fields())
                .all(|(a, b)| a.source_id == b.source_id && a.transform == b.transform);
        if !same {
            return Err(SpecError(format!(
                "Iceberg table {name} is partitioned by [{}], but the partition template and time_field say [{}]; \
                 make them agree",
                describe(theirs.fields().iter().map(|f| (f.name.as_str(), f.transform))),
                describe(ours.fields().iter().map(|f| (f.name.as_str(), f.transform))),
            ))
            .into());
        }
        let schema = Arc::new(RwLock::new(table.metadata().current_schema().clone()));
        Ok(IcebergTable { catalog, ident, mapping, schema })
    }

    /// The table's identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.ident
    }

    /// The table as the catalog has it now.
    pub async fn load(&self) -> Result<Table, TableError> {
        let table = self.catalog.load_table(&self.ident).await.map_err(|source| TableError::Catalog {
            table: self.ident.to_string(),
            what: "loading it",
            source,
        })?;
        self.remember(&table);
        Ok(table)
    }

    /// The table's schema as last read or committed.
    pub fn current_schema(&self) -> Arc<IcebergSchema> {
        self.schema.read().expect("schema lock").clone()
    }

    fn remember(&self, table: &Table) {
        *self.schema.write().expect("schema lock") = table.metadata().current_schema().clone();
    }

    /// The catalog the table is in.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Whether a snapshot names `key`.
    pub async fn holds(&self, key: &BatchKey) -> Result<bool, TableError> {
        Ok(committed_batches(&self.load().await?).contains(key))
    }

    /// Appends `batches` in one snapshot, leaving out those a snapshot
    /// already holds; conflicts with other writers are retried by
    /// iceberg-rust against the reloaded table, each reload checked again.
    pub async fn append(&self, batches: Vec<BatchFiles>) -> Result<Appended, TableError> {
        let mut pending = batches;
        let mut already = Vec::new();
        // Each round either commits or finds at least one more batch already
        // in the table, so this ends within `pending.len() + 1` rounds.
        loop {
            let keys: BTreeSet<BatchKey> = pending.iter().map(|b| b.key.clone()).collect();
            let fenced = Fenced { inner: self.catalog.clone(), keys: keys.clone(), found: Mutex::default() };
            let result = self.try_append(&fenced, &pending).await;
            let found = std::mem::take(&mut *fenced.found.lock().expect("fence lock"));
            match result {
                Err(_) if !found.is_empty() => {
                    pending.retain(|b| !found.contains(&b.key));
                    already.extend(found);
                    if pending.is_empty() {
                        return Ok(Appended { appended: Vec::new(), already, snapshot_id: None });
                    }
                }
                Err(e) => return Err(e),
                Ok(snapshot_id) => {
                    return Ok(Appended { appended: keys.into_iter().collect(), already, snapshot_id });
                }
            }
        }
    }

    async fn try_append(&self, fenced: &Fenced, batches: &[BatchFiles]) -> Result<Option<i64>, TableError> {
        let fail = |what| {
            let table = self.ident.to_string();
            move |source| TableError::Catalog { table, what, source }
        };
        let table = fenced.load_table(&self.ident).await.map_err(fail("loading it"))?;
        let metadata = table.metadata();
        let schema = metadata.current_schema();
        let spec_id = metadata.default_partition_spec_id();
        let mut files: Vec<DataFile> = Vec::new();
        for batch in batches {
            for f in &batch.files {
                files.push(data_file(f, &self.mapping, spec_id, schema)?);
            }
        }
        let names: Vec<&str> = batches.iter().map(|b| b.key.0.as_str()).collect();
        let summary = HashMap::from([(
            BATCHES_SUMMARY_KEY.to_string(),
            serde_json::to_string(&names).expect("strings serialize"),
        )]);
        let tx = Transaction::new(&table);
        // Duplicate files are ruled out by the batch check; iceberg-rust's
        // own check reads every manifest of the table on every commit.
        let append =
            tx.fast_append().with_check_duplicate(false).add_data_files(files).set_snapshot_properties(summary);
        let tx = append.apply(tx).map_err(fail("preparing the append"))?;
        let committed = tx.commit(fenced).await.map_err(fail("committing the append"))?;
        self.remember(&committed);
        Ok(committed.metadata().current_snapshot_id())
    }
}

fn describe<'a>(fields: impl Iterator<Item = (&'a str, iceberg::spec::Transform)>) -> String {
    fields.map(|(n, t)| format!("{t}({n})")).collect::<Vec<_>>().join(", ")
}

/// The batch keys that `table`'s snapshots name.
pub fn committed_batches(table: &Table) -> BTreeSet<BatchKey> {
    table.metadata().snapshots().flat_map(|s| batches_of(s)).collect()
}

/// The batch keys one snapshot names.
pub fn batches_of(snapshot: &iceberg::spec::Snapshot) -> Vec<BatchKey> {
    snapshot
        .summary()
        .additional_properties
        .get(BATCHES_SUMMARY_KEY)
        .and_then(|text| serde_json::from_str::<Vec<String>>(text).ok())
        .map_or_else(Vec::new, |names| names.into_iter().map(BatchKey).collect())
}

/// A catalog whose table loads fail when a snapshot already names one of
/// `keys` (recording which in `found`); everything else goes to `inner`.
#[derive(Debug)]
struct Fenced {
    inner: Arc<dyn Catalog>,
    keys: BTreeSet<BatchKey>,
    found: Mutex<Vec<BatchKey>>,
}

#[async_trait]
impl Catalog for Fenced {
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let loaded = self.inner.load_table(table).await?;
        let committed = committed_batches(&loaded);
        let found: Vec<BatchKey> = self.keys.intersection(&committed).cloned().collect();
        if found.is_empty() {
            return Ok(loaded);
        }
        let text = found.iter().map(|k| k.0.as_str()).collect::<Vec<_>>().join(", ");
        *self.found.lock().expect("fence lock") = found;
        Err(iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("batches already in the table: {text}")))
    }

    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await
    }

    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
}

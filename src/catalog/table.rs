//! [`CatalogTable`]: one lake table in Glue. It creates the table or checks
//! an existing one, adds the columns schema evolution brings, and registers
//! the partitions the lake's files are in (`BatchCreatePartition`, with a
//! cache so steady state makes no calls).

use std::collections::HashSet;
use std::sync::Mutex;

use aws_sdk_glue::types::{DatabaseInput, PartitionInput, StorageDescriptor, Table};

use super::differences::{Difference, blocking, differences, with_added_columns};
use super::lookup::get_table;
use super::sdk_errors::{catalog_error, is_code};
use super::table_input::{storage, table_input};
use super::{MAX_PARTITIONS_PER_CALL, PartitionMode, TableName};
use crate::error::{Error, Result};
use crate::partition::PartitionTemplate;
use crate::schema::TableDefinition;

/// What [`CatalogTable::ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The table (and maybe its database) was created.
    Created,
    /// The existing table fits the lake.
    Matches,
}

/// A partition as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CatalogPartition {
    /// Values of the partition keys, in key order.
    pub values: Vec<String>,
    /// Its storage location.
    pub location: String,
}

/// Partitions a table remembers as registered, at most (about 10 MiB).
const MAX_KNOWN_PARTITIONS: usize = 100_000;

/// One lake table in Glue, and the partitions known to be registered.
#[derive(Debug)]
pub struct CatalogTable {
    client: aws_sdk_glue::Client,
    name: TableName,
    template: PartitionTemplate,
    /// What the lake writes now (schema evolution replaces it).
    def: Mutex<TableDefinition>,
    mode: PartitionMode,
    /// Columns added to the schema are added to the table (`evolve`).
    evolving: bool,
    /// Partition paths known to be in the catalog (at most
    /// [`MAX_KNOWN_PARTITIONS`]).
    known: Mutex<HashSet<String>>,
    /// `UpdateTable` calls made (a metric).
    updates: std::sync::atomic::AtomicU64,
    /// Answered registration calls: a change says partitions may have been
    /// confirmed since a caller last looked.
    confirmations: std::sync::atomic::AtomicU64,
    /// Partitions created, counted as each call answers (a call that fails
    /// after earlier ones created some still counts those).
    created: std::sync::atomic::AtomicU64,
}

impl CatalogTable {
    /// The table `name` for a lake of `def`, written with `template`.
    pub fn new(
        client: aws_sdk_glue::Client,
        name: TableName,
        template: PartitionTemplate,
        def: TableDefinition,
        mode: PartitionMode,
    ) -> Self {
        CatalogTable {
            client,
            name,
            template,
            def: Mutex::new(def),
            mode,
            evolving: false,
            known: Mutex::new(HashSet::new()),
            updates: Default::default(),
            confirmations: Default::default(),
            created: Default::default(),
        }
    }

    /// Under schema evolution a table that lacks only columns the lake has
    /// added is brought up to date (`UpdateTable`) instead of refused.
    pub fn evolving(mut self) -> Self {
        self.evolving = true;
        self
    }

    fn def(&self) -> TableDefinition {
        self.def.lock().expect("catalog lock").clone()
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// How partitions reach the catalog.
    pub fn mode(&self) -> PartitionMode {
        self.mode
    }

    /// The table as Glue holds it, `None` when it does not exist.
    pub async fn get(&self) -> Result<Option<Table>> {
        get_table(&self.client, &self.name).await
    }

    /// With `create`, creates the database and the table when missing;
    /// otherwise (or when the table exists) checks it fits the lake, with
    /// every difference named in a [`Error::Config`].
    pub async fn ensure(&self, create: bool) -> Result<Ensured> {
        let (existing, ensured) = match self.get().await? {
            Some(t) => (t, Ensured::Matches),
            None if !create => return Err(self.missing()),
            None => {
                let created = self.create().await?;
                let table = self.get().await?.ok_or_else(|| {
                    Error::Config(format!("catalog {}: created, then not found (deleted meanwhile?)", self.name))
                })?;
                (table, if created { Ensured::Created } else { Ensured::Matches })
            }
        };
        let def = self.def();
        let diffs = blocking(differences(&def, self.mode, &existing), self.evolving);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "catalog {} does not fit the lake:\n  - {}\nfix the table (or drop it and set catalog_create = true) \
                 or the consumer's schema, partition and destination",
                self.name,
                diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - ")
            )));
        }
        if self.evolving {
            // A kill between storing a schema version and the table update.
            self.append_missing(&def, &existing).await?;
        }
        Ok(ensured)
    }

    /// The error of a table that is not there, with the fix.
    pub fn missing(&self) -> Error {
        Error::TableMissing {
            table: self.name.to_string(),
            fix: "create it (`schema ddl` prints its DDL) or set catalog_create = true".into(),
        }
    }

    /// Schema evolution: the lake now writes `def` (the same table with
    /// columns added); the table gets the columns it lacks, appended, before
    /// any file that carries them is committed, and nothing else of it
    /// changes. A column the table has and the lake does not write (a later
    /// version's, or the owners') is left alone. Returns whether the table
    /// was updated (`false`: it had them already, another worker was first).
    pub async fn add_columns(&self, def: TableDefinition) -> Result<bool> {
        *self.def.lock().expect("catalog lock") = def.clone();
        let Some(existing) = self.get().await? else { return Err(self.missing()) };
        let diffs = blocking(differences(&def, self.mode, &existing), true);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "catalog {}: cannot add the new columns, the table no longer fits the lake:\n  - {}",
                self.name,
                diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - ")
            )));
        }
        self.append_missing(&def, &existing).await
    }

    /// The table's columns and their declared types (`None`: no table).
    pub async fn declared_columns(&self) -> Result<Option<Vec<(String, String)>>> {
        let columns = |t: Table| {
            let sd = t.storage_descriptor.unwrap_or_else(|| StorageDescriptor::builder().build());
            sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or_default().to_string())).collect()
        };
        Ok(self.get().await?.map(columns))
    }

    /// Appends the columns of `def` that `existing` lacks (`UpdateTable`,
    /// fenced on the version read, so an owner's edit made meanwhile is
    /// never overwritten: the call fails and is retried on the new version).
    async fn append_missing(&self, def: &TableDefinition, existing: &Table) -> Result<bool> {
        let added: Vec<(String, String)> = differences(def, self.mode, existing)
            .into_iter()
            .filter_map(|d| match d {
                Difference::MissingColumn { name, ty } => Some((name, ty)),
                _ => None,
            })
            .collect();
        if added.is_empty() {
            return Ok(false);
        }
        let input = with_added_columns(existing, &added);
        self.client
            .update_table()
            .database_name(&self.name.database)
            .table_input(input)
            .set_version_id(existing.version_id().map(str::to_string))
            .send()
            .await
            .map_err(|e| catalog_error("UpdateTable", &self.name, e))?;
        self.updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(table = %self.name, added = names.join(","), "added columns to the Glue table");
        Ok(true)
    }

    /// Forgets which partitions are registered (the table was found
    /// missing: a new one has none).
    pub fn forget_partitions(&self) {
        self.known.lock().expect("catalog lock").clear();
    }

    /// A number that changes whenever registrations were answered (see
    /// [`CatalogTable::unconfirmed`]): unchanged, nothing new is confirmed.
    pub fn confirmations(&self) -> u64 {
        self.confirmations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Partitions this table created in the catalog so far.
    pub fn created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `UpdateTable` calls this table made.
    pub fn updates(&self) -> u64 {
        self.updates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates the database (unless it exists) and the table; `false` when
    /// another worker created the table first.
    async fn create(&self) -> Result<bool> {
        let db = self.client.create_database().database_input(
            DatabaseInput::builder()
                .name(&self.name.database)
                .description("created by shardlake")
                .build()
                .expect("name"),
        );
        match db.send().await {
            Ok(_) => tracing::info!(database = self.name.database, "created the Glue database"),
            Err(e) if is_code(&e, "AlreadyExistsException") => {}
            Err(e) => return Err(catalog_error("CreateDatabase", &self.name, e)),
        }
        let input = table_input(&self.name, &self.def());
        match self.client.create_table().database_name(&self.name.database).table_input(input).send().await {
            Ok(_) => {
                tracing::info!(table = %self.name, "created the Glue table");
                Ok(true)
            }
            // It is then checked like any existing table.
            Err(e) if is_code(&e, "AlreadyExistsException") => Ok(false),
            Err(e) => Err(catalog_error("CreateTable", &self.name, e)),
        }
    }

    /// The partitions of `paths` (rendered partition paths) not known to be
    /// in the catalog yet (none with projection: nothing is registered).
    pub fn unconfirmed(&self, paths: impl IntoIterator<Item = String>) -> Vec<String> {
        if self.mode == PartitionMode::Projection {
            return Vec::new();
        }
        let known = self.known.lock().expect("catalog lock");
        let mut out: Vec<String> = paths.into_iter().filter(|p| !known.contains(p)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Registers every partition of `paths` not known to be there yet;
    /// one that already exists counts as registered. Returns how many were
    /// created. Paths that do not follow the template are skipped (logged).
    pub async fn register(&self, paths: &[String]) -> Result<usize> {
        if self.mode == PartitionMode::Projection {
            return Ok(0);
        }
        let todo = self.unconfirmed(paths.iter().cloned());
        let mut created = 0;
        let def = self.def();
        for chunk in todo.chunks(MAX_PARTITIONS_PER_CALL) {
            let mut inputs = Vec::with_capacity(chunk.len());
            let mut by_values: Vec<(Vec<String>, &String)> = Vec::with_capacity(chunk.len());
            for path in chunk {
                let Some(values) = self.template.key_values(path) else {
                    tracing::warn!(path, template = self.template.source(), "not a partition path; not registered");
                    continue;
                };
                let location = format!("{}{path}", def.location);
                let input = PartitionInput::builder()
                    .set_values(Some(values.clone()))
                    .storage_descriptor(storage(&def, &location))
                    .build();
                inputs.push(input);
                by_values.push((values, path));
            }
            if inputs.is_empty() {
                continue;
            }
            let answer = self
                .client
                .batch_create_partition()
                .database_name(&self.name.database)
                .table_name(&self.name.table)
                .set_partition_input_list(Some(inputs))
                .send()
                .await
                .map_err(|e| match is_code(&e, "EntityNotFoundException") {
                    true => self.missing(),
                    false => catalog_error("BatchCreatePartition", &self.name, e),
                })?;
            let (mut failed, mut existed) = (HashSet::new(), 0);
            let mut first_error = None;
            for err in answer.errors() {
                let code = err.error_detail().and_then(|d| d.error_code()).unwrap_or_default();
                if code == "AlreadyExistsException" {
                    existed += 1;
                    continue;
                }
                failed.insert(err.partition_values().to_vec());
                first_error.get_or_insert_with(|| {
                    let message = err.error_detail().and_then(|d| d.error_message()).unwrap_or_default();
                    let transient = code.is_empty()
                        || matches!(
                            code,
                            "InternalServiceException" | "OperationTimeoutException" | "ThrottlingException"
                        );
                    (format!("partition {:?}: {code}: {message}", err.partition_values()), transient)
                });
            }
            let mut known = self.known.lock().expect("catalog lock");
            if known.len() + by_values.len() > MAX_KNOWN_PARTITIONS {
                // Forgetting costs one more call per partition, answered
                // "already exists"; it bounds the memory of templates with
                // many `!{field:...}` values.
                known.clear();
            }
            for (values, path) in &by_values {
                if !failed.contains(values) {
                    known.insert((*path).clone());
                }
            }
            self.confirmations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let made = by_values.len().saturating_sub(failed.len() + existed);
            created += made;
            self.created.fetch_add(made as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some((message, transient)) = first_error {
                return Err(Error::Catalog {
                    op: "BatchCreatePartition",
                    table: self.name.to_string(),
                    message,
                    transient,
                });
            }
        }
        Ok(created)
    }

    /// Every partition the catalog holds for the table.
    pub async fn partitions(&self) -> Result<Vec<CatalogPartition>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .get_partitions()
                .database_name(&self.name.database)
                .table_name(&self.name.table)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| catalog_error("GetPartitions", &self.name, e))?;
            for p in page.partitions() {
                let location = p.storage_descriptor().and_then(|sd| sd.location()).unwrap_or_default();
                out.push(CatalogPartition { values: p.values().to_vec(), location: location.to_string() });
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }
}

//! Inferred and Glue schema modes: the schema comes from the first records
//! of the stream (or a Glue table), once, and is stored beside the
//! checkpoints. Every later start (and
//! every replay) uses the stored schema, so files stay deterministic; fields
//! that appear later go to `_extra` (or the configured unknown-field policy).

use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use shardlake::aggregation::deaggregate;
use shardlake::catalog::TableName;
use shardlake::schema::{Schema, SchemaInferrer};
use tokio_util::sync::CancellationToken;

use crate::config::{InitialPosition, Settings};
use crate::kinesis::{self, StartAt};

/// Schema mode `glue://DATABASE/TABLE`: the schema stored beside the
/// checkpoints, or the table's columns read now and stored (the first stored
/// wins in a fleet), so replays rebuild identical files after the table
/// changes.
pub async fn glue_schema(
    glue: &aws_sdk_glue::Client,
    table: &TableName,
    checkpoints: &CheckpointStore,
) -> anyhow::Result<Schema> {
    if let Some(schema) = stored_schema(checkpoints).await? {
        tracing::info!(columns = schema.columns.len(), table = %table, "using the stored schema");
        return Ok(schema);
    }
    let schema = shardlake::catalog::read_schema(glue, table).await?;
    let schema = store_schema(checkpoints, &schema).await?;
    eprintln!(
        "shardlake-consumer: read a schema of {} columns from {table}; stored in {}",
        schema.columns.len(),
        checkpoints.url()
    );
    Ok(schema)
}

/// The schema stored beside the checkpoints, if any.
pub(crate) async fn stored_schema(checkpoints: &CheckpointStore) -> anyhow::Result<Option<Schema>> {
    let Some(text) = checkpoints.load_schema(1).await? else { return Ok(None) };
    let schema =
        Schema::parse(&text, false).map_err(|e| anyhow::anyhow!("stored schema in {}: {e}", checkpoints.url()))?;
    Ok(Some(schema))
}

/// Stores `schema` unless one is stored already; returns the stored one,
/// which every worker of a fleet then uses.
async fn store_schema(checkpoints: &CheckpointStore, schema: &Schema) -> anyhow::Result<Schema> {
    checkpoints.save_schema(1, &schema.to_toml()).await?;
    Ok(stored_schema(checkpoints).await?.unwrap_or_else(|| schema.clone()))
}

/// GetRecords calls per shard while sampling, at most.
const SAMPLE_CALLS: usize = 20;

/// The stored schema, or one inferred from up to `infer_sample` records read
/// from the shards' start positions (waiting for records if the stream is
/// empty). `None` when cancelled first.
pub async fn stream_schema(
    settings: &Settings,
    client: &aws_sdk_kinesis::Client,
    checkpoints: &CheckpointStore,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Schema>> {
    if let Some(schema) = stored_schema(checkpoints).await? {
        tracing::info!(columns = schema.columns.len(), "using the stored inferred schema");
        return Ok(Some(schema));
    }
    let c = &settings.config;
    let mut inferrer = SchemaInferrer::new();
    let start = match c.initial_position {
        InitialPosition::TrimHorizon => StartAt::TrimHorizon,
        InitialPosition::Latest => StartAt::Latest,
        InitialPosition::AtTimestamp => StartAt::Timestamp(settings.initial_timestamp_ms.unwrap_or(0)),
    };
    // Iterators are kept across rounds so LATEST sees records put meanwhile.
    let mut iterators: Vec<Option<String>> = Vec::new();
    let mut listed = false;
    loop {
        if !listed {
            for shard in kinesis::list_shards(client, &c.stream).await? {
                iterators.push(Some(kinesis::shard_iterator(client, &c.stream, &shard.id, &start).await?));
            }
            listed = true;
        }
        // An equal share of the sample from each shard, and never more than
        // `infer_sample` in all (each call asks for what is still wanted).
        let per_shard = c.infer_sample.div_ceil(iterators.len().max(1));
        for it in iterators.iter_mut() {
            let shard_start = inferrer.records();
            for _ in 0..SAMPLE_CALLS {
                let Some(current) = it.as_deref() else { break };
                let from_shard = inferrer.records() - shard_start;
                let wanted =
                    per_shard.saturating_sub(from_shard).min(c.infer_sample.saturating_sub(inferrer.records()));
                if wanted == 0 {
                    break;
                }
                let limit = i32::try_from(wanted.min(10_000)).expect("at most 10,000");
                let fetched = kinesis::get_records(client, current, limit, &Default::default()).await?;
                *it = fetched.next;
                for r in &fetched.records {
                    let mut observe = |line: &[u8]| {
                        if inferrer.records() < c.infer_sample {
                            inferrer.observe_line(line);
                        }
                    };
                    match deaggregate(&r.data) {
                        None => observe(&r.data),
                        Some(Ok(users)) => users.iter().for_each(|u| observe(&u.data)),
                        Some(Err(_)) => {}
                    }
                }
                if fetched.records.is_empty() {
                    break;
                }
            }
        }
        if let Some(schema) = inferrer.finish().filter(|_| inferrer.records() > 0) {
            // In a fleet another worker may have stored its schema first; every
            // worker must use the stored one, so replays rebuild identical files.
            let schema = store_schema(checkpoints, &schema).await?;
            tracing::info!(
                columns = schema.columns.len(),
                records = inferrer.records(),
                store = checkpoints.url(),
                "inferred the schema from the stream and stored it"
            );
            eprintln!(
                "shardlake-consumer: inferred a schema of {} columns from {} records",
                schema.columns.len(),
                inferrer.records()
            );
            return Ok(Some(schema));
        }
        tracing::info!(stream = c.stream, "no records to infer the schema from yet; waiting");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(c.polling.idle_interval.max(Duration::from_millis(200))) => {}
        }
    }
}

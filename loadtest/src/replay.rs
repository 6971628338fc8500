//! `shardlake-loadtest replay-kinesis`: a Kinesis endpoint that serves a
//! JSON Lines file to a consumer from memory, for benchmarks that measure
//! the consumer (CPU, memory, shard count) and not an emulator. The lines
//! are dealt round-robin to N shards and each record's JSON is encoded once
//! at start-up; `ListShards`, `DescribeStreamSummary`, `GetShardIterator`
//! (TRIM_HORIZON, AT_TIMESTAMP, AT/AFTER_SEQUENCE_NUMBER, LATEST) and
//! `GetRecords` (up to `Limit` records, `MillisBehindLatest` 0 once a shard
//! is read to its end) answer at once. Iterators are `SHARD:POSITION`;
//! sequence numbers are 10^20 plus the record's position in its shard.
//! With `--trim N` the first N records of each shard are gone, as records
//! past the stream's retention are: reading starts at N whatever position
//! is asked for (the stand-in for a consumer that was down too long).
//! Binds 127.0.0.1 only.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The first sequence number of every shard.
const FIRST_SEQUENCE: u128 = 100_000_000_000_000_000_000;
/// `ApproximateArrivalTimestamp` of every record (2026-11-19).
const ARRIVAL: f64 = 1_795_000_000.0;
/// Kinesis's largest `Limit`.
const MAX_LIMIT: usize = 10_000;

/// Per shard, each record's encoded JSON object, in order, and how many
/// of them are trimmed.
struct Shards(Vec<Vec<String>>, usize);

impl Shards {
    fn load(input: &std::path::Path, shards: usize, trim: usize) -> anyhow::Result<Shards> {
        anyhow::ensure!(shards > 0, "--shards must be at least 1");
        let text = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let mut out: Vec<Vec<String>> = vec![vec![]; shards];
        let lines = text.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace));
        for (i, line) in lines.enumerate() {
            let shard = &mut out[i % shards];
            let data = base64::engine::general_purpose::STANDARD.encode(line);
            let sequence = FIRST_SEQUENCE + shard.len() as u128;
            shard.push(format!(
                r#"{{"SequenceNumber":"{sequence}","ApproximateArrivalTimestamp":{ARRIVAL:.3},"Data":"{data}","PartitionKey":"{i}"}}"#
            ));
        }
        Ok(Shards(out, trim))
    }

    fn list(&self) -> Value {
        let n = self.0.len() as u128;
        let step = u128::MAX / n;
        let shards: Vec<Value> = (0..n)
            .map(|k| {
                let end = if k == n - 1 { u128::MAX } else { (k + 1) * step - 1 };
                json!({
                    "ShardId": format!("shardId-{k:012}"),
                    "HashKeyRange": {"StartingHashKey": (k * step).to_string(), "EndingHashKey": end.to_string()},
                    "SequenceNumberRange": {"StartingSequenceNumber": FIRST_SEQUENCE.to_string()},
                })
            })
            .collect();
        json!({ "Shards": shards })
    }

    fn shard(&self, id: &str) -> Result<usize, String> {
        id.rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < self.0.len())
            .ok_or_else(|| format!("no shard {id}"))
    }

    fn iterator(&self, req: &Value) -> Result<Value, String> {
        let shard = self.shard(req["ShardId"].as_str().unwrap_or_default())?;
        let kind = req["ShardIteratorType"].as_str().unwrap_or_default();
        let position = match kind {
            "TRIM_HORIZON" | "AT_TIMESTAMP" => 0,
            "LATEST" => self.0[shard].len(),
            "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" => {
                let sequence: u128 = req["StartingSequenceNumber"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("StartingSequenceNumber is not a number")?;
                let at = sequence.checked_sub(FIRST_SEQUENCE).ok_or("StartingSequenceNumber out of range")? as usize;
                at + usize::from(kind == "AFTER_SEQUENCE_NUMBER")
            }
            other => return Err(format!("unknown ShardIteratorType {other}")),
        };
        Ok(json!({ "ShardIterator": format!("{shard}:{}", position.max(self.1)) }))
    }

    fn records(&self, req: &Value) -> Result<String, String> {
        let iterator = req["ShardIterator"].as_str().unwrap_or_default();
        let (shard, position) = iterator
            .split_once(':')
            .and_then(|(s, p)| Some((s.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
            .filter(|&(s, _)| s < self.0.len())
            .ok_or_else(|| format!("bad ShardIterator {iterator}"))?;
        let all = &self.0[shard];
        let limit = req["Limit"].as_u64().map_or(MAX_LIMIT, |l| (l as usize).min(MAX_LIMIT));
        let start = position.max(self.1).min(all.len());
        let end = (start + limit).min(all.len());
        let behind = if end == all.len() { 0 } else { 1000 };
        Ok(format!(
            r#"{{"Records":[{}],"NextShardIterator":"{shard}:{end}","MillisBehindLatest":{behind}}}"#,
            all[start..end].join(",")
        ))
    }

    fn answer(&self, op: &str, body: &[u8]) -> (StatusCode, String) {
        let bad = |kind: &str, message: String| {
            (StatusCode::BAD_REQUEST, json!({"__type": kind, "message": message}).to_string())
        };
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return bad("SerializationException", "the body is not JSON".into());
        };
        let answer = match op {
            "ListShards" => Ok(self.list().to_string()),
            "DescribeStreamSummary" => {
                let name = req["StreamName"].as_str().unwrap_or("replay");
                Ok(json!({"StreamDescriptionSummary": {
                    "StreamName": name,
                    "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{name}"),
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                    "RetentionPeriodHours": 24,
                    "StreamCreationTimestamp": ARRIVAL,
                    "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                    "EncryptionType": "NONE",
                    "OpenShardCount": self.0.len(),
                    "ConsumerCount": 0,
                }})
                .to_string())
            }
            "GetShardIterator" => self.iterator(&req).map(|v| v.to_string()),
            "GetRecords" => self.records(&req),
            other => return bad("UnknownOperationException", other.to_string()),
        };
        match answer {
            Ok(text) => (StatusCode::OK, text),
            Err(message) => bad("InvalidArgumentException", message),
        }
    }
}

async fn handle(req: Request<Incoming>, shards: Arc<Shards>) -> Result<Response<Full<Bytes>>, Infallible> {
    let op = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
        .to_string();
    let (status, text) = match req.into_body().collect().await {
        Ok(body) => shards.answer(&op, &body.to_bytes()),
        Err(e) => {
            (StatusCode::BAD_REQUEST, json!({"__type": "SerializationException", "message": e.to_string()}).to_string())
        }
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response");
    Ok(response)
}

/// Serves `input` dealt to `shards` shards on 127.0.0.1:`port` (0: any free
/// port), printing `listening on http://ADDRESS` once it accepts; runs until
/// killed.
pub async fn serve(input: &std::path::Path, shards: usize, port: u16, trim: usize) -> anyhow::Result<()> {
    let shards = Arc::new(Shards::load(input, shards, trim)?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.context("binding the replay endpoint")?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let shards = shards.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, shards.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards() -> Shards {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n").unwrap();
        Shards::load(&path, 2, 0).unwrap()
    }

    fn records(s: &Shards, req: Value) -> Value {
        serde_json::from_str(&s.records(&req).unwrap()).unwrap()
    }

    #[test]
    fn lines_are_dealt_round_robin_and_read_back_in_order_from_any_position() {
        let s = shards();
        let list = s.list();
        assert_eq!(list["Shards"].as_array().unwrap().len(), 2);
        assert_eq!(list["Shards"][1]["HashKeyRange"]["EndingHashKey"], u128::MAX.to_string());
        let it = s.iterator(&json!({"ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"})).unwrap();
        let page = records(&s, json!({"ShardIterator": it["ShardIterator"], "Limit": 1}));
        let data = page["Records"][0]["Data"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(data).unwrap(), b"{\"a\":1}");
        assert_eq!(page["MillisBehindLatest"], 1000);
        let rest = records(&s, json!({"ShardIterator": page["NextShardIterator"]}));
        let data = rest["Records"][0]["Data"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(data).unwrap(), b"{\"a\":3}");
        assert_eq!(rest["MillisBehindLatest"], 0);
        let seq = rest["Records"][0]["SequenceNumber"].as_str().unwrap();
        let after = s
            .iterator(&json!({"ShardId": "shardId-000000000000", "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": seq}))
            .unwrap();
        let empty = records(&s, json!({"ShardIterator": after["ShardIterator"]}));
        assert_eq!(empty["Records"].as_array().unwrap().len(), 0);
        let (status, _) = s.answer("GetRecords", br#"{"ShardIterator":"9:0"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn trimmed_records_are_skipped_from_any_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        let s = Shards::load(&path, 1, 2).unwrap();
        for req in [
            json!({"ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
            json!({"ShardId": "shardId-000000000000", "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": FIRST_SEQUENCE.to_string()}),
        ] {
            let it = s.iterator(&req).unwrap();
            let page = records(&s, json!({"ShardIterator": it["ShardIterator"]}));
            assert_eq!(page["Records"].as_array().unwrap().len(), 1, "{req}");
            assert_eq!(page["Records"][0]["SequenceNumber"], (FIRST_SEQUENCE + 2).to_string());
        }
        let (status, summary) = s.answer("DescribeStreamSummary", br#"{"StreamName":"s"}"#);
        assert_eq!(status, StatusCode::OK, "{summary}");
    }
}

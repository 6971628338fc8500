"""Demo helper until the shardlake producer CLI lands: create a Kinesis stream
and put JSON Lines into it with boto3 (PutRecords batches of 500, failed
entries retried). Usage: kinesis_put.py STREAM SHARDS FILE.jsonl"""
import json
import sys
import time

import boto3

stream, shards, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kinesis = boto3.client("kinesis")
try:
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
except kinesis.exceptions.ResourceInUseException:
    pass
kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150})

with open(path, "rb") as f:
    lines = [l.rstrip(b"\n") for l in f if l.strip()]
start, sent = time.time(), 0
for i in range(0, len(lines), 500):
    entries = [{"Data": l, "PartitionKey": json.loads(l).get("event_id", str(i + j))} for j, l in enumerate(lines[i:i + 500])]
    for attempt in range(20):
        out = kinesis.put_records(StreamName=stream, Records=entries)
        failed = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
        sent += len(entries) - len(failed)
        if not failed:
            break
        entries = failed
        time.sleep(min(2.0, 0.05 * 2 ** attempt))
    else:
        sys.exit(f"{len(entries)} records could not be put")
print(f"sent {sent} events to stream {stream} ({shards} shards) in {time.time() - start:.1f} s")

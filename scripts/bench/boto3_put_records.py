#!/usr/bin/env python3
"""The boto3 reference for bench-producer: reads JSON Lines and sends them with
put_records in batches of 500 (and at most 5 MiB), random partition keys,
re-sending only the failed entries (bounded attempts). Prints one JSON line.

usage: boto3_put_records.py STREAM INPUT
"""
import json
import os
import sys
import time

import boto3

MAX_RECORDS, MAX_BYTES = 500, 5 * 1024 * 1024


def main():
    stream, path = sys.argv[1], sys.argv[2]
    client = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"])
    sent = failed = retries = 0
    start = time.monotonic()

    def flush(batch):
        nonlocal sent, failed, retries
        for attempt in range(20):
            resp = client.put_records(StreamName=stream, Records=batch)
            if resp.get("FailedRecordCount", 0) == 0:
                sent += len(batch)
                return
            retry = [e for e, r in zip(batch, resp["Records"]) if "ErrorCode" in r]
            sent += len(batch) - len(retry)
            retries += len(retry)
            batch = retry
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
        failed += len(batch)

    batch, size = [], 0
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            key = os.urandom(8).hex()
            n = len(line) + len(key)
            if len(batch) == MAX_RECORDS or size + n > MAX_BYTES:
                flush(batch)
                batch, size = [], 0
            batch.append({"Data": line, "PartitionKey": key})
            size += n
    if batch:
        flush(batch)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "failed": failed, "retries": retries, "elapsed_s": elapsed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

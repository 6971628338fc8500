#!/usr/bin/env python3
"""A Kinesis endpoint that answers at once, for measuring a client's own
ceiling when the emulator is the wall (kinesalite tops out near 17-20k
records/s on 2 cores and keeps a core busy while it serves GetRecords).

Without --replay it accepts every PutRecords: it answers the calls
bench-producer makes (CreateStream, DeleteStream, DescribeStreamSummary,
ListShards with one shard covering the whole hash range, PutRecords with
sequence numbers counting up) and keeps nothing.

With --replay FILE --shards N it serves the lines of a JSON Lines file to a
consumer: the lines are dealt round-robin to N shards and encoded once at
start-up, and ListShards, GetShardIterator (TRIM_HORIZON, AT/AFTER_SEQUENCE_NUMBER,
LATEST) and GetRecords (up to Limit records, MillisBehindLatest 0 once a shard
is read to its end) answer from memory. Binds 127.0.0.1 only.

usage: instant_kinesis.py PORT [--replay FILE --shards N]
"""
import argparse
import base64
import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHARD = {
    "ShardId": "shardId-000000000000",
    "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)},
    "SequenceNumberRange": {"StartingSequenceNumber": "1"},
}
SEQ = itertools.count(10**20)
# Replay mode: per shard, each record's encoded JSON object, in order.
REPLAY = []
ARRIVAL = 1795000000.0


def sequence(i):
    return str(10**20 + i)


def replay_shards():
    step = 2**128 // len(REPLAY)
    return [{"ShardId": f"shardId-{n:012d}",
             "HashKeyRange": {"StartingHashKey": str(n * step),
                              "EndingHashKey": str(2**128 - 1 if n == len(REPLAY) - 1 else (n + 1) * step - 1)},
             "SequenceNumberRange": {"StartingSequenceNumber": sequence(0)}} for n in range(len(REPLAY))]


def replay(op, req):
    """The answer to a consumer's call in replay mode, or None."""
    if op == "ListShards":
        return {"Shards": replay_shards()}
    if op == "GetShardIterator":
        shard = int(req["ShardId"].rsplit("-", 1)[1])
        kind = req["ShardIteratorType"]
        pos = {"TRIM_HORIZON": 0, "AT_TIMESTAMP": 0, "LATEST": len(REPLAY[shard])}.get(kind)
        if pos is None:
            pos = int(req["StartingSequenceNumber"]) - 10**20 + (kind == "AFTER_SEQUENCE_NUMBER")
        return {"ShardIterator": f"{shard}:{pos}"}
    if op == "GetRecords":
        shard, pos = map(int, req["ShardIterator"].split(":"))
        records = REPLAY[shard][pos:pos + req.get("Limit", 10000)]
        end = pos + len(records)
        return ('{"Records":[' + ",".join(records) + '],"NextShardIterator":"%d:%d","MillisBehindLatest":%d}'
                % (shard, end, 0 if end == len(REPLAY[shard]) else 1000))
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        op = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        answer = replay(op, json.loads(body)) if REPLAY else None
        if answer is not None:
            out = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        elif op == "PutRecords":
            # Counting entries is enough: one PartitionKey per entry.
            n = body.count(b'"PartitionKey"')
            first = next(SEQ)
            for _ in range(n - 1):
                next(SEQ)
            entry = '{"SequenceNumber":"%d","ShardId":"shardId-000000000000"}'
            out = ('{"FailedRecordCount":0,"Records":[' + ",".join(entry % (first + i) for i in range(n)) + "]}").encode()
        elif op == "ListShards":
            out = json.dumps({"Shards": [SHARD]}).encode()
        elif op == "DescribeStreamSummary":
            name = json.loads(body).get("StreamName", "s")
            out = json.dumps({"StreamDescriptionSummary": {
                "StreamName": name, "StreamARN": f"arn:aws:kinesis:us-east-1:000000000000:stream/{name}",
                "StreamStatus": "ACTIVE", "RetentionPeriodHours": 24, "StreamCreationTimestamp": 0,
                "EnhancedMonitoring": [], "OpenShardCount": 1}}).encode()
        elif op in ("CreateStream", "DeleteStream"):
            out = b"{}"
        else:
            self.send_response(400)
            msg = json.dumps({"__type": "UnknownOperationException", "message": op}).encode()
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--replay")
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    if a.replay:
        REPLAY.extend([] for _ in range(a.shards))
        with open(a.replay, "rb") as f:
            for i, line in enumerate(l for l in f if l.strip()):
                shard = REPLAY[i % a.shards]
                shard.append('{"SequenceNumber":"%s","ApproximateArrivalTimestamp":%.3f,"Data":"%s","PartitionKey":"%d"}'
                             % (sequence(len(shard)), ARRIVAL, base64.b64encode(line.rstrip(b"\n")).decode(), i))
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()

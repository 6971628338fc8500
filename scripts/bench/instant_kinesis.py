#!/usr/bin/env python3
"""A Kinesis endpoint that answers at once, for measuring a producer's own
ceiling when the emulator is the wall (kinesalite tops out near 17-20k
records/s on 2 cores).

It accepts every PutRecords: it answers the calls bench-producer makes
(CreateStream, DeleteStream, DescribeStreamSummary, ListShards with one shard
covering the whole hash range, PutRecords with sequence numbers counting up)
and keeps nothing. (Consumer benchmarks replay a file with
`shardlake-loadtest replay-kinesis`.) Binds 127.0.0.1 only.

usage: instant_kinesis.py PORT
"""
import argparse
import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHARD = {
    "ShardId": "shardId-000000000000",
    "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)},
    "SequenceNumberRange": {"StartingSequenceNumber": "1"},
}
SEQ = itertools.count(10**20)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        op = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        if op == "PutRecords":
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
    a = ap.parse_args()
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()

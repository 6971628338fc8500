"""Demo helper: waits until the consumer's /metrics count of committed records
(data + errors) reaches WANT, then prints it. Usage: demo_wait.py LOG WANT PID"""
import os
import re
import sys
import time
import urllib.request

log, want, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline, total = time.time() + 300, 0
while time.time() < deadline:
    os.kill(pid, 0)  # raises if the consumer died
    m = re.search(r"metrics on http://([0-9.:]+)", open(log).read())
    if m:
        text = urllib.request.urlopen(f"http://{m.group(1)}/metrics", timeout=5).read().decode()
        total = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(
            ("shardlake_consumer_records_written_total", "shardlake_consumer_records_errored_total")))
        if total >= want:
            break
    time.sleep(0.5)
print(int(total))

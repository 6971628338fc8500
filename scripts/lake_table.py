"""Prints rows, files and bytes per partition of a local lake (read with pyarrow).
Usage: lake_table.py LAKE_DIR [MAX_ROWS]"""
import collections
import os
import sys

import pyarrow.parquet as pq

lake = sys.argv[1]
shown = int(sys.argv[2]) if len(sys.argv) > 2 else 8
rows, files, size = collections.Counter(), collections.Counter(), collections.Counter()
for root, _, names in os.walk(lake):
    for n in names:
        if n.endswith(".parquet") and not n.startswith("."):
            part, path = os.path.relpath(root, lake), os.path.join(root, n)
            rows[part] += pq.ParquetFile(path).metadata.num_rows
            files[part] += 1
            size[part] += os.path.getsize(path)
print(f"{'partition':<40} {'rows':>8} {'files':>6} {'bytes':>10}")
for p in sorted(rows)[:shown]:
    print(f"{p:<40} {rows[p]:>8} {files[p]:>6} {size[p]:>10}")
if len(rows) > shown:
    print(f"... {len(rows) - shown} more partitions")
total = f"total ({len(rows)} partitions)"
print(f"{total:<40} {sum(rows.values()):>8} {sum(files.values()):>6} {sum(size.values()):>10}")

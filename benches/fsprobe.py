#!/usr/bin/env python3
"""The disk's floor for synced appends: N threads, each appending 512 B and fdatasync-ing, ITERS times.

    python3 benches/fsprobe.py N ITERS [DIR]     # DIR: where the files go (default: the current one)

Prints syncs per second and the per-sync p50/p99. benches/README.md compares it with ferry's accept latency.
"""
import os
import sys
import threading
import time

n, iters = int(sys.argv[1]), int(sys.argv[2])
directory = sys.argv[3] if len(sys.argv) > 3 else "."
latencies, lock = [], threading.Lock()


def writer(i):
    path = os.path.join(directory, f"fsprobe.{os.getpid()}.{i}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    mine = []
    for _ in range(iters):
        t = time.perf_counter()
        os.write(fd, b"x" * 512)
        os.fdatasync(fd)
        mine.append(time.perf_counter() - t)
    os.close(fd)
    os.unlink(path)
    with lock:
        latencies.extend(mine)


threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
start = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.perf_counter() - start
latencies.sort()
q = lambda p: latencies[int(p * (len(latencies) - 1))] * 1000
print(f"{n} writers: {len(latencies) / elapsed:.0f} syncs/s, p50 {q(.5):.2f} ms, p99 {q(.99):.2f} ms")

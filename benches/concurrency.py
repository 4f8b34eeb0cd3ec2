"""Backend mode against worker mode under concurrency (issue 3's benchmark).

N clients (1, 2, 4, 8, 16), each on its own connection, rerank 50 candidates from the
shared Debian corpus again and again for a fixed time. Backend mode: every backend holds
its own model session with max(1, cores / N) ONNX Runtime threads. Worker mode: the
background worker holds one session with `cores` threads and batches all clients' pairs.
Reports pairs/s, latency p50/p99 per request, and the private memory (RssAnon) of the
backends and the worker. Writes a JSON file and a PNG plot.

    python benches/concurrency.py DSN CORPUS_JSONL OUT_JSON OUT_PNG [seconds]
"""
import json
import os
import statistics
import sys
import threading
import time

import psycopg

from procmem import rss_anon_kib

DSN, CORPUS, OUT_JSON, OUT_PNG = sys.argv[1:5]
SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
CLIENTS = [1, 2, 4, 8, 16]
CANDIDATES = 50
CORES = os.cpu_count() or 1

docs = [json.loads(line)["text"] for line in open(CORPUS)][:20000]
queries = ["audio player", "python library", "network monitoring tool", "font for terminals",
           "chess engine", "image viewer", "compression library", "kernel module tools"]


def client(k, mode, threads, stop_at, start, out, pids):
    try:
        session(k, mode, threads, stop_at, start, out, pids)
    except BaseException:
        start.abort()  # fail the run instead of leaving the others at the barrier
        raise


def session(k, mode, threads, stop_at, start, out, pids):
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute(f"SET pg_rerank.execution = {mode}")
        if threads:
            c.execute(f"SET pg_rerank.threads = {threads}")
        pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        sql = "SELECT idx, score FROM rerank(%s, %s)"
        c.execute(sql, ("warm up", docs[:CANDIDATES])).fetchall()  # loads the model (backend mode)
        start.wait()
        i = k
        lat = []
        while time.monotonic() < stop_at[0]:
            off = (i * 97) % (len(docs) - CANDIDATES)
            t0 = time.perf_counter()
            rows = c.execute(sql, (queries[i % len(queries)], docs[off:off + CANDIDATES])).fetchall()
            lat.append(time.perf_counter() - t0)
            assert len(rows) == CANDIDATES
            i += 1
        out[k] = lat
        # Measure memory while every connection is still open.
        start.wait()


def run(mode, n):
    threads = max(1, CORES // n) if mode == "backend" else 0
    stop_at = [float("inf")]
    start = threading.Barrier(n + 1)
    out, pids = {}, []
    ts = [threading.Thread(target=client, args=(k, mode, threads, stop_at, start, out, pids)) for k in range(n)]
    for t in ts:
        t.start()
    stop_at[0] = time.monotonic() + 1e9
    start.wait()
    t0 = time.monotonic()
    stop_at[0] = t0 + SECONDS
    while len(out) < n:
        if start.broken:
            sys.exit("a client failed")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    backend_kib = sum(rss_anon_kib(p) or 0 for p in pids)
    with psycopg.connect(DSN, autocommit=True) as c:
        wpid = c.execute("SELECT pid FROM pg_rerank_worker()").fetchone()[0]
    worker_kib = rss_anon_kib(wpid) or 0 if mode == "worker" else 0
    start.wait()
    for t in ts:
        t.join()
    lat = sorted(x for v in out.values() for x in v)
    requests = len(lat)
    return {
        "mode": mode, "clients": n, "backend_threads": threads if mode == "backend" else None,
        "requests": requests, "pairs_per_s": requests * CANDIDATES / elapsed,
        "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "backends_rss_anon_mib": backend_kib / 1024, "worker_rss_anon_mib": worker_kib / 1024,
    }


def main():
    with psycopg.connect(DSN, autocommit=True) as c:
        for _ in range(600):  # a freshly started worker loads its model first
            w = c.execute("SELECT state, device FROM pg_rerank_worker()").fetchone()
            if w[0] != "starting":
                break
            time.sleep(0.1)
        assert w[0] == "ready", f"the worker is {w[0]}: preload pg_rerank"
        settings = dict(c.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'pg_rerank.%'").fetchall())
    results = []
    for n in CLIENTS:
        for mode in ["backend", "worker"]:
            r = run(mode, n)
            results.append(r)
            print(f"{mode:8s} {n:3d} clients: {r['pairs_per_s']:7.1f} pairs/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  backends {r['backends_rss_anon_mib']:7.1f} MiB  "
                  f"worker {r['worker_rss_anon_mib']:6.1f} MiB", flush=True)
    meta = {"cores": CORES, "seconds": SECONDS, "candidates": CANDIDATES, "worker": w, "settings": settings}
    with open(OUT_JSON, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    plot(results)


def plot(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in [("backend", "o--"), ("worker", "s-")]:
        rs = [r for r in results if r["mode"] == mode]
        a.plot([r["clients"] for r in rs], [r["pairs_per_s"] for r in rs], style, label=f"{mode} mode")
        b.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], style, label=f"{mode} mode")
    for ax, title in [(a, "throughput (pairs/s, higher is better)"), (b, "p99 latency per 50-pair request (ms)")]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(CLIENTS, [str(c) for c in CLIENTS])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"pg_rerank: one worker session vs a session per backend ({CORES} cores, MiniLM-L6)")
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    main()

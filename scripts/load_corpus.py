"""Loads the shared Debian corpus into a database: documents, pgvector embeddings,
full-text vectors, an HNSW index and a GIN index. Idempotent: skips a loaded table.

    python scripts/load_corpus.py "host=... port=... dbname=..." /path/to/shared/data/debian
"""
import json
import sys
import time

import numpy as np
import psycopg


def load(dsn: str, data: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_rerank")
        # An HNSW scan returns at most ef_search rows (pgvector's default 40): the examples
        # take the 100 nearest, so every new session of this database searches 100 wide.
        db = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{db}" SET hnsw.ef_search = 100')
        have = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'packages' AND indexname = 'packages_emb_hnsw'"
        ).fetchone()[0]
        if have:
            return
        t0 = time.time()
        conn.execute("DROP TABLE IF EXISTS packages")
        conn.execute(
            """CREATE TABLE packages (
                   id text PRIMARY KEY,
                   body text NOT NULL,
                   packages text[] NOT NULL,
                   emb vector(384) NOT NULL,
                   tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED)"""
        )
        emb = np.load(f"{data}/doc_emb.npy").astype(np.float32)
        with open(f"{data}/corpus.jsonl") as f, conn.cursor() as cur:
            with cur.copy("COPY packages (id, body, packages, emb) FROM STDIN") as copy:
                for i, line in enumerate(f):
                    d = json.loads(line)
                    vec = "[" + ",".join(f"{x:.6g}" for x in emb[i]) + "]"
                    copy.write_row((d["id"], d["text"], d["packages"], vec))
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        conn.execute("CREATE INDEX packages_tsv_gin ON packages USING gin (tsv)")
        conn.execute("CREATE INDEX packages_emb_hnsw ON packages USING hnsw (emb vector_cosine_ops)")
        conn.execute("ANALYZE packages")
        n = conn.execute("SELECT count(*) FROM packages").fetchone()[0]
        print(f"loaded {n} documents with embeddings, HNSW and GIN indexes in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    load(sys.argv[1], sys.argv[2])

"""The dev set in shared/data/debian as the benchmarks read it: query texts, graded
relevance, the reference candidates, and NDCG@10. Imported by the benchmark scripts,
which run from benches/ (`python benches/x.py`)."""
import json
import math


def queries(data):
    """{query id: text}."""
    with open(data / "queries_dev.jsonl") as f:
        return {q["id"]: q["text"] for q in map(json.loads, f)}


def qrels(data):
    """{query id: {doc id: grade}}."""
    rel = {}
    with open(data / "qrels_dev.tsv") as f:
        for line in f:
            qid, did, g = line.split()
            rel.setdefault(qid, {})[did] = int(g)
    return rel


def reference(data):
    """{query id: [(first-stage rank, doc id, reference logit)] best first}, queries in
    file order (dev_reference.tsv: 100 first-stage candidates of 50 queries)."""
    cands = {}
    with open(data / "dev_reference.tsv") as f:
        next(f)
        for line in f:
            q, d, rank, logit = line.rstrip("\n").split("\t")
            cands.setdefault(q, []).append((int(rank), d, float(logit)))
    for c in cands.values():
        c.sort()
    return cands


def texts(data, ids):
    """{doc id: corpus text} of the documents `ids`."""
    wanted, out = set(ids), {}
    with open(data / "corpus.jsonl") as f:
        for doc in map(json.loads, f):
            if doc["id"] in wanted:
                out[doc["id"]] = doc["text"]
    return out


def reference_calls(data, n):
    """The first `n` reference queries in file order: [(query id, query text, candidates
    as reference() gives them, their documents' texts in that order)]."""
    qtext = queries(data)
    items = list(reference(data).items())[:n]
    corpus = texts(data, (d for _, c in items for _, d, _ in c))
    return [(q, qtext[q], c, [corpus[d] for _, d, _ in c]) for q, c in items]


def ndcg10(ranked, rel):
    """NDCG@10 of doc ids in ranked order against {doc id: grade}."""
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0

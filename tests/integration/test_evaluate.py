"""Retrieval metrics in SQL (ndcg_at_k, reciprocal_rank, recall_at_k, precision_at_k) equal
pytrec_eval's (trec_eval's code) to 1e-6, per query and averaged, on the 50 reference dev
queries: the reranked run (reference logits as scores, dev_reference.tsv) and the first
stage given as ranks (score = -rank), against all of qrels_dev.tsv. No model runs."""
import pytest
import pytrec_eval

MEASURES = {"ndcg_cut_10": "ndcg_at_k(doc, score, grade, 10)",
            "recip_rank": "reciprocal_rank(doc, score, grade)",
            "recall_10": "recall_at_k(doc, score, grade, 10)",
            "P_10": "precision_at_k(doc, score, grade, 10)"}


@pytest.fixture()
def tables(conn, reference, qrels):
    conn.execute("CREATE TEMP TABLE eval_run (run text, qid text, doc text, score float8)")
    conn.execute("CREATE TEMP TABLE eval_qrels (qid text, doc text, grade int)")
    with conn.cursor() as cur:
        with cur.copy("COPY eval_run FROM STDIN") as copy:
            for q, cands in reference.items():
                for d, rank, logit in cands:
                    copy.write_row(("reranked", q, d, logit))
                    copy.write_row(("first stage", q, d, -rank))
        with cur.copy("COPY eval_qrels FROM STDIN") as copy:
            for q, rel in qrels.items():
                for d, g in rel.items():
                    copy.write_row((q, d, g))
    yield
    conn.execute("DROP TABLE eval_run, eval_qrels")


def per_query_sql(run):
    cols = ", ".join(f"{sql} AS {name}" for name, sql in MEASURES.items())
    return (f"SELECT qid, {cols} FROM (SELECT * FROM eval_run WHERE run = '{run}') r "
            f"FULL JOIN eval_qrels USING (qid, doc) GROUP BY qid")


@pytest.mark.parametrize("run", ["reranked", "first stage"])
def test_metrics_equal_pytrec_eval(conn, tables, reference, qrels, run):
    runs = {q: {d: (logit if run == "reranked" else float(-rank)) for d, rank, logit in cands}
            for q, cands in reference.items()}
    expected = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES)).evaluate(runs)
    assert len(expected) == 50
    rows = conn.execute(per_query_sql(run)).fetchall()
    got = {r[0]: dict(zip(MEASURES, r[1:])) for r in rows}
    # The qrels' other 450 queries have no run: every metric is NULL for them.
    assert len(got) == len(qrels)
    assert all(v is None for q, m in got.items() if q not in runs for v in m.values())
    for q, want in expected.items():
        for name in MEASURES:
            assert got[q][name] == pytest.approx(want[name], abs=1e-6), (q, name)
    # avg() over the queries skips the NULLs: the mean over the 50 evaluated queries.
    cols = ", ".join(f"avg({name})" for name in MEASURES)
    means = conn.execute(f"SELECT {cols} FROM ({per_query_sql(run)}) per_query").fetchone()
    for name, mean in zip(MEASURES, means):
        want = sum(m[name] for m in expected.values()) / len(expected)
        assert mean == pytest.approx(want, abs=1e-6), name
    # The reranked run is better than the first stage (dev_reference.txt: 0.6885 > 0.6570).
    ndcg = means[0]
    assert ndcg == pytest.approx(0.6885 if run == "reranked" else 0.6570, abs=5e-5)


def test_grouped_by_a_query_column(conn, tables):
    """Figures by a query group (here: the parity of the query number) with GROUP BY."""
    rows = conn.execute(
        f"""SELECT right(qid, 1)::int % 2 AS grp, count(ndcg_cut_10), avg(ndcg_cut_10)
            FROM ({per_query_sql('reranked')}) per_query GROUP BY 1 ORDER BY 1""").fetchall()
    assert sum(r[1] for r in rows) == 50 and len(rows) == 2
    total = conn.execute(
        f"SELECT avg(ndcg_cut_10) FROM ({per_query_sql('reranked')}) per_query").fetchone()[0]
    assert (rows[0][1] * rows[0][2] + rows[1][1] * rows[1][2]) / 50 == pytest.approx(total, abs=1e-12)


def test_duplicate_ids_in_a_run_are_an_error(conn, tables):
    conn.execute("INSERT INTO eval_run SELECT run, qid, doc, score - 1 FROM eval_run "
                 "WHERE run = 'reranked' AND qid = 'q00040' LIMIT 1")
    with pytest.raises(Exception) as e:
        conn.execute(per_query_sql("reranked")).fetchall()
    assert e.value.sqlstate == "22023" and "appears more than once" in str(e.value)


def test_the_evaluate_example(conn, reference, qrels):
    """examples/evaluate.sql on the dev set's reference candidates (their logits as the
    scores): the figures of dev_reference.txt for the first stage and the reranked run, the
    diversified run within 0.01 of the reranked one, and the candidates' recall."""
    from pathlib import Path

    sql = (Path(__file__).resolve().parents[2] / "examples" / "evaluate.sql").read_text()
    conn.execute("CREATE TEMP TABLE candidates (qid text, doc_id text, first_stage_rank int, score real)")
    conn.execute("CREATE TEMP TABLE qrels (qid text, doc_id text, grade int)")
    with conn.cursor() as cur:
        with cur.copy("COPY candidates FROM STDIN") as copy:
            for q, cands in reference.items():
                for d, rank, logit in cands:
                    copy.write_row((q, d, rank, logit))
        with cur.copy("COPY qrels FROM STDIN") as copy:
            for q, rel in qrels.items():
                for d, g in rel.items():
                    copy.write_row((q, d, g))
    try:
        rows = {r[0]: r[1:] for r in conn.execute(sql).fetchall()}
    finally:
        conn.execute("DROP TABLE candidates, qrels")
    assert list(rows) == ["first stage", "reranked", "diversified"]
    assert all(r[0] == 50 for r in rows.values())
    assert float(rows["first stage"][1]) == pytest.approx(0.6570, abs=1e-4)
    assert float(rows["reranked"][1]) == pytest.approx(0.6885, abs=1e-4)
    assert abs(float(rows["diversified"][1]) - float(rows["reranked"][1])) <= 0.01
    # Reranking reorders the same candidates: same recall at 100, which bounds recall@10.
    assert rows["first stage"][5] == rows["reranked"][5]
    assert float(rows["reranked"][3]) <= float(rows["reranked"][5])

//! Long documents scored by their best window, on `shared/data/debian/long_dev.jsonl`: the
//! dev candidates buried in unrelated text. Truncated to the model's window the original
//! description is mostly lost; split into windows it is found again.

mod common;

use pg_rerank_engine::chunk::{self, ChunkOptions};
use pg_rerank_engine::ScoreOptions;
use serde_json::Value;
use std::collections::HashMap;

/// (query id, [(doc id, long text)]) in first-stage order, the first `n` queries.
fn long_dev(n: usize) -> Vec<(String, Vec<(String, String)>)> {
    let path = common::shared().join("data/debian/long_dev.jsonl");
    let mut out: Vec<(String, Vec<(String, u64, String)>)> = Vec::new();
    for line in std::fs::read_to_string(path).expect("long_dev readable").lines() {
        let v: Value = serde_json::from_str(line).expect("json");
        let q = v["query_id"].as_str().expect("query_id");
        if out.last().is_none_or(|(lq, _)| lq != q) {
            if out.len() == n {
                break;
            }
            out.push((q.to_string(), Vec::new()));
        }
        let rank = v["first_stage_rank"].as_u64().expect("rank");
        out.last_mut().expect("row").1.push((
            v["doc_id"].as_str().expect("doc").into(),
            rank,
            v["text"].as_str().expect("text").into(),
        ));
    }
    out.into_iter()
        .map(|(q, mut c)| {
            c.sort_by_key(|x| x.1);
            (q, c.into_iter().map(|(d, _, t)| (d, t)).collect())
        })
        .collect()
}

fn by_id(file: &str, field: &str) -> HashMap<String, String> {
    std::fs::read_to_string(common::shared().join(file))
        .expect("readable")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (v[field].as_str().expect("id").to_string(), v["text"].as_str().expect("text").to_string())
        })
        .collect()
}

fn qrels() -> HashMap<String, Vec<String>> {
    let mut rel: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(common::shared().join("data/debian/qrels_dev.tsv")).expect("qrels").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] != "0" {
            rel.entry(f[0].to_string()).or_default().push(f[1].to_string());
        }
    }
    rel
}

fn ndcg10(ranked: &[&str], relevant: &[String]) -> f64 {
    let gain = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .filter(|(_, d)| relevant.iter().any(|r| r == *d))
        .map(|(i, _)| gain(i))
        .sum();
    let idcg: f64 = (0..relevant.len().min(10)).map(gain).sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// The first `n` queries' mean NDCG@10 when reranked by chunking (or truncating), and the
/// pairs scored per document.
fn run(n: usize, chunked: bool, opts: ChunkOptions) -> (f64, f64) {
    let model = common::load("minilm-debian");
    let (queries, rel) = (by_id("data/debian/queries_dev.jsonl", "id"), qrels());
    let score = ScoreOptions { raw: true, tokenize_threads: 2, ..Default::default() };
    let (mut total, mut pairs, mut docs_seen) = (0.0, 0usize, 0usize);
    let data = long_dev(n);
    for (qid, cands) in &data {
        let q = queries[qid].as_str();
        let pairs_in: Vec<(&str, &str)> = cands.iter().map(|(_, t)| (q, t.as_str())).collect();
        let s = if chunked {
            let x = chunk::expand(model.splitter(), &pairs_in, opts, &mut || Ok(())).expect("split");
            pairs += x.pairs.len();
            chunk::fold(&x.spans, &model.score_pairs(&x.pairs, score, &mut || Ok(())).expect("score").0)
        } else {
            pairs += pairs_in.len();
            model.score_pairs(&pairs_in, score, &mut || Ok(())).expect("score").0
        };
        docs_seen += cands.len();
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let ranked: Vec<&str> = order.iter().map(|&i| cands[i].0.as_str()).collect();
        total += ndcg10(&ranked, rel.get(qid).map(Vec::as_slice).unwrap_or_default());
    }
    (total / data.len() as f64, pairs as f64 / docs_seen as f64)
}

/// Windows of a real long document fit the model beside the query and cover the text.
#[test]
fn windows_of_a_long_document_fit_and_cover_it() {
    let model = common::load("minilm-debian");
    let (_, cands) = long_dev(1).remove(0);
    let (q, doc) = ("library for widgets", cands[0].1.as_str());
    let opts = ChunkOptions::default();
    let w = model.splitter().windows(q, doc, opts).expect("split");
    assert!(w.texts.len() > 1 && !w.truncated, "{} windows", w.texts.len());
    for t in &w.texts {
        let e = model.encode(q, t).expect("encode");
        assert!(!e.truncated, "a window was truncated: {} tokens", e.ids.len());
        assert!(doc.contains(t));
    }
    // Every word of the document is in some window.
    for word in doc.split_whitespace() {
        assert!(w.texts.iter().any(|t| t.contains(word)), "{word:?} in no window");
    }
}

/// A query longer than the window leaves no room: the document is scored once, truncated.
#[test]
fn a_query_longer_than_the_window_scores_the_document_once() {
    let model = common::load("minilm-debian");
    let q = "compression ".repeat(400);
    let doc = "zlib is a library for data compression. ".repeat(100);
    let w = model.splitter().windows(&q, &doc, ChunkOptions::default()).expect("split");
    assert_eq!(w.texts, vec![doc.as_str()]);
}

/// Chunking recovers the ranking that burying the candidates destroyed. Runs on the
/// first 10 queries here (the 50-query figure is the SQL integration test's).
#[test]
fn chunking_finds_buried_candidates_again() {
    let n: usize = std::env::var("PG_RERANK_LONG_QUERIES").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let opts = ChunkOptions::default();
    let (chunked, per_doc) = run(n, true, opts);
    let (truncated, _) = run(n, false, opts);
    eprintln!("long_dev, {n} queries: NDCG@10 chunked {chunked:.4} ({per_doc:.2} pairs per document), truncated {truncated:.4}");
    assert!(chunked > truncated + 0.2, "chunked {chunked:.4} vs truncated {truncated:.4}");
}

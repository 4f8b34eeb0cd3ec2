//! The trained MiniLM cross-encoder against the reference logits of
//! `shared/data/debian/dev_reference.tsv` (onnxruntime fp32 in Python), plus batching,
//! truncation and cancellation behaviour on real inputs.

mod common;

use pg_rerank_engine::{batch, BatchLimits, EngineError, ErrorKind, ScoreOptions};
use serde_json::Value;
use std::collections::HashMap;

fn corpus() -> HashMap<String, String> {
    let path = common::shared().join("data/debian/corpus.jsonl");
    std::fs::read_to_string(path)
        .expect("corpus readable")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (v["id"].as_str().expect("id").to_string(), v["text"].as_str().expect("text").to_string())
        })
        .collect()
}

fn queries() -> HashMap<String, String> {
    let path = common::shared().join("data/debian/queries_dev.jsonl");
    std::fs::read_to_string(path)
        .expect("queries readable")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (v["id"].as_str().expect("id").to_string(), v["text"].as_str().expect("text").to_string())
        })
        .collect()
}

/// (query id, [(doc id, logit)]) in file order, for the first `n` queries.
fn reference(n: usize) -> Vec<(String, Vec<(String, f32)>)> {
    let path = common::shared().join("data/debian/dev_reference.tsv");
    let mut out: Vec<(String, Vec<(String, f32)>)> = Vec::new();
    for line in std::fs::read_to_string(path).expect("tsv readable").lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (q, d, logit) = (f[0], f[1], f[3].parse::<f32>().expect("logit"));
        if out.last().map(|(lq, _)| lq != q).unwrap_or(true) {
            if out.len() == n {
                break;
            }
            out.push((q.to_string(), Vec::new()));
        }
        out.last_mut().expect("row").1.push((d.to_string(), logit));
    }
    out
}

#[test]
fn minilm_logits_match_reference() {
    let model = common::load("minilm-debian");
    assert_eq!(model.config().max_length, 256);
    let corpus = corpus();
    let queries = queries();
    let mut worst = 0f32;
    let mut pairs = 0;
    for (qid, cands) in reference(10) {
        let docs: Vec<&str> = cands.iter().map(|(d, _)| corpus[d].as_str()).collect();
        let opts = ScoreOptions { limits: BatchLimits::default(), raw: true, ..Default::default() };
        let (scores, stats) = model.score(&queries[&qid], &docs, opts, &mut || Ok(())).expect("score");
        assert_eq!(stats.pairs, docs.len());
        assert!(stats.batches >= 1);
        for ((did, want), got) in cands.iter().zip(&scores) {
            let d = (got - want).abs();
            worst = worst.max(d);
            assert!(d < 1e-4, "{qid}/{did}: {got} vs reference {want}");
        }
        pairs += docs.len();
    }
    assert_eq!(pairs, 1000);
    eprintln!("minilm-debian: {pairs} pairs, max |logit - reference| = {worst:.2e}");
}

fn qrels() -> HashMap<String, Vec<String>> {
    let path = common::shared().join("data/debian/qrels_dev.tsv");
    let mut rel: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(path).expect("qrels readable").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] != "0" {
            rel.entry(f[0].to_string()).or_default().push(f[1].to_string());
        }
    }
    rel
}

/// NDCG@10 with binary relevance; ties keep the first-stage order.
fn ndcg10(ranked: &[&str], relevant: &[String]) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .filter(|(_, d)| relevant.iter().any(|r| r == *d))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let idcg: f64 = (0..relevant.len().min(10)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// Mean NDCG@10 over the 50 reference queries after reranking with `scores(qid, docs)`.
fn mean_ndcg(mut scores: impl FnMut(&str, &str, &[&str]) -> Vec<f32>) -> f64 {
    let (corpus, queries, rel) = (corpus(), queries(), qrels());
    let reference = reference(50);
    let total: f64 = reference
        .iter()
        .map(|(qid, cands)| {
            let docs: Vec<&str> = cands.iter().map(|(d, _)| corpus[d].as_str()).collect();
            let s = scores(qid, &queries[qid], &docs);
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            let ranked: Vec<&str> = order.iter().map(|&i| cands[i].0.as_str()).collect();
            ndcg10(&ranked, rel.get(qid).map(Vec::as_slice).unwrap_or_default())
        })
        .sum();
    total / reference.len() as f64
}

/// The dynamically quantized graph ranks as well as fp32: NDCG@10 on the 50 reference
/// queries within 0.005 of the reference figure (onnxruntime fp32, dev_reference.txt),
/// which the fp32 reference logits reproduce here first.
#[test]
fn int8_variant_keeps_ndcg() {
    let text = std::fs::read_to_string(common::shared().join("data/debian/dev_reference.txt")).expect("txt");
    let want: f64 = text
        .split("reranked ")
        .nth(1)
        .and_then(|s| s.split(|c: char| c != '.' && !c.is_ascii_digit()).next())
        .and_then(|s| s.trim_end_matches('.').parse().ok())
        .expect("reranked NDCG in dev_reference.txt");
    let reference: HashMap<String, Vec<f32>> =
        reference(50).into_iter().map(|(q, c)| (q, c.into_iter().map(|(_, l)| l).collect())).collect();
    let fp32 = mean_ndcg(|qid, _, _| reference[qid].clone());
    assert!((fp32 - want).abs() < 5e-5, "reference logits give NDCG@10 {fp32:.4}, dev_reference.txt says {want}");

    let model = common::load("minilm-debian:int8");
    let opts = ScoreOptions { raw: true, tokenize_threads: 2, ..Default::default() };
    let int8 = mean_ndcg(|_, q, docs| model.score(q, docs, opts, &mut || Ok(())).expect("score").0);
    eprintln!("NDCG@10 on 50 dev queries: fp32 {fp32:.4}, int8 {int8:.4}");
    assert!((int8 - fp32).abs() <= 0.005, "int8 NDCG@10 {int8:.4} vs fp32 {fp32:.4}");
}

/// The statically quantised graph (scripts/quantize_static.py, built by scripts/test.sh
/// into PG_RERANK_STATIC_INT8_DIR) ranks as well as fp32 too: it loses at most 0.005 of
/// NDCG@10 (the bound; on these 50 queries it gains a little), and its logits stay
/// as close to the fp32 reference as the dynamic model's (mean |diff| about 0.27 both).
#[test]
fn static_int8_variant_keeps_ndcg() {
    let reference: HashMap<String, Vec<f32>> =
        reference(50).into_iter().map(|(q, c)| (q, c.into_iter().map(|(_, l)| l).collect())).collect();
    let fp32 = mean_ndcg(|qid, _, _| reference[qid].clone());
    let model = common::load_from(&common::static_int8_root(), "minilm-debian:int8s");
    let opts = ScoreOptions { raw: true, tokenize_threads: 2, ..Default::default() };
    let (mut diff, mut pairs) = (0f64, 0usize);
    let int8s = mean_ndcg(|qid, q, docs| {
        let s = model.score(q, docs, opts, &mut || Ok(())).expect("score").0;
        diff += s.iter().zip(&reference[qid]).map(|(a, b)| (a - b).abs() as f64).sum::<f64>();
        pairs += s.len();
        s
    });
    let mean_diff = diff / pairs as f64;
    eprintln!("NDCG@10 on 50 dev queries: fp32 {fp32:.4}, static int8 {int8s:.4}; mean |logit - fp32| {mean_diff:.3}");
    assert!(fp32 - int8s <= 0.005, "static int8 NDCG@10 {int8s:.4} vs fp32 {fp32:.4}");
    assert!(mean_diff < 0.4, "static int8 logits are {mean_diff:.3} from fp32 on average");
}

#[test]
fn batching_restores_order() {
    let model = common::load("minilm-debian");
    let corpus = corpus();
    let queries = queries();
    let (qid, cands) = reference(1).remove(0);
    let docs: Vec<&str> = cands.iter().map(|(d, _)| corpus[d].as_str()).collect();
    let one = |limits| {
        model
            .score(&queries[&qid], &docs, ScoreOptions { limits, raw: false, ..Default::default() }, &mut || Ok(()))
            .expect("score")
    };
    let (alone, s1) = one(BatchLimits { max_tokens: 1, max_pairs: 1 });
    let (packed, s2) = one(BatchLimits { max_tokens: 2048, max_pairs: 64 });
    assert_eq!(s1.batches, docs.len());
    assert!(s2.batches < docs.len() / 4, "pairs were packed into few batches: {}", s2.batches);
    for (i, (a, b)) in alone.iter().zip(&packed).enumerate() {
        assert!((a - b).abs() < 1e-5, "pair {i}: alone {a}, batched {b}");
    }
    // Sigmoid scores are probabilities, in the order of the input documents.
    assert!(packed.iter().all(|s| (0.0..=1.0).contains(s)));
}

#[test]
fn one_megabyte_document_is_truncated() {
    let model = common::load("minilm-debian");
    let doc = "compression library for large archives ".repeat(26_000);
    assert!(doc.len() > 1_000_000);
    let e = model.encode("zlib compression", &doc).expect("encode");
    assert!(e.truncated);
    assert_eq!(e.ids.len(), 256);
    // A query too long for the document to fit at all falls back to longest-first.
    let e = model.encode(&"query ".repeat(2000), "short doc").expect("encode");
    assert!(e.truncated);
    assert_eq!(e.ids.len(), 256);
    let (s, stats) =
        model.score("zlib compression", &[&doc, "short"], ScoreOptions::default(), &mut || Ok(())).expect("score");
    assert_eq!(s.len(), 2);
    assert_eq!(stats.truncated, 1);
}

#[test]
fn cancellation_stops_between_batches() {
    let model = common::load("minilm-debian");
    let docs: Vec<String> = (0..64).map(|i| format!("document number {i} about packages")).collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let mut calls = 0;
    let opts = ScoreOptions { limits: BatchLimits { max_tokens: 64, max_pairs: 4 }, raw: false, ..Default::default() };
    let err = model
        .score("packages", &refs, opts, &mut || {
            calls += 1;
            if calls > 3 {
                Err(EngineError::new(ErrorKind::Cancelled, "cancelled"))
            } else {
                Ok(())
            }
        })
        .expect_err("cancelled");
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(calls, 4, "work stopped at the first check that said stop");
}

#[test]
fn parallel_tokenization_matches_serial() {
    let model = common::load("minilm-debian");
    let corpus = corpus();
    let queries = queries();
    let (qid, cands) = reference(1).remove(0);
    let pairs: Vec<(&str, &str)> = cands.iter().map(|(d, _)| (queries[&qid].as_str(), corpus[d].as_str())).collect();
    let serial = model.encode_many(&pairs, 1);
    let parallel = model.encode_many(&pairs, 4);
    assert_eq!(serial.len(), pairs.len());
    assert_eq!(parallel.len(), pairs.len());
    for (a, b) in serial.iter().zip(&parallel) {
        let (a, b) = (a.as_ref().expect("encode"), b.as_ref().expect("encode"));
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.type_ids, b.type_ids);
    }
}

/// What the background worker does: pairs of several queries in one length-sorted batch
/// plan, run with `run_rows`, give each query the scores it gets alone.
#[test]
fn pairs_of_several_queries_batched_together() {
    let model = common::load("minilm-debian");
    let corpus = corpus();
    let queries = queries();
    let requests = reference(3);
    let mut pairs = Vec::new();
    for (qid, cands) in &requests {
        for (d, _) in cands.iter().take(30) {
            pairs.push((queries[qid].as_str(), corpus[d].as_str()));
        }
    }
    let encoded: Vec<_> = model.encode_many(&pairs, 2).into_iter().map(|e| e.expect("encode")).collect();
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let mut together = vec![0f32; pairs.len()];
    for rows in batch::plan(&lengths, BatchLimits { max_tokens: 4096, max_pairs: 32 }) {
        let batch: Vec<_> = rows.iter().map(|&i| &encoded[i]).collect();
        for (&i, s) in rows.iter().zip(model.run_rows(&batch).expect("run")) {
            together[i] = s;
        }
    }
    // score_pairs does the same for callers that hold mixed pairs (bulk scoring).
    let opts = ScoreOptions { raw: true, tokenize_threads: 2, ..Default::default() };
    let (mixed, stats) = model.score_pairs(&pairs, opts, &mut || Ok(())).expect("score_pairs");
    assert_eq!(stats.pairs, pairs.len());
    for (i, (m, t)) in mixed.iter().zip(&together).enumerate() {
        assert!((m - t).abs() < 1e-5, "pair {i}: score_pairs {m}, run_rows {t}");
    }
    for (k, (qid, cands)) in requests.iter().enumerate() {
        let docs: Vec<&str> = cands.iter().take(30).map(|(d, _)| corpus[d].as_str()).collect();
        let opts = ScoreOptions { raw: true, ..Default::default() };
        let (alone, _) = model.score(&queries[qid], &docs, opts, &mut || Ok(())).expect("score");
        for (i, a) in alone.iter().enumerate() {
            let t = together[k * 30 + i];
            assert!((a - t).abs() < 1e-5, "{qid} pair {i}: alone {a}, batched with other queries {t}");
        }
    }
}

//! The trained MiniLM cross-encoder against the reference logits of
//! `shared/data/debian/dev_reference.tsv` (onnxruntime fp32 in Python), plus batching,
//! truncation and cancellation behaviour on real inputs.

mod common;

use pg_rerank_engine::{BatchLimits, EngineError, ErrorKind, ScoreOptions};
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
        let opts = ScoreOptions { limits: BatchLimits::default(), raw: true };
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

#[test]
fn batching_restores_order() {
    let model = common::load("minilm-debian");
    let corpus = corpus();
    let queries = queries();
    let (qid, cands) = reference(1).remove(0);
    let docs: Vec<&str> = cands.iter().map(|(d, _)| corpus[d].as_str()).collect();
    let one = |limits| {
        model.score(&queries[&qid], &docs, ScoreOptions { limits, raw: false }, &mut || Ok(())).expect("score")
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
    let opts = ScoreOptions { limits: BatchLimits { max_tokens: 64, max_pairs: 4 }, raw: false };
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

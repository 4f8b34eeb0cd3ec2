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

#[test]
fn batching_restores_order() {
    let model = common::load("minilm-debian");
    let corpus = corpus();
    let queries = queries();
    let (qid, cands) = reference(1).remove(0);
    let docs: Vec<&str> = cands.iter().map(|(d, _)| corpus[d].as_str()).collect();
    let one = |limits| {
        model.score(&queries[&qid], &docs, ScoreOptions { limits, raw: false, ..Default::default() }, &mut || Ok(())).expect("score")
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

//! Statically quantised int8 (scripts/quantize_static.py, built by scripts/test.sh into
//! PG_RERANK_STATIC_INT8_DIR): a pair's logit does not depend on the other pairs of its
//! batch. Dynamic quantisation (model_int8.onnx) scales activations over the whole batch,
//! padding included, so there it does; the second test keeps that as evidence.

mod common;

use pg_rerank_engine::{BatchLimits, Encoded, Model, ScoreOptions};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Real pairs of the dev reference: the first `n` queries' 100 candidates each.
fn dev_pairs(n: usize) -> Vec<(String, String)> {
    let data = common::shared().join("data/debian");
    let field = |l: &str, k: &str| -> String {
        let v: Value = serde_json::from_str(l).expect("json");
        v[k].as_str().expect("field").to_string()
    };
    let rows: Vec<(String, String)> = std::fs::read_to_string(data.join("dev_reference.tsv"))
        .expect("tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    let mut qids: Vec<&str> = Vec::new();
    for (q, _) in &rows {
        if qids.last() != Some(&q.as_str()) {
            qids.push(q);
        }
    }
    let keep: HashSet<&str> = qids.into_iter().take(n).collect();
    let wanted: HashSet<&str> =
        rows.iter().filter(|(q, _)| keep.contains(q.as_str())).map(|(_, d)| d.as_str()).collect();
    let corpus: HashMap<String, String> = std::fs::read_to_string(data.join("corpus.jsonl"))
        .expect("corpus")
        .lines()
        .map(|l| (field(l, "id"), l))
        .filter(|(id, _)| wanted.contains(id.as_str()))
        .map(|(id, l)| (id, field(l, "text")))
        .collect();
    let queries: HashMap<String, String> = std::fs::read_to_string(data.join("queries_dev.jsonl"))
        .expect("queries")
        .lines()
        .map(|l| (field(l, "id"), field(l, "text")))
        .collect();
    rows.iter()
        .filter(|(q, _)| keep.contains(q.as_str()))
        .map(|(q, d)| (queries[q].clone(), corpus[d].clone()))
        .collect()
}

/// The largest |logit alone - logit in a batch| over 24 target pairs of every length, each
/// scored alone, then in batches of 3 (a short and a long neighbour), of 16 (neighbours of
/// mixed lengths, the target first, in the middle or last), and through `score_pairs` over
/// all the pairs with the default batch limits.
fn max_batch_effect(model: &Model) -> f32 {
    let pairs = dev_pairs(3);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(q, d)| (q.as_str(), d.as_str())).collect();
    let enc: Vec<Encoded> = model.encode_many(&refs, 2).into_iter().map(|e| e.expect("encode")).collect();
    let mut by_len: Vec<usize> = (0..enc.len()).collect();
    by_len.sort_by_key(|&i| (enc[i].ids.len(), i));
    let (shortest, longest) = (by_len[0], by_len[by_len.len() - 1]);
    assert!(enc[shortest].ids.len() < 40 && enc[longest].ids.len() == 256, "neighbours of very different lengths");
    let targets: Vec<usize> = (0..24).map(|k| by_len[k * (by_len.len() - 1) / 23]).collect();
    let alone: Vec<f32> = targets.iter().map(|&t| model.run_rows(&[&enc[t]]).expect("run")[0]).collect();
    let mut worst = 0f32;
    let mut check = |what: &str, k: usize, got: f32| {
        let d = (got - alone[k]).abs();
        assert!(d.is_finite(), "{what}: {got}");
        worst = worst.max(d);
    };
    for (k, &t) in targets.iter().enumerate() {
        let three = [&enc[shortest], &enc[t], &enc[longest]];
        check("batch of 3", k, model.run_rows(&three).expect("run")[1]);
        // 15 neighbours spread over every length, the target at position k % 16.
        let mut sixteen: Vec<&Encoded> = (0..15).map(|j| &enc[by_len[(j * 37 + k * 11) % by_len.len()]]).collect();
        let at = k % 16;
        sixteen.insert(at, &enc[t]);
        check("batch of 16", k, model.run_rows(&sixteen).expect("run")[at]);
    }
    // The engine's own batching over all 300 pairs (length-sorted, default limits), and one
    // pair per batch.
    for limits in [BatchLimits::default(), BatchLimits { max_tokens: 4096, max_pairs: 7 }] {
        let opts = ScoreOptions { limits, raw: true, tokenize_threads: 2 };
        let (all, _) = model.score_encoded(&enc, opts, &mut || Ok(())).expect("score");
        for (k, &t) in targets.iter().enumerate() {
            check("score_encoded", k, all[t]);
        }
    }
    worst
}

#[test]
fn static_int8_scores_do_not_depend_on_the_batch() {
    let model = common::load_from(&common::static_int8_root(), "minilm-debian:int8s");
    let worst = max_batch_effect(&model);
    eprintln!("static int8: max |logit alone - logit in a batch| = {worst:.2e}");
    assert!(worst <= 1e-6, "static int8: a pair's logit moved by {worst} with its batch");
}

/// Evidence for the test above: the same check finds the dynamic model's logits moving.
#[test]
fn dynamic_int8_scores_depend_on_the_batch() {
    let model = common::load("minilm-debian:int8");
    let worst = max_batch_effect(&model);
    eprintln!("dynamic int8: max |logit alone - logit in a batch| = {worst:.2e}");
    assert!(worst > 1e-2, "dynamic int8 moved only {worst}: is model_int8.onnx still dynamically quantised?");
}

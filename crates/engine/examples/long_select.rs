//! Window preselection on `long_dev.jsonl` (the dev candidates buried in unrelated text):
//! every window of the first QUERIES queries' 100 candidates is scored once by the engine,
//! then each document is folded over the windows `pg_rerank.chunk_select` = k would give the
//! model (k = 0: every window, today's path), and NDCG@10 (binary qrels) is computed for
//! each k, with the pairs per document each k scores. Prints one JSON object.
//!
//! cargo run --release -p pg_rerank_engine --example long_select -- SHARED QUERIES THREADS [ONNX_FILE [SKIP]]
//!
//! SKIP: leave out the first SKIP queries (to check a choice made on them on the others).

use pg_rerank_engine::{chunk, preselect, runtime, ChunkOptions, Model, ScoreOptions, SessionOptions};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shared = PathBuf::from(&args[1]);
    let n: usize = args[2].parse().expect("queries");
    let threads: usize = args[3].parse().expect("threads");
    let onnx_file = args.get(4).cloned().unwrap_or_else(|| "model.onnx".into());
    let skip: usize = args.get(5).map_or(0, |s| s.parse().expect("skip"));
    let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or("/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0".into());
    let env = runtime::init(std::path::Path::new(&ort)).expect("ONNX Runtime");
    let opts = SessionOptions { intra_threads: threads, onnx_file, ..Default::default() };
    let model = Model::load(env, "minilm-debian", &shared.join("models/minilm-debian"), &opts).expect("model");
    let data = shared.join("data/debian");

    let read = |f: &str| std::fs::read_to_string(data.join(f)).expect("readable");
    let queries: HashMap<String, String> = read("queries_dev.jsonl")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (v["id"].as_str().expect("id").into(), v["text"].as_str().expect("text").into())
        })
        .collect();
    let mut relevant: HashMap<String, HashSet<String>> = HashMap::new();
    for l in read("qrels_dev.tsv").lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 3 && f[2] != "0" {
            relevant.entry(f[0].into()).or_default().insert(f[1].into());
        }
    }
    // (query id, [(first-stage rank, doc id, text)]), in file order, the first n queries.
    let mut cands: Vec<(String, Vec<(u64, String, String)>)> = Vec::new();
    for l in read("long_dev.jsonl").lines() {
        let v: Value = serde_json::from_str(l).expect("json");
        let q = v["query_id"].as_str().expect("query_id");
        if cands.last().is_none_or(|(lq, _)| lq != q) {
            if cands.len() == skip + n {
                break;
            }
            cands.push((q.into(), Vec::new()));
        }
        let row = (v["first_stage_rank"].as_u64().expect("rank"), v["doc_id"].as_str().expect("doc").into(), v["text"].as_str().expect("text").into());
        cands.last_mut().expect("query").1.push(row);
    }

    cands.drain(..skip.min(cands.len()));
    let ks = [0usize, 1, 2, 3, 4, 6];
    let score_opts = ScoreOptions { raw: true, tokenize_threads: threads, ..Default::default() };
    let all = ChunkOptions { select: 0, ..Default::default() };
    let (mut ndcg, mut pairs) = (vec![0.0f64; ks.len()], vec![0usize; ks.len()]);
    let (mut docs, mut scored, mut seconds) = (0usize, 0usize, 0.0f64);
    for (qid, c) in &mut cands {
        c.sort_by_key(|x| x.0);
        let q = queries[qid.as_str()].as_str();
        let input: Vec<(&str, &str)> = c.iter().map(|x| (q, x.2.as_str())).collect();
        let x = chunk::expand(model.splitter(), &input, all, &mut || Ok(())).expect("split");
        let t = Instant::now();
        let s = model.score_pairs(&x.pairs, score_opts, &mut || Ok(())).expect("score").0;
        seconds += t.elapsed().as_secs_f64();
        scored += x.pairs.len();
        docs += c.len();
        let rel = relevant.get(qid.as_str()).cloned().unwrap_or_default();
        for (j, &k) in ks.iter().enumerate() {
            let doc_scores: Vec<f32> = x
                .spans
                .iter()
                .map(|span| {
                    let windows: Vec<&str> = x.pairs[span.clone()].iter().map(|p| p.1).collect();
                    let kept = preselect::select(q, &windows, k);
                    pairs[j] += kept.len();
                    kept.iter().map(|&i| s[span.start + i]).fold(f32::NAN, f32::max)
                })
                .collect();
            let mut order: Vec<usize> = (0..c.len()).collect();
            order.sort_by(|&a, &b| doc_scores[b].total_cmp(&doc_scores[a]).then(a.cmp(&b)));
            let gain = |i: usize| 1.0 / ((i + 2) as f64).log2();
            let dcg: f64 = order.iter().take(10).enumerate().filter(|(_, &d)| rel.contains(&c[d].1)).map(|(i, _)| gain(i)).sum();
            let idcg: f64 = (0..rel.len().min(10)).map(gain).sum();
            ndcg[j] += if idcg > 0.0 { dcg / idcg } else { 0.0 };
        }
        eprintln!("{qid}: {} windows", x.pairs.len());
    }
    let per_k: Vec<Value> = ks
        .iter()
        .enumerate()
        .map(|(j, &k)| json!({"chunk_select": k, "ndcg10": ndcg[j] / cands.len() as f64, "pairs_per_doc": pairs[j] as f64 / docs as f64}))
        .collect();
    let out = json!({"queries": cands.len(), "documents": docs, "windows_scored": scored,
        "model_seconds": seconds, "pairs_per_second": scored as f64 / seconds, "threads": threads, "per_k": per_k});
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}

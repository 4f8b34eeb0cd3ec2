//! The engine alone on the benchmark inputs: the 100 first-stage candidates of each dev
//! query (shared/data/debian/dev_reference.tsv), scored per query as one call, as
//! `rerank(q, 100 docs)` does. Prints one JSON object: medians over every call of the
//! whole call, its tokenization and its inference, and pairs/s.
//!
//! cargo run --release -p pg_rerank_engine --example bench_engine -- \
//!     SHARED ONNX_FILE THREADS QUERIES REPEAT
//!
//! Bulk mode scores the pairs of a JSON-lines file (`["query", "doc"]` per line) with
//! `score_pairs`, CHUNK pairs per call as `rerank_pairs` gets them from SQL, and prints
//! pairs/s:
//!
//!     ... bench_engine SHARED ONNX_FILE THREADS --pairs FILE CHUNK

use pg_rerank_engine::{runtime, BatchLimits, Model, ScoreOptions, SessionOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shared = PathBuf::from(&args[1]);
    let file = args[2].clone();
    let threads: usize = args[3].parse().expect("threads");
    let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or("/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0".into());
    let env = runtime::init(std::path::Path::new(&ort)).expect("ONNX Runtime");
    // THREADS in total: one session with THREADS threads, or BENCH_SESSIONS sessions
    // sharing them.
    let sessions: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let opts = SessionOptions {
        intra_threads: (threads / sessions).max(1),
        sessions,
        onnx_file: file.clone(),
        spin: std::env::var("BENCH_SPIN").is_ok_and(|v| v == "1"),
        ..Default::default()
    };
    let model = Model::load(env, "minilm-debian", &shared.join("models/minilm-debian"), &opts).expect("model");
    // Batch limits: the engine's defaults unless BENCH_MAX_TOKENS / BENCH_MAX_PAIRS say.
    let limit = |var: &str, default: usize| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let d = BatchLimits::default();
    let limits = BatchLimits {
        max_tokens: limit("BENCH_MAX_TOKENS", d.max_tokens),
        max_pairs: limit("BENCH_MAX_PAIRS", d.max_pairs),
    };
    let score_opts = ScoreOptions { raw: true, tokenize_threads: threads, limits };
    if args[4] == "--pairs" {
        return bulk(&model, score_opts, &args[5], args[6].parse().expect("chunk"));
    }
    let queries: usize = args[4].parse().expect("queries");
    let repeat: usize = args[5].parse().expect("repeat");

    let data = shared.join("data/debian");
    let text = |line: &str, key: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        v[key].as_str().expect("field").to_string()
    };
    let corpus: HashMap<String, String> = std::fs::read_to_string(data.join("corpus.jsonl"))
        .expect("corpus")
        .lines()
        .map(|l| (text(l, "id"), text(l, "text")))
        .collect();
    let qtext: HashMap<String, String> = std::fs::read_to_string(data.join("queries_dev.jsonl"))
        .expect("queries")
        .lines()
        .map(|l| (text(l, "id"), text(l, "text")))
        .collect();
    let mut cands: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    for line in std::fs::read_to_string(data.join("dev_reference.tsv")).expect("reference").lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if cands.last().is_none_or(|(q, _)| q != f[0]) {
            cands.push((f[0].to_string(), Vec::new()));
        }
        cands.last_mut().expect("query").1.push((f[2].parse().expect("rank"), f[1].to_string()));
    }
    let inputs: Vec<(String, Vec<String>)> = cands
        .into_iter()
        .take(queries)
        .map(|(q, mut c)| {
            c.sort();
            (qtext[&q].clone(), c.into_iter().map(|(_, d)| corpus[&d].clone()).collect())
        })
        .collect();

    let (mut total, mut tok, mut inf) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0usize;
    let mut pairs = 0usize;
    let (q0, d0) = &inputs[0];
    let warm: Vec<&str> = d0.iter().map(String::as_str).collect();
    model.score(q0, &warm, score_opts, &mut || Ok(())).expect("warm-up");
    let started = Instant::now();
    for _ in 0..repeat {
        for (q, docs) in &inputs {
            let t0 = Instant::now();
            let pairs_in: Vec<(&str, &str)> = docs.iter().map(|d| (q.as_str(), d.as_str())).collect();
            let enc: Vec<_> = model.encode_many(&pairs_in, threads).into_iter().map(|e| e.expect("encode")).collect();
            let t1 = Instant::now();
            let (_, st) = model.score_encoded(&enc, score_opts, &mut || Ok(())).expect("score");
            let t2 = Instant::now();
            tok.push((t1 - t0).as_secs_f64() * 1e3);
            inf.push((t2 - t1).as_secs_f64() * 1e3);
            total.push((t2 - t0).as_secs_f64() * 1e3);
            tokens += st.tokens;
            pairs += st.pairs;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let latencies = total.clone();
    println!(
        "{}",
        serde_json::json!({
            "system": "pg_rerank engine", "file": file, "threads": threads, "calls": total.len(),
            "latencies_ms": latencies, "pairs": pairs, "wall_s": wall,
            "median_ms": median(&mut total), "tokenize_median_ms": median(&mut tok),
            "inference_median_ms": median(&mut inf), "pairs_per_s": pairs as f64 / wall,
            "tokens_per_pair": tokens as f64 / pairs as f64,
        })
    );
}

fn bulk(model: &Model, opts: ScoreOptions, path: &str, chunk: usize) {
    let pairs: Vec<(String, String)> = std::fs::read_to_string(path)
        .expect("pairs file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("[query, doc]"))
        .collect();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(q, d)| (q.as_str(), d.as_str())).collect();
    let started = Instant::now();
    let mut tokens = 0;
    for part in refs.chunks(chunk) {
        let (_, st) = model.score_pairs(part, opts, &mut || Ok(())).expect("score");
        tokens += st.tokens;
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "system": "pg_rerank engine (bulk)", "pairs": refs.len(), "seconds": wall,
            "pairs_per_s": refs.len() as f64 / wall, "tokens_per_pair": tokens as f64 / refs.len() as f64,
        })
    );
}

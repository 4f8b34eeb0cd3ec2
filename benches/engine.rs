//! Engine micro-benchmarks (criterion) on the shared MiniLM cross-encoder and corpus:
//! tokenizing the 100 candidates of one call (one thread and two), planning batches, and
//! one inference run by batch size and sequence length.
//!
//!     cargo bench -p pg_rerank_engine --bench engine
//!
//! PG_RERANK_SHARED (default ../shared) and ORT_DYLIB_PATH locate the data and ONNX
//! Runtime, as for the engine's tests.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pg_rerank_engine::{batch, runtime, BatchLimits, Encoded, Model, SessionOptions};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

fn shared() -> PathBuf {
    std::env::var_os("PG_RERANK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn model(threads: usize) -> Model {
    let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or("/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0".into());
    let env = runtime::init(std::path::Path::new(&ort)).expect("ONNX Runtime");
    let dir = shared().join("models/minilm-debian");
    Model::load(env, "minilm-debian", &dir, &SessionOptions { intra_threads: threads, ..Default::default() })
        .expect("model")
}

/// The first query of the dev set and the first 100 corpus documents.
fn inputs() -> (String, Vec<String>) {
    let data = shared().join("data/debian");
    let field = |line: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        v["text"].as_str().expect("text").to_string()
    };
    let query = std::fs::read_to_string(data.join("queries_dev.jsonl")).expect("queries");
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).expect("corpus");
    (field(query.lines().next().expect("a query")), corpus.lines().take(100).map(field).collect())
}

fn tokenize(c: &mut Criterion) {
    let m = model(1);
    let (q, docs) = inputs();
    let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (q.as_str(), d.as_str())).collect();
    let mut g = c.benchmark_group("tokenize_100_pairs");
    g.throughput(Throughput::Elements(pairs.len() as u64));
    for threads in [1, 2] {
        g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &t| {
            b.iter(|| black_box(m.encode_many(black_box(&pairs), t)))
        });
    }
    g.finish();
}

fn plan(c: &mut Criterion) {
    let m = model(1);
    let (q, docs) = inputs();
    let lengths: Vec<usize> = docs.iter().map(|d| m.encode(&q, d).expect("encode").ids.len()).collect();
    c.bench_function("batch_plan_100_pairs", |b| {
        b.iter(|| black_box(batch::plan(black_box(&lengths), BatchLimits::default())))
    });
}

fn inference(c: &mut Criterion) {
    let m = model(2);
    let (q, docs) = inputs();
    // A real pair cut or repeated to exactly `len` tokens.
    let base = m.encode(&q, &docs.concat()).expect("encode");
    let row = |len: usize| Encoded {
        ids: base.ids.iter().copied().cycle().take(len).collect(),
        type_ids: base.type_ids.iter().copied().cycle().take(len).collect(),
        truncated: false,
    };
    let mut g = c.benchmark_group("inference_2_threads");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for len in [32, 128, 256] {
        for rows in [1, 8, 32] {
            let batch: Vec<Encoded> = (0..rows).map(|_| row(len)).collect();
            let refs: Vec<&Encoded> = batch.iter().collect();
            g.throughput(Throughput::Elements(rows as u64));
            g.bench_with_input(BenchmarkId::new(format!("len{len}"), rows), &refs, |b, refs| {
                b.iter(|| black_box(m.run_rows(refs).expect("run")))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, tokenize, plan, inference);
criterion_main!(benches);

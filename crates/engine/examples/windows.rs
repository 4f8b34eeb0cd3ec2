//! The windows the engine scores for each (query, document) pair, for benchmarks that give
//! another system the same model inputs. Reads JSON lines `{"query": ..., "doc": ...}` on
//! stdin and prints, per line, the JSON list of window texts the model reads under
//! `pg_rerank.long_documents = chunk` with `chunk_select` = SELECT (0: every window).
//! Needs only the model's tokenizer.json and configuration.
//!
//! cargo run --release -p pg_rerank_engine --example windows -- MODEL_DIR SELECT < pairs.jsonl

use pg_rerank_engine::{chunk, ChunkOptions, Splitter};
use serde_json::Value;
use std::io::{BufRead, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let select: usize = args.get(2).map_or(0, |s| s.parse().expect("select"));
    let splitter = Splitter::load("model", &dir).expect("tokenizer");
    let opts = ChunkOptions { select, ..Default::default() };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let v: Value = serde_json::from_str(&line.expect("stdin")).expect("json");
        let (q, d) = (v["query"].as_str().expect("query"), v["doc"].as_str().expect("doc"));
        let x = chunk::expand(&splitter, &[(q, d)], opts, &mut || Ok(())).expect("split");
        let windows: Vec<&str> = x.pairs.iter().map(|p| p.1).collect();
        writeln!(out, "{}", serde_json::to_string(&windows).expect("json")).expect("stdout");
    }
}

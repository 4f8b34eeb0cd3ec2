//! Our tokens and scores against PyTorch's, for every encoder family in
//! `shared/models/tiny`, one pair at a time and in padded batches.

mod common;

use pg_rerank_engine::{BatchLimits, ErrorKind, ScoreOptions};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

struct Reference {
    query: String,
    doc: String,
    input_ids: Vec<i64>,
    token_type_ids: Option<Vec<i64>>,
    score: f32,
}

fn references(family: &str) -> Vec<Reference> {
    let path = common::shared().join("models/tiny").join(family).join("reference.jsonl");
    let text = std::fs::read_to_string(&path).expect("reference.jsonl readable");
    let ids = |v: &Value| v.as_array().expect("array").iter().map(|x| x.as_i64().expect("int")).collect::<Vec<_>>();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            Reference {
                query: v["query"].as_str().expect("query").to_string(),
                doc: v["doc"].as_str().expect("doc").to_string(),
                input_ids: ids(&v["input_ids"]),
                token_type_ids: v.get("token_type_ids").map(ids),
                score: v["score_torch"].as_f64().expect("score") as f32,
            }
        })
        .collect()
}

fn no_cancel() -> impl FnMut() -> pg_rerank_engine::Result<()> {
    || Ok(())
}

/// Returns the largest score difference seen, after asserting every pair.
fn check_family(family: &str) -> f32 {
    let model = common::load(&format!("tiny/{family}"));
    let refs = references(family);
    assert!(refs.len() >= 20, "{family}: expected 20 reference pairs");

    // Same token ids as the Python tokenizer, truncation included.
    let mut encoded = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let e = model.encode(&r.query, &r.doc).expect("encode");
        assert_eq!(e.ids, r.input_ids, "{family} pair {i}: token ids differ");
        if let Some(t) = &r.token_type_ids {
            assert_eq!(&e.type_ids, t, "{family} pair {i}: token type ids differ");
        }
        encoded.push(e);
    }

    // One pair per batch, then everything in padded batches: both match the reference.
    let mut worst = 0f32;
    let raw = |limits| ScoreOptions { limits, raw: true, ..Default::default() };
    let single = BatchLimits { max_tokens: 1, max_pairs: 1 };
    let batched = BatchLimits { max_tokens: 4096, max_pairs: 8 };
    for limits in [single, batched] {
        let (scores, stats) = model.score_encoded(&encoded, raw(limits), &mut no_cancel()).expect("score");
        assert_eq!(stats.pairs, refs.len());
        for (i, (s, r)) in scores.iter().zip(&refs).enumerate() {
            let d = (s - r.score).abs();
            worst = worst.max(d);
            assert!(d < TOLERANCE, "{family} pair {i}: {s} vs reference {} ({limits:?})", r.score);
        }
    }
    eprintln!("{family}: {} pairs, max |score - torch| = {worst:.2e}", refs.len());
    worst
}

#[test]
fn bert_matches_pytorch() {
    check_family("bert");
}

#[test]
fn xlm_roberta_matches_pytorch() {
    check_family("xlm-roberta");
}

#[test]
fn deberta_v2_matches_pytorch() {
    check_family("deberta-v2");
}

#[test]
fn modernbert_matches_pytorch() {
    check_family("modernbert");
}

#[test]
fn qwen3_reranker_matches_pytorch() {
    check_family("qwen3");
}

#[test]
fn families_and_lengths_are_discovered() {
    let bert = common::load("tiny/bert");
    assert_eq!(bert.config().family.name(), "bert");
    assert_eq!(bert.config().max_length, 256);
    assert_eq!(bert.input_names(), vec!["input_ids", "attention_mask", "token_type_ids"]);
    let xlmr = common::load("tiny/xlm-roberta");
    assert_eq!(xlmr.config().family.name(), "xlm-roberta");
    assert_eq!(xlmr.config().max_length, 512);
    assert_eq!(xlmr.input_names(), vec!["input_ids", "attention_mask"]);
    assert_eq!(common::load("tiny/modernbert").config().family.name(), "modernbert");
    assert_eq!(common::load("tiny/deberta-v2").config().family.name(), "deberta-v2");
    let qwen = common::load("tiny/qwen3");
    assert_eq!(qwen.config().family.name(), "qwen3");
    assert_eq!(qwen.config().max_length, 1024);
    assert!(qwen.config().prompt.is_some());
}

/// A per-call instruction gives what a model whose `reranker_prompt.json` holds that
/// instruction gives, in the same batches; a model without a prompt refuses one.
#[test]
fn an_instruction_argument_equals_the_models_own() {
    let instruction = "Given a package search query, find the Debian package that does it";
    let shared = common::shared().join("models/tiny/qwen3");
    let root = std::env::temp_dir().join(format!("pg_rerank_instruction_{}", std::process::id()));
    let dir = root.join("qwen3-instructed");
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in std::fs::read_dir(&shared).expect("tiny/qwen3") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, dir.join(f.file_name().expect("name"))).expect("copy");
    }
    let path = dir.join("reranker_prompt.json");
    let mut prompt: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    prompt["instruction"] = instruction.into();
    std::fs::write(&path, serde_json::to_vec(&prompt).expect("json")).expect("write");

    let plain = common::load("tiny/qwen3");
    let instructed = common::load_from(&root, "qwen3-instructed");
    let pairs = [
        ("compression library", "zlib implements the deflate compression method"),
        ("chess", "GNU Chess is a chess-playing program"),
        ("mail filter", "a long description of a mail filter that learns from the user's own mail"),
    ];
    let opts = ScoreOptions { raw: true, ..Default::default() };
    let own = instructed.score_pairs(&pairs, opts, &mut || Ok(())).expect("score").0;
    let given = plain.score_pairs_with(&pairs, opts, Some(instruction), &mut || Ok(())).expect("score").0;
    let default = plain.score_pairs(&pairs, opts, &mut || Ok(())).expect("score").0;
    std::fs::remove_dir_all(&root).ok();
    assert_eq!(given, own, "the argument and the file give the same prompt");
    assert!(given.iter().zip(&default).any(|(a, b)| (a - b).abs() > 1e-4), "{given:?} vs {default:?}");
    // The model's own instruction passed explicitly is the default.
    let spelled: String = prompt_instruction(&shared);
    assert_eq!(plain.score_pairs_with(&pairs, opts, Some(&spelled), &mut || Ok(())).expect("score").0, default);
    // A window for a long document leaves room for a longer instruction.
    let splitter = plain.splitter();
    assert!(splitter.takes_instruction());
    let long = "word ".repeat(200);
    assert!(splitter.room_with("q", Some(&long)).expect("room") < splitter.room("q").expect("room"));

    let bert = common::load("tiny/bert");
    assert!(!bert.takes_instruction() && !bert.splitter().takes_instruction());
    let e = bert.score_pairs_with(&pairs, opts, Some(instruction), &mut || Ok(())).expect_err("refused");
    assert_eq!(e.kind, ErrorKind::NoInstruction);
    assert!(e.message.contains("takes no instruction"), "{e}");
}

fn prompt_instruction(dir: &std::path::Path) -> String {
    let prompt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reranker_prompt.json")).expect("read")).expect("json");
    prompt["instruction"].as_str().expect("instruction").to_string()
}

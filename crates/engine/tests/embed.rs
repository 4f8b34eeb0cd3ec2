//! The bi-encoder (`shared/models/all-minilm-l6-v2`) against sentence-transformers' own
//! vectors of the Debian corpus, batching that changes nothing, prompts, and clear errors
//! for directories that are not bi-encoders.

mod common;

use pg_rerank_engine::{is_bi_encoder, runtime, BatchLimits, Embedder, ErrorKind, Pooling, SessionOptions, TextKind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const MODEL: &str = "all-minilm-l6-v2";

fn model_dir() -> PathBuf {
    common::shared().join("models").join(MODEL)
}

fn load_at(dir: &Path, sessions: usize) -> pg_rerank_engine::Result<Embedder> {
    let env = runtime::init(&common::ort_lib()).expect("ONNX Runtime loads");
    let opts = SessionOptions { intra_threads: 2, sessions, ..Default::default() };
    Embedder::load(env, MODEL, dir, &opts)
}

/// One embedder shared by the tests of this file.
fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| load_at(&model_dir(), 1).expect("embedder loads"))
}

fn no_cancel() -> impl FnMut() -> pg_rerank_engine::Result<()> {
    || Ok(())
}

/// The `text` field of the first `n` lines of a JSON-lines file.
fn texts(file: &str, n: usize) -> Vec<String> {
    let path = common::shared().join("data/debian").join(file);
    let all = std::fs::read_to_string(&path).expect("jsonl readable");
    all.lines()
        .take(n)
        .map(|l| serde_json::from_str::<Value>(l).expect("json line")["text"].as_str().expect("text").to_string())
        .collect()
}

/// A C-order float32 or float16 `.npy` file: (rows, columns, the first `max_rows` rows).
fn read_npy(path: &Path, max_rows: usize) -> (usize, usize, Vec<Vec<f32>>) {
    let bytes = std::fs::read(path).expect("npy readable");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ascii header");
    let field = |key: &str| {
        let at = header.find(&format!("'{key}':")).unwrap_or_else(|| panic!("no {key} in {header}"));
        header[at + key.len() + 3..].trim_start()
    };
    let descr = field("descr");
    let f16 = if descr.starts_with("'<f2'") {
        true
    } else if descr.starts_with("'<f4'") {
        false
    } else {
        panic!("unsupported dtype in {header}")
    };
    assert!(field("fortran_order").starts_with("False"), "fortran order in {header}");
    let shape = field("shape");
    let shape = &shape[1..shape.find(')').expect("shape tuple")];
    let dims: Vec<usize> =
        shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().expect("dim")).collect();
    let [rows, cols] = dims[..] else { panic!("expected a 2-d array, got {dims:?}") };
    let data = &bytes[start + header_len..];
    let width = if f16 { 2 } else { 4 };
    assert_eq!(data.len(), rows * cols * width, "npy data size");
    let value = |i: usize| {
        let b = &data[i * width..(i + 1) * width];
        if f16 {
            half::f16::from_le_bytes([b[0], b[1]]).to_f32()
        } else {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    };
    let out = (0..rows.min(max_rows)).map(|r| (0..cols).map(|c| value(r * cols + c)).collect()).collect();
    (rows, cols, out)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Embeds `texts` and compares each vector with `reference`; returns (min cosine, max |diff|).
fn compare(texts: &[String], kind: TextKind, reference: &[Vec<f32>], min_cos: f64, max_diff: f32) -> (f64, f32) {
    let e = embedder();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let limits = BatchLimits { max_tokens: 8192, max_pairs: 32 };
    let (vectors, stats) = e.embed(&refs, kind, limits, &mut no_cancel()).expect("embed");
    assert_eq!(vectors.len(), texts.len());
    assert_eq!(stats.texts, texts.len());
    let (mut worst_cos, mut worst_diff) = (1f64, 0f32);
    for (i, (v, r)) in vectors.iter().zip(reference).enumerate() {
        assert_eq!(v.len(), r.len(), "row {i}: width");
        let c = cosine(v, r);
        let d = max_abs_diff(v, r);
        worst_cos = worst_cos.min(c);
        worst_diff = worst_diff.max(d);
        assert!(c >= min_cos && d <= max_diff, "{kind:?} row {i}: cosine {c}, max |diff| {d}: {:?}", texts[i]);
    }
    eprintln!(
        "{kind:?}: {} texts ({} truncated, {} tokens, {} batches): min cosine {worst_cos:.9}, max |diff| {worst_diff:.3e}",
        texts.len(),
        stats.truncated,
        stats.tokens,
        stats.batches
    );
    (worst_cos, worst_diff)
}

#[test]
fn queries_match_sentence_transformers() {
    let (rows, cols, reference) = read_npy(&common::shared().join("data/debian/query_emb_dev.npy"), 500);
    assert_eq!((rows, cols), (500, 384));
    let queries = texts("queries_dev.jsonl", 500);
    assert_eq!(queries.len(), 500);
    compare(&queries, TextKind::Query, &reference, 0.9999, 1e-4);
}

#[test]
fn documents_match_sentence_transformers() {
    const N: usize = 300;
    let (rows, cols, reference) = read_npy(&common::shared().join("data/debian/doc_emb.npy"), N);
    assert_eq!((rows, cols), (58018, 384));
    let docs = texts("corpus.jsonl", N);
    // The reference is float16: within its rounding (2^-11 relative, values below 1).
    compare(&docs, TextKind::Document, &reference, 0.9999, 2e-3);
}

#[test]
fn what_the_directory_says() {
    let e = embedder();
    assert_eq!(e.dim(), 384);
    assert_eq!(e.max_length(), 256, "sentence_bert_config.json, not tokenizer.json's 128");
    assert_eq!(e.pooling(), Pooling::Mean);
    assert!(e.normalizes());
    assert!(!e.graph_pools());
    assert_eq!(e.prompt(TextKind::Query), "");
    assert_eq!(e.input_names(), vec!["input_ids", "attention_mask", "token_type_ids"]);
    assert!(e.memory_bytes() > 80_000_000);
    assert_eq!(e.name(), MODEL);
    assert!(is_bi_encoder(&model_dir()));
    assert!(!is_bi_encoder(&common::shared().join("models/minilm-debian")), "a cross-encoder");
    assert!(!is_bi_encoder(&common::shared().join("models/does-not-exist")));
}

#[test]
fn empty_and_overlong_texts() {
    let e = embedder();
    let empty = e.encode("", TextKind::Query).expect("encode");
    assert_eq!(empty.ids, vec![101, 102], "[CLS] [SEP]");
    assert!(!empty.truncated);
    let blank = e.encode("  \n ", TextKind::Document).expect("encode");
    assert_eq!(blank.ids, empty.ids, "white space is stripped");

    let long = "debian package ".repeat(400);
    let enc = e.encode(&long, TextKind::Document).expect("encode");
    assert_eq!(enc.ids.len(), 256);
    assert_eq!(enc.ids[0], 101);
    assert_eq!(enc.ids[255], 102, "truncated, then the special tokens");
    assert!(enc.truncated);
    let short = e.encode("debian package", TextKind::Document).expect("encode");
    assert!(!short.truncated);

    let (v, stats) = e.embed(&["", &long, "x"], TextKind::Document, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    assert_eq!(stats.truncated, 1);
    assert_eq!(stats.tokens, 2 + 256 + 3);
    for x in &v {
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5 && x.iter().all(|a| a.is_finite()), "unit vector, norm {norm}");
    }
}

#[test]
fn batching_changes_nothing() {
    let mut all = texts("queries_dev.jsonl", 24);
    all.extend(texts("corpus.jsonl", 8));
    all.push(String::new());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let e = embedder();
    let one_by_one: Vec<Vec<f32>> = refs
        .iter()
        .map(|t| {
            let (v, _) = e.embed(&[t], TextKind::Document, BatchLimits::CPU, &mut no_cancel()).expect("embed");
            v.into_iter().next().expect("one vector")
        })
        .collect();
    let small = BatchLimits { max_tokens: 600, max_pairs: 5 };
    let (together, stats) = e.embed(&refs, TextKind::Document, small, &mut no_cancel()).expect("embed");
    assert!(stats.batches > 5, "{stats:?}");
    // Two sessions running batches side by side give the same vectors too.
    let two = load_at(&model_dir(), 2).expect("two sessions");
    let (parallel, _) = two.embed(&refs, TextKind::Document, small, &mut no_cancel()).expect("embed");
    // And rows gathered by hand into one padded batch.
    let encoded: Vec<_> = refs.iter().map(|t| e.encode(t, TextKind::Document).expect("encode")).collect();
    let rows: Vec<_> = encoded.iter().collect();
    let by_hand = e.run_rows(&rows).expect("run_rows");
    let mut worst = 0f32;
    for (i, a) in one_by_one.iter().enumerate() {
        for other in [&together[i], &parallel[i], &by_hand[i]] {
            let d = max_abs_diff(a, other);
            worst = worst.max(d);
            assert!(d <= 1e-5, "text {i}: {d}");
        }
    }
    eprintln!("batched vs one at a time: max |diff| {worst:.2e}");
}

#[test]
fn cancel_stops_between_batches() {
    let e = embedder();
    let q = texts("queries_dev.jsonl", 20);
    let refs: Vec<&str> = q.iter().map(String::as_str).collect();
    let mut calls = 0;
    let mut check = || {
        calls += 1;
        if calls > 2 {
            Err(pg_rerank_engine::EngineError::new(ErrorKind::Cancelled, "canceling statement due to user request"))
        } else {
            Ok(())
        }
    };
    let limits = BatchLimits { max_tokens: 10_000, max_pairs: 2 };
    let err = e.embed(&refs, TextKind::Query, limits, &mut check).expect_err("cancelled");
    assert_eq!(err.kind, ErrorKind::Cancelled);
}

/// A scratch copy of the model: links to its files, with `changes` written over them.
fn variant(tag: &str, changes: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg_rerank_embed_test_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).expect("mkdir");
    let src = model_dir();
    for f in [
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).expect("symlink");
    }
    for (f, text) in changes {
        let p = dir.join(f);
        let _ = std::fs::remove_file(&p);
        if !text.is_empty() {
            std::fs::write(&p, text).expect("write");
        }
    }
    dir
}

#[test]
fn prompts_go_before_the_text() {
    let prompts = r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}"#;
    let dir = variant("prompts", &[("config_sentence_transformers.json", prompts)]);
    let prompted = load_at(&dir, 1).expect("loads");
    assert_eq!(prompted.prompt(TextKind::Query), "query: ");
    assert_eq!(prompted.prompt(TextKind::Document), "passage: ");
    let plain = embedder();
    let q = prompted.encode("apt tools", TextKind::Query).expect("encode");
    assert_eq!(q, plain.encode("query: apt tools", TextKind::Query).expect("encode"));
    let d = prompted.encode("apt tools", TextKind::Document).expect("encode");
    assert_eq!(d, plain.encode("passage: apt tools", TextKind::Document).expect("encode"));
    let (a, _) = prompted.embed(&["apt tools"], TextKind::Query, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    let (b, _) =
        plain.embed(&["query: apt tools"], TextKind::Query, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    assert!(max_abs_diff(&a[0], &b[0]) <= 1e-6);
    let _ = std::fs::remove_dir_all(dir);

    // include_prompt false: the prompt's tokens (and [CLS]) are left out of the mean.
    let pooling = r#"{"word_embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": false}"#;
    let dir = variant(
        "no_prompt_pool",
        &[("config_sentence_transformers.json", prompts), ("1_Pooling/config.json", pooling)],
    );
    let excluded = load_at(&dir, 1).expect("loads");
    let q2 = excluded.encode("apt tools", TextKind::Query).expect("encode");
    assert_eq!(q2.ids, q.ids);
    assert_eq!(q2.skip, 3, "[CLS] query :");
    let (c, _) = excluded.embed(&["apt tools"], TextKind::Query, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    assert!(max_abs_diff(&a[0], &c[0]) > 1e-3, "pooling over fewer tokens changes the vector");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn other_pooling_modes_load() {
    let cls = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#;
    let dir = variant("cls", &[("1_Pooling/config.json", cls)]);
    let e = load_at(&dir, 1).expect("loads");
    assert_eq!(e.pooling(), Pooling::Cls);
    let (v, _) = e.embed(&["apt", ""], TextKind::Query, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    assert_eq!(v[0].len(), 384);
    let _ = std::fs::remove_dir_all(dir);

    let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#;
    let dir = variant("no_normalize", &[("modules.json", modules)]);
    let e = load_at(&dir, 1).expect("loads");
    assert!(!e.normalizes());
    let (v, _) = e.embed(&["apt"], TextKind::Query, BatchLimits::CPU, &mut no_cancel()).expect("embed");
    let norm: f32 = v[0].iter().map(|a| a * a).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not normalised: norm {norm}");
    let _ = std::fs::remove_dir_all(dir);
}

fn load_err(dir: &Path) -> pg_rerank_engine::EngineError {
    load_at(dir, 1).expect_err("must fail")
}

#[test]
fn directories_that_are_not_bi_encoders() {
    // A missing directory.
    let err = load_err(&common::shared().join("models/does-not-exist"));
    assert_eq!(err.kind, ErrorKind::ModelNotFound);

    // A cross-encoder: no modules.json.
    let err = load_err(&common::shared().join("models/minilm-debian"));
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.message.contains("is not a sentence-transformers bi-encoder"), "{err}");
    assert!(err.detail.as_deref().unwrap_or("").contains("modules.json"), "{err}");

    // modules.json without a Pooling module.
    let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]"#;
    let dir = variant("no_pooling", &[("modules.json", modules)]);
    let err = load_err(&dir);
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.detail.as_deref().unwrap_or("").contains("no Pooling module"), "{err}");
    assert!(!is_bi_encoder(&dir));
    let _ = std::fs::remove_dir_all(dir);

    // The pooling module's configuration is missing.
    let dir = variant("no_pooling_config", &[("1_Pooling/config.json", "")]);
    let err = load_err(&dir);
    assert_eq!(err.kind, ErrorKind::MissingFile, "{err}");
    assert!(err.message.contains("no pooling configuration"), "{err}");
    let _ = std::fs::remove_dir_all(dir);

    // Several pooling modes at once, and one that does not exist.
    let several = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
    let dir = variant("several", &[("1_Pooling/config.json", several)]);
    let err = load_err(&dir);
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.message.contains("several pooling modes"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let dir = variant("unknown", &[("1_Pooling/config.json", r#"{"pooling_mode": "median"}"#)]);
    assert_eq!(load_err(&dir).kind, ErrorKind::Unsupported);
    let _ = std::fs::remove_dir_all(dir);

    // A Dense module the graph does not contain cannot be applied.
    let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#;
    let dir = variant("dense", &[("modules.json", modules)]);
    let err = load_err(&dir);
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.message.contains("Dense"), "{err}");
    let _ = std::fs::remove_dir_all(dir);

    // Missing files.
    let dir = variant("no_tokenizer", &[("tokenizer.json", "")]);
    assert_eq!(load_err(&dir).kind, ErrorKind::MissingFile);
    let _ = std::fs::remove_dir_all(dir);
}

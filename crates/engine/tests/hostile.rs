//! Hostile and careless input (issue 20): each test here failed before its fix.

mod common;

use pg_rerank_engine::chunk::{self, ChunkOptions, Splitter};
use pg_rerank_engine::model::MAX_INSTRUCTION_BYTES;
use pg_rerank_engine::{EngineError, ErrorKind, ScoreOptions};
use std::time::{Duration, Instant};

fn never_stop() -> impl FnMut() -> Result<(), EngineError> {
    || Ok(())
}

/// Issue 20, item 1: an instruction of 400 MB made every pair render, hash and tokenize it
/// (a call that could not be stopped). Anything over 16 KiB is refused before any pair is
/// looked at, in every path that reads one: scoring here, the worker's tokenizing, and
/// splitting long documents.
#[test]
fn an_over_long_instruction_is_refused_at_once() {
    assert_eq!(MAX_INSTRUCTION_BYTES, 16 * 1024);
    let model = common::load("tiny/qwen3");
    let long = "\u{1}".repeat(MAX_INSTRUCTION_BYTES + 1);
    let pairs = vec![("q", "d"); 1000];
    let started = Instant::now();
    let err = model
        .score_pairs_with(&pairs, ScoreOptions::default(), Some(&long), &mut never_stop())
        .expect_err("an over-long instruction scores nothing");
    assert_eq!(err.kind, ErrorKind::InstructionTooLong);
    assert_eq!(err.message, "instruction is too long: 16385 bytes, the limit is 16384");
    let worker = model.encode_many_with(&pairs, 2, Some(&long));
    assert_eq!(worker.len(), 1, "one error for the whole request, no work per pair");
    assert_eq!(worker[0].as_ref().expect_err("refused").kind, ErrorKind::InstructionTooLong);
    let splitter = model.splitter();
    let e = chunk::expand_with(splitter, &pairs, ChunkOptions::default(), Some(&long), &mut never_stop())
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::InstructionTooLong);
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, took {:?}", started.elapsed());

    // At the limit an instruction is read as before.
    let at_limit = "x".repeat(MAX_INSTRUCTION_BYTES);
    let (scores, _) = model
        .score_pairs_with(&pairs[..2], ScoreOptions::default(), Some(&at_limit), &mut never_stop())
        .expect("an instruction of 16 KiB scores");
    assert!(scores.iter().all(|s| s.is_finite()));
}

/// Issue 20, item 6: splitting long documents checked for a cancel only every 256 pairs,
/// so a call of 255 huge documents could not be stopped. Now before every document it
/// splits.
#[test]
fn splitting_long_documents_checks_for_a_cancel_before_each() {
    let splitter = Splitter::load("tiny/bert", &common::shared().join("models/tiny/bert")).expect("splitter");
    let long = "word ".repeat(3000);
    let pairs: Vec<(&str, &str)> = vec![("q", long.as_str()), ("q", "short"), ("q", long.as_str()), ("q", long.as_str())];
    let mut checks = 0;
    let out = chunk::expand(&splitter, &pairs, ChunkOptions::default(), &mut || {
        checks += 1;
        Ok(())
    })
    .expect("splits");
    assert_eq!(out.split, 3);
    assert!(checks >= 3, "checked {checks} times for 3 long documents");

    // A cancel after the first document stops the call there.
    let mut seen = 0;
    let err = chunk::expand(&splitter, &pairs, ChunkOptions::default(), &mut || {
        seen += 1;
        if seen > 1 {
            Err(EngineError::new(ErrorKind::Cancelled, "canceling statement due to user request"))
        } else {
            Ok(())
        }
    })
    .expect_err("cancelled");
    assert_eq!(err.kind, ErrorKind::Cancelled);
}

/// Issue 20, item 10: the symbolic-link escape was tested with an empty directory and any
/// error accepted (a missing target passed too). A link out of the model directory to a
/// complete, loadable model is refused by name, with the reason, and is not listed; a link
/// that stays inside is followed.
#[test]
fn a_symlink_out_of_the_model_directory_is_refused() {
    use pg_rerank_engine::registry;
    let base = std::env::temp_dir().join(format!("pg_rerank_escape_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (root, outside) = (base.join("models"), base.join("outside"));
    std::fs::create_dir_all(root.join("real")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let bert = common::shared().join("models/tiny/bert");
    for f in ["model.onnx", "tokenizer.json", "config.json", "tokenizer_config.json"] {
        std::fs::copy(bert.join(f), outside.join(f)).expect("copy");
        std::fs::copy(bert.join(f), root.join("real").join(f)).expect("copy");
    }
    std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("../outside", root.join("relative")).expect("symlink");
    std::os::unix::fs::symlink(root.join("real"), root.join("inside")).expect("symlink");
    for name in ["escape", "relative", "escape:int8"] {
        let e = registry::resolve(&root, name).expect_err(name);
        assert_eq!(e.kind, ErrorKind::InvalidName, "{name}: {e}");
        assert_eq!(e.detail.as_deref(), Some("the model resolves outside the model directory"), "{name}");
    }
    // The target itself would load: only the boundary stops it.
    let _ = common::load_from(&base, "outside");
    let inside = registry::resolve(&root, "inside").expect("a link inside the root is followed");
    assert_eq!(inside.dir, root.join("real").canonicalize().expect("real"));
    let names: Vec<String> = registry::list(&root).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["inside", "real"]);
    let _ = std::fs::remove_dir_all(&base);
}

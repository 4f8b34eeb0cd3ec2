//! Broken models give typed errors, never panics.

mod common;

use pg_rerank_engine::{registry, runtime, Device, ErrorKind, Model, SessionOptions};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg_rerank_engine_test_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn copy(from: &str, to: &Path, file: &str) {
    std::fs::copy(common::shared().join("models").join(from).join(file), to.join(file)).expect("copy");
}

fn load_err(dir: &Path) -> ErrorKind {
    let env = runtime::init(&common::ort_lib()).expect("runtime");
    Model::load(env, "broken", dir, &SessionOptions::default()).expect_err("must fail").kind
}

#[test]
fn missing_files() {
    let dir = scratch("missing");
    assert_eq!(load_err(&dir), ErrorKind::MissingFile);
    copy("tiny/bert", &dir, "model.onnx");
    assert_eq!(load_err(&dir), ErrorKind::MissingFile, "tokenizer.json missing");
    assert_eq!(load_err(&dir.join("nope")), ErrorKind::ModelNotFound);
}

#[test]
fn corrupt_onnx_and_tokenizer() {
    let dir = scratch("corrupt");
    copy("tiny/bert", &dir, "tokenizer.json");
    copy("tiny/bert", &dir, "config.json");
    let good = std::fs::read(common::shared().join("models/tiny/bert/model.onnx")).expect("read");
    std::fs::write(dir.join("model.onnx"), &good[..good.len() / 3]).expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Corrupt, "truncated model.onnx");
    std::fs::write(dir.join("model.onnx"), b"this is not a model").expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Corrupt, "garbage model.onnx");
    copy("tiny/bert", &dir, "model.onnx");
    std::fs::write(dir.join("tokenizer.json"), b"{\"not\": \"a tokenizer\"}").expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Corrupt, "tokenizer.json that does not parse");
    std::fs::write(dir.join("tokenizer.json"), b"{ truncated").expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Corrupt);
}

/// Protobuf field helpers for a hand-written ONNX model.
fn field(num: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(num << 3 | u32::from(wire)), out);
}
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}
fn bytes(num: u32, data: &[u8], out: &mut Vec<u8>) {
    field(num, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}
fn int(num: u32, v: u64, out: &mut Vec<u8>) {
    field(num, 0, out);
    varint(v, out);
}

/// A valid ONNX model `logits = Identity(pixel_values)`, float [batch, 1]: it loads, but
/// its input is nothing a reranker can be fed.
fn identity_model(input: &str) -> Vec<u8> {
    let value_info = |name: &str| {
        let mut dim_batch = Vec::new();
        bytes(2, b"batch", &mut dim_batch);
        let mut dim_one = Vec::new();
        int(1, 1, &mut dim_one);
        let mut shape = Vec::new();
        bytes(1, &dim_batch, &mut shape);
        bytes(1, &dim_one, &mut shape);
        let mut tensor = Vec::new();
        int(1, 1, &mut tensor); // FLOAT
        bytes(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        bytes(1, &tensor, &mut ty);
        let mut vi = Vec::new();
        bytes(1, name.as_bytes(), &mut vi);
        bytes(2, &ty, &mut vi);
        vi
    };
    let mut node = Vec::new();
    bytes(1, input.as_bytes(), &mut node);
    bytes(2, b"logits", &mut node);
    bytes(4, b"Identity", &mut node);
    let mut graph = Vec::new();
    bytes(1, &node, &mut graph);
    bytes(2, b"g", &mut graph);
    bytes(11, &value_info(input), &mut graph);
    bytes(12, &value_info("logits"), &mut graph);
    let mut opset = Vec::new();
    bytes(1, b"", &mut opset);
    int(2, 17, &mut opset);
    let mut model = Vec::new();
    int(1, 8, &mut model);
    bytes(7, &graph, &mut model);
    bytes(8, &opset, &mut model);
    model
}

#[test]
fn unexpected_inputs_and_outputs() {
    let dir = scratch("foreign_input");
    copy("tiny/bert", &dir, "tokenizer.json");
    std::fs::write(dir.join("model.onnx"), identity_model("pixel_values")).expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Unsupported, "an input we cannot fill");
    // input_ids is int64 in every reranker; a float input_ids is refused too.
    std::fs::write(dir.join("model.onnx"), identity_model("input_ids")).expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Unsupported, "float input_ids");
    // A real model whose config.json promises three labels where the graph has one.
    let dir = scratch("labels");
    copy("tiny/bert", &dir, "tokenizer.json");
    copy("tiny/bert", &dir, "model.onnx");
    std::fs::write(dir.join("config.json"), br#"{"model_type":"bert","id2label":{"0":"a","1":"b","2":"c"}}"#)
        .expect("write");
    assert_eq!(load_err(&dir), ErrorKind::Unsupported, "label count mismatch");
}

#[test]
fn registry_resolves_inside_root_only() {
    let root = common::shared().join("models");
    assert!(registry::resolve(&root, "tiny/bert").is_ok());
    assert_eq!(registry::resolve(&root, "../data").expect_err("..").kind, ErrorKind::InvalidName);
    assert_eq!(registry::resolve(&root, "nope").expect_err("missing").kind, ErrorKind::ModelNotFound);
    let names: Vec<String> = registry::list(&root).into_iter().map(|(n, _)| n).collect();
    for want in
        ["minilm-debian", "minilm-debian:int8", "tiny/bert", "tiny/xlm-roberta", "tiny/deberta-v2", "tiny/modernbert"]
    {
        assert!(names.iter().any(|n| n == want), "{want} listed in {names:?}");
    }
    // A variant is a second ONNX graph in the same directory.
    let plain = registry::resolve(&root, "minilm-debian").expect("plain");
    let int8 = registry::resolve(&root, "minilm-debian:int8").expect("variant");
    assert_eq!((plain.dir.clone(), plain.onnx_file.as_str()), (int8.dir.clone(), "model.onnx"));
    assert_eq!(int8.onnx_file, "model_int8.onnx");
    // A variant whose file is missing fails to load with the file named.
    let missing = registry::resolve(&root, "tiny/bert:fp16").expect("resolves");
    let opts = SessionOptions { onnx_file: missing.onnx_file, ..Default::default() };
    let env = runtime::init(&common::ort_lib()).expect("runtime");
    let err = Model::load(env, "tiny/bert:fp16", &missing.dir, &opts).expect_err("no such file");
    assert_eq!(err.kind, ErrorKind::MissingFile);
    assert!(err.message.contains("model_fp16.onnx"), "{}", err.message);
    // A symbolic link out of the root is refused.
    let dir = scratch("links");
    std::os::unix::fs::symlink(common::shared().join("models/tiny/bert"), dir.join("inside")).expect("symlink");
    let outside = scratch("outside_root");
    std::os::unix::fs::symlink(&outside, dir.join("escape")).expect("symlink");
    assert!(registry::resolve(&dir, "escape").is_err());
}

#[test]
fn runtime_missing_library_is_an_error() {
    // A second path after a successful load, or a missing file, is an error, not a panic.
    let err = runtime::init(Path::new("/nonexistent/libonnxruntime.so")).expect_err("missing");
    assert_eq!(err.kind, ErrorKind::Runtime);
}

#[test]
fn device_names_parse() {
    assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
    assert_eq!(Device::parse(" CUDA "), Some(Device::Cuda(0)));
    assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(3)));
    for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0"] {
        assert_eq!(Device::parse(bad), None, "{bad:?}");
    }
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
}

/// With an ONNX Runtime built without CUDA (the CPU wheel that CI uses), asking for CUDA
/// is a `Device` error naming the cause, not a silent CPU session.
#[test]
fn cuda_without_cuda_runtime_is_a_device_error() {
    let env = runtime::init(&common::ort_lib()).expect("runtime");
    let dir = common::shared().join("models/minilm-debian");
    let opts = SessionOptions { intra_threads: 1, device: Device::Cuda(0), ..Default::default() };
    match Model::load(env, "minilm-debian", &dir, &opts) {
        Ok(m) => {
            // Only an ONNX Runtime with the CUDA provider may get here, and then the
            // session really is on the GPU.
            assert!(runtime::cuda_available());
            assert_eq!(m.device(), Device::Cuda(0));
        }
        Err(e) => {
            assert!(!runtime::cuda_available() || e.kind == ErrorKind::Device);
            assert_eq!(e.kind, ErrorKind::Device, "{e}");
            assert!(e.message.contains("CUDA"), "{e}");
            assert!(e.detail.is_some_and(|d| !d.is_empty()));
        }
    }
}

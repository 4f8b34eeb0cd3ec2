//! Model names and where they live: a model is a subdirectory of the model directory
//! (nested names such as `tiny/bert` included) holding `model.onnx` and `tokenizer.json`.
//! A variant of the same model in the same directory, such as a quantized graph
//! `model_int8.onnx`, is named with a suffix: `minilm-debian:int8`. Nothing outside the
//! model directory can be reached by name: no absolute paths, no `..`, and symbolic links
//! that lead outside are refused.

use crate::error::{EngineError, ErrorKind, Result};
use std::path::{Component, Path, PathBuf};

/// Longest accepted model name.
pub const MAX_NAME_LEN: usize = 200;
/// How deep `list` looks for models below the model directory.
const LIST_DEPTH: usize = 4;

fn invalid(name: &str, why: &str) -> EngineError {
    EngineError::new(ErrorKind::InvalidName, format!("invalid model name \"{name}\"")).with_detail(why.to_string())
}

/// The error for a model used as the kind it is not: `bi_encoder` says what it is (a
/// sentence-transformers bi-encoder asked to rerank, or a cross-encoder asked to embed).
pub fn wrong_kind(name: &str, bi_encoder: bool) -> EngineError {
    if bi_encoder {
        EngineError::new(ErrorKind::WrongModelKind, format!("model \"{name}\" is a bi-encoder, not a cross-encoder"))
            .with_detail("It embeds one text at a time (its modules.json lists a Pooling module); reranking needs a cross-encoder, which reads the query and the document together.")
    } else {
        EngineError::new(ErrorKind::WrongModelKind, format!("model \"{name}\" is a cross-encoder, not a bi-encoder"))
            .with_detail("It scores (query, document) pairs; embeddings need a sentence-transformers bi-encoder (a modules.json that lists a Pooling module).")
    }
}

/// Where a model's files are: its directory and the ONNX graph in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub dir: PathBuf,
    /// `model.onnx`, or `model_<variant>.onnx` for `name:variant`.
    pub onnx_file: String,
}

/// The ONNX file of a variant (None: the plain model).
pub fn onnx_file(variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("model_{v}.onnx"),
        None => "model.onnx".to_string(),
    }
}

/// Splits `path:variant` into its parts.
pub fn split_variant(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((path, variant)) => (path, Some(variant)),
        None => (name, None),
    }
}

/// Checks a model name: `/`-separated parts of letters, digits, `.`, `_` and `-`, none of
/// them empty, `.` or `..`, none starting with a dot; then optionally `:` and a variant of
/// letters, digits, `_` and `-`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(name, "the name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(name, "the name is too long"));
    }
    let (path, variant) = split_variant(name);
    if let Some(v) = variant {
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
            return Err(invalid(name, "a variant after ':' holds only letters, digits, '_' and '-'"));
        }
    }
    for part in path.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err(invalid(name, "each part of a name must be non-empty and not start with a dot"));
        }
        if !part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(invalid(name, "names may hold only letters, digits, '.', '_', '-' and '/'"));
        }
    }
    Ok(())
}

/// The directory and ONNX file of model `name` under `root`, refusing anything that
/// resolves outside `root`. Whether the file exists is checked when the model loads.
pub fn resolve(root: &Path, name: &str) -> Result<Location> {
    validate_name(name)?;
    let (path, variant) = split_variant(name);
    let root = root.canonicalize().map_err(|e| {
        EngineError::new(ErrorKind::ModelNotFound, format!("model directory \"{}\" is not accessible", root.display()))
            .with_detail(e.to_string())
    })?;
    let candidate = root.join(path);
    if candidate.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(name, "\"..\" is not allowed"));
    }
    let real = candidate.canonicalize().map_err(|_| {
        EngineError::new(ErrorKind::ModelNotFound, format!("model \"{name}\" does not exist"))
            .with_detail(format!("no directory \"{}\"", candidate.display()))
    })?;
    if !real.starts_with(&root) {
        return Err(invalid(name, "the model resolves outside the model directory"));
    }
    if !real.is_dir() {
        return Err(EngineError::new(ErrorKind::ModelNotFound, format!("model \"{name}\" does not exist"))
            .with_detail(format!("\"{}\" is not a directory", real.display())));
    }
    Ok(Location { dir: real, onnx_file: onnx_file(variant) })
}

/// Every model below `root` (directories holding `model.onnx`) and its variants (each
/// `model_<variant>.onnx` beside it), sorted by name.
pub fn list(root: &Path) -> Vec<(String, Location)> {
    let mut found = Vec::new();
    let Ok(root) = root.canonicalize() else { return found };
    walk(&root, &root, 0, &mut found);
    found.sort();
    found
}

fn walk(root: &Path, dir: &Path, depth: usize, found: &mut Vec<(String, Location)>) {
    if dir.join("model.onnx").is_file() {
        if let Ok(rel) = dir.strip_prefix(root) {
            let base = rel.to_string_lossy().into_owned();
            let variants = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let v = file.strip_prefix("model_")?.strip_suffix(".onnx")?.to_string();
                Some((format!("{base}:{v}"), file))
            });
            for (name, onnx_file) in std::iter::once((base.clone(), onnx_file(None))).chain(variants) {
                if validate_name(&name).is_ok() {
                    found.push((name, Location { dir: dir.to_path_buf(), onnx_file }));
                }
            }
        }
    }
    if depth >= LIST_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !path.is_dir() {
            continue;
        }
        match path.canonicalize() {
            Ok(real) if real.starts_with(root) => walk(root, &path, depth + 1, found),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["minilm", "tiny/bert", "a.b-c_d", "x/y/z", "minilm:int8", "x/y:O2_avx-512"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "..", "../etc", "/abs", "a//b", "a/../b", ".hidden", "a b", "a\\b", "tiny/", "m:", "m:a:b", "m:../x",
            ":int8", "m:a.b",
        ] {
            let e = validate_name(bad).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::InvalidName, "{bad}");
        }
        assert_eq!(split_variant("tiny/bert:int8"), ("tiny/bert", Some("int8")));
        assert_eq!(onnx_file(Some("int8")), "model_int8.onnx");
        assert_eq!(onnx_file(None), "model.onnx");
    }
}

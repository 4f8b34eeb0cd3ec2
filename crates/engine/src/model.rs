//! A loaded reranker: tokenizer, ONNX session, and the head that turns outputs into scores.

use crate::batch::BatchLimits;
use crate::chunk::Splitter;
use crate::config::{Head, ModelConfig, PaddingSide};
use crate::error::{EngineError, ErrorKind, Result};
use crate::session::{self, corrupt, inference, Padded, SessionPool, Tokenized, Tokens};
use ort::environment::Environment;
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Where the ONNX session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU `n`.
    Cuda(i32),
}

impl Device {
    /// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`.
    pub fn parse(s: &str) -> Option<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            other => other.strip_prefix("cuda:")?.parse::<i32>().ok().filter(|n| *n >= 0).map(Device::Cuda),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How the ONNX session is built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Threads ONNX Runtime may use inside one inference (intra-op).
    pub intra_threads: usize,
    pub device: Device,
    /// The graph file inside the model directory (`model.onnx`; `model_int8.onnx` for a
    /// quantized variant beside it).
    pub onnx_file: String,
    /// Sessions that run batches at the same time, each with `intra_threads` threads
    /// (each holds its own copy of the weights).
    pub sessions: usize,
    /// Let ONNX Runtime's intra-op threads spin between the operators of one inference
    /// instead of sleeping (onnxruntime's own default). Faster with several threads and
    /// small batches, but the threads burn CPU while they wait; off by default, as a
    /// database server shares its cores. Nothing spins with one thread.
    pub spin: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { intra_threads: 1, device: Device::Cpu, onnx_file: "model.onnx".to_string(), sessions: 1, spin: false }
    }
}

/// How one call scores its pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreOptions {
    pub limits: BatchLimits,
    /// Return the raw logit (for two-label heads, the log-odds of the positive class)
    /// instead of its sigmoid.
    pub raw: bool,
    /// Threads that tokenize the pairs (1: the caller's thread).
    pub tokenize_threads: usize,
}

/// What one call did, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreStats {
    pub pairs: usize,
    pub tokens: usize,
    pub truncated: usize,
    pub batches: usize,
}

/// One tokenized (query, document) pair.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// The document (or, if it was too long alone, the query) lost tokens.
    pub truncated: bool,
}

impl Tokenized for Encoded {
    fn tokens(&self) -> Tokens<'_> {
        Tokens { ids: &self.ids, type_ids: &self.type_ids, truncated: self.truncated }
    }
}

/// Text beyond this many characters per token of the maximum length is cut before
/// tokenizing: the tokens it would give are truncated away in any case, and a 1 MB
/// document would otherwise cost a full tokenization.
pub(crate) const CHARS_PER_TOKEN_BOUND: usize = 32;

/// Longest instruction accepted, in bytes. An instruction is read in every pair's prompt
/// (rendered and tokenized with each), so its length multiplies the work of a call; a
/// sentence or two is what instruction-following rerankers are trained on.
pub const MAX_INSTRUCTION_BYTES: usize = 16 * 1024;

/// Refuses an instruction longer than [`MAX_INSTRUCTION_BYTES`]. Cheap (its length only):
/// callers check before anything else, so an over-long one fails at once.
pub fn check_instruction(instruction: Option<&str>) -> Result<()> {
    match instruction {
        Some(i) if i.len() > MAX_INSTRUCTION_BYTES => Err(EngineError::new(
            ErrorKind::InstructionTooLong,
            format!("instruction is too long: {} bytes, the limit is {MAX_INSTRUCTION_BYTES}", i.len()),
        )),
        _ => Ok(()),
    }
}

pub struct Model {
    name: String,
    dir: PathBuf,
    config: ModelConfig,
    tokenizer: Tokenizer,
    /// Same tokenizer truncating longest-first: for prompts and over-long queries.
    tokenizer_longest_first: Tokenizer,
    /// Splits long documents into windows that fit beside a query.
    splitter: Splitter,
    /// One or more sessions of the same graph: batches run on as many at once.
    pool: SessionPool,
    output_f16: bool,
    device: Device,
    memory_bytes: u64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("dir", &self.dir).field("config", &self.config).finish()
    }
}

impl Model {
    /// Loads the model in `dir`. `name` is how users refer to it; `env` comes from
    /// [`crate::runtime::init`].
    pub fn load(env: &Environment, name: &str, dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let (onnx, tok_path) = session::model_files(name, dir, opts)?;
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| corrupt(&tok_path, e))?;
        let tok_json: serde_json::Value = serde_json::from_slice(&tok_bytes).map_err(|e| corrupt(&tok_path, e))?;
        let config = ModelConfig::discover(dir, &tok_json)?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes).map_err(|e| corrupt(&tok_path, e))?;
        tokenizer.with_padding(None);
        let splitter = Splitter::new(&tokenizer, &config)?;
        let truncation = |strategy| TruncationParams {
            direction: TruncationDirection::Right,
            max_length: config.max_length,
            strategy,
            stride: 0,
        };
        let mut tokenizer_longest_first = tokenizer.clone();
        tokenizer_longest_first
            .with_truncation(Some(truncation(TruncationStrategy::LongestFirst)))
            .map_err(|e| corrupt(&tok_path, e))?;
        tokenizer
            .with_truncation(Some(truncation(TruncationStrategy::OnlySecond)))
            .map_err(|e| corrupt(&tok_path, e))?;

        let mut pool = SessionPool::load(env, name, &onnx, opts)?;
        let output_f16 = Self::check_output(name, pool.first(), &config)?;
        let memory_bytes = session::memory_bytes(&onnx, &tok_path, pool.sessions());
        Ok(Model {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            tokenizer_longest_first,
            splitter,
            pool,
            output_f16,
            device: opts.device,
            memory_bytes,
        })
    }

    /// The first output must be float logits `[batch, num_labels]`.
    fn check_output(name: &str, session: &Session, config: &ModelConfig) -> Result<bool> {
        let Some(out) = session.outputs().first() else {
            return Err(EngineError::new(ErrorKind::Unsupported, format!("model \"{name}\" has no outputs")));
        };
        let bad = |what: String| {
            EngineError::new(
                ErrorKind::Unsupported,
                format!("model \"{name}\" output \"{}\" is not reranker logits", out.name()),
            )
            .with_detail(what)
        };
        match out.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let f16 = match ty {
                    TensorElementType::Float32 => false,
                    TensorElementType::Float16 => true,
                    other => return Err(bad(format!("element type {other}, expected float32 or float16"))),
                };
                if shape.len() != 2 {
                    return Err(bad(format!("shape {shape:?}, expected [batch, labels]")));
                }
                let Head::Classifier { num_labels, .. } = &config.head;
                if shape[1] > 0 && shape[1] as usize != *num_labels {
                    return Err(bad(format!("{} labels in the graph, {} in config.json", shape[1], num_labels)));
                }
                if *num_labels > 2 {
                    return Err(bad(format!("{num_labels} labels; a reranker has 1 or 2")));
                }
                Ok(f16)
            }
            other => Err(bad(format!("type {other}"))),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Splits long documents into windows for this model.
    pub fn splitter(&self) -> &Splitter {
        &self.splitter
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Memory the model holds, estimated from its files: the graph once per session.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Characters of a text that can matter: beyond this, `encode` cuts the text before
    /// tokenizing, since its tokens would be truncated away.
    pub fn char_bound(&self) -> usize {
        self.config.max_length.saturating_mul(CHARS_PER_TOKEN_BOUND).max(4096)
    }

    /// Names of the graph inputs that are fed, in graph order.
    pub fn input_names(&self) -> Vec<&str> {
        self.pool.input_names()
    }

    /// Tokenizes one pair: query first, document second, truncating the document first and
    /// both (longest first) only when the query alone is too long.
    pub fn encode(&self, query: &str, doc: &str) -> Result<Encoded> {
        self.encode_with(query, doc, None)
    }

    /// Whether the model reads an instruction (an LLM reranker with a prompt template).
    pub fn takes_instruction(&self) -> bool {
        self.config.prompt.is_some()
    }

    /// [`Model::encode`] with `instruction` in place of the model's own (LLM rerankers).
    pub fn encode_with(&self, query: &str, doc: &str, instruction: Option<&str>) -> Result<Encoded> {
        check_instruction(instruction)?;
        crate::error::guard_tokenizer(|| self.encode_unguarded(query, doc, instruction))
    }

    fn encode_unguarded(&self, query: &str, doc: &str, instruction: Option<&str>) -> Result<Encoded> {
        let bound = self.char_bound();
        let (q, q_cut) = cut_chars(query, bound);
        let (d, d_cut) = cut_chars(doc, bound);
        let enc = match (&self.config.prompt, instruction) {
            // One prompt, truncated from the right like the reference implementation.
            (Some(p), _) => self.longest_first(p.render_with(instruction, q, d).as_str())?,
            (None, Some(_)) => return Err(no_instruction(&self.name)),
            (None, None) => match self.tokenizer.encode((q, d), true) {
                Ok(e) => e,
                // The query leaves no room for the document: fall back to longest-first.
                Err(_) => self.longest_first((q, d))?,
            },
        };
        let truncated = q_cut || d_cut || !enc.get_overflowing().is_empty();
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&x| i64::from(x)).collect(),
            type_ids: enc.get_type_ids().iter().map(|&x| i64::from(x)).collect(),
            truncated,
        })
    }

    fn longest_first<'s, E>(&self, input: E) -> Result<tokenizers::Encoding>
    where
        E: Into<tokenizers::EncodeInput<'s>>,
    {
        self.tokenizer_longest_first
            .encode(input, true)
            .map_err(|e| EngineError::new(ErrorKind::Tokenize, "could not tokenize").with_detail(e.to_string()))
    }

    /// Scores `docs` against `query`; the result is in the order of `docs`. `check` runs
    /// before every batch and may stop the work by returning an error (cancellation).
    pub fn score(
        &self,
        query: &str,
        docs: &[&str],
        opts: ScoreOptions,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<f32>, ScoreStats)> {
        let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, *d)).collect();
        self.score_pairs(&pairs, opts, check)
    }

    /// Scores (query, document) pairs, any number of queries mixed; the result is in the
    /// order of `pairs`. Pairs of all queries are batched together by length.
    pub fn score_pairs(
        &self,
        pairs: &[(&str, &str)],
        opts: ScoreOptions,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<f32>, ScoreStats)> {
        self.score_pairs_with(pairs, opts, None, check)
    }

    /// [`Model::score_pairs`] with `instruction` in place of the model's own (LLM rerankers).
    pub fn score_pairs_with(
        &self,
        pairs: &[(&str, &str)],
        opts: ScoreOptions,
        instruction: Option<&str>,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<f32>, ScoreStats)> {
        check_instruction(instruction)?;
        let mut encoded = Vec::with_capacity(pairs.len());
        // Tokenize in chunks so that a cancel is seen between them.
        for chunk in pairs.chunks(256) {
            check()?;
            for e in self.encode_many_with(chunk, opts.tokenize_threads, instruction) {
                encoded.push(e?);
            }
        }
        self.score_encoded(&encoded, opts, check)
    }

    /// Tokenizes many pairs on up to `threads` threads (scoped: they end before this
    /// returns, and they only tokenize). Results are in input order.
    pub fn encode_many(&self, pairs: &[(&str, &str)], threads: usize) -> Vec<Result<Encoded>> {
        self.encode_many_with(pairs, threads, None)
    }

    /// [`Model::encode_many`] with `instruction` in place of the model's own.
    pub fn encode_many_with(
        &self,
        pairs: &[(&str, &str)],
        threads: usize,
        instruction: Option<&str>,
    ) -> Vec<Result<Encoded>> {
        if let Err(e) = check_instruction(instruction) {
            return vec![Err(e)];
        }
        let threads = threads.clamp(1, 16).min(pairs.len().div_ceil(16)).max(1);
        if threads == 1 {
            return pairs.iter().map(|(q, d)| self.encode_with(q, d, instruction)).collect();
        }
        let chunk = pairs.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || part.iter().map(|(q, d)| self.encode_with(q, d, instruction)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(EngineError::new(ErrorKind::Tokenize, "a tokenizer thread panicked"))]
                    })
                })
                .collect()
        })
    }

    /// Scores already tokenized pairs, batching them by length; order is preserved.
    pub fn score_encoded(
        &self,
        encoded: &[Encoded],
        opts: ScoreOptions,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<f32>, ScoreStats)> {
        let mut scores = vec![0f32; encoded.len()];
        // As many batches at once as there are sessions; a cancel is seen between waves.
        let put = |i, raw| scores[i] = finish(raw, opts.raw);
        let done = self.pool.run_batched(encoded, opts.limits, check, |rows| self.run_rows(rows), put)?;
        let stats =
            ScoreStats { pairs: done.rows, tokens: done.tokens, truncated: done.truncated, batches: done.batches };
        Ok((scores, stats))
    }

    /// Runs batches, as many at once as the model has sessions, on scoped threads that only run the
    /// model; results are in the order of `batches`.
    pub fn run_many(&self, batches: &[Vec<&Encoded>]) -> Vec<Result<Vec<f32>>> {
        self.pool.run_many(batches, |b| self.run_rows(b))
    }

    /// The first output's values as f32.
    fn read_logits(outputs: &SessionOutputs<'_>, f16: bool) -> Result<Vec<f32>> {
        let out = &outputs[0];
        Ok(if f16 {
            let (_, data) = out.try_extract_tensor::<half::f16>().map_err(inference)?;
            data.iter().map(|x| x.to_f32()).collect()
        } else {
            let (_, data) = out.try_extract_tensor::<f32>().map_err(inference)?;
            data.to_vec()
        })
    }

    /// Runs one batch, padded to its longest row, and returns each row's raw score (the
    /// logit, or for two-label heads the positive-minus-negative logit). Callers that
    /// gather pairs from several requests batch them with [`crate::batch::plan`] and call this.
    pub fn run_rows(&self, rows: &[&Encoded]) -> Result<Vec<f32>> {
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let batch = Padded::new(rows, self.config.pad_id, self.config.padding_side == PaddingSide::Left);
        let logits = self.pool.run(batch, |outputs| Self::read_logits(outputs, self.output_f16))?;
        let Head::Classifier { num_labels, positive } = self.config.head;
        if logits.len() != n * num_labels {
            return Err(EngineError::new(
                ErrorKind::Inference,
                format!("model \"{}\" returned {} values for {} pairs", self.name, logits.len(), n),
            ));
        }
        Ok((0..n)
            .map(|r| match num_labels {
                1 => logits[r],
                _ => logits[r * 2 + positive] - logits[r * 2 + (1 - positive)],
            })
            .collect())
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A raw score as the caller asked for it: the logit itself, or its sigmoid.
pub fn finish(raw_score: f32, raw: bool) -> f32 {
    if raw {
        raw_score
    } else {
        sigmoid(raw_score)
    }
}

/// The first `max` characters of `s`, and whether anything was cut.
pub fn cut_chars(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    match s.char_indices().nth(max) {
        Some((b, _)) => (&s[..b], true),
        None => (s, false),
    }
}

/// The error for an instruction given to a model that reads none.
pub fn no_instruction(name: &str) -> EngineError {
    EngineError::new(ErrorKind::NoInstruction, format!("model \"{name}\" takes no instruction"))
        .with_detail("It is not an instruction-following reranker: it has no reranker_prompt.json.")
}

#[cfg(test)]
mod panic_tests {
    use super::*;
    use crate::error::PANIC_NEXT_TOKENIZE;

    fn shared_model(name: &str) -> PathBuf {
        let shared = match std::env::var_os("PG_RERANK_SHARED") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
        };
        shared.join("models").join(name)
    }

    /// Issue 20, suspected: a panic inside the tokenizers crate on the worker's main thread
    /// (which tokenizes with one thread) ended the worker, and every backend's requests
    /// with it. It is now the request's own error, and the next text tokenizes.
    #[test]
    fn a_tokenizer_panic_is_an_error_of_its_request() {
        let ort = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0"));
        let env = crate::runtime::init(&ort).expect("ONNX Runtime loads");
        let model = Model::load(env, "tiny/bert", &shared_model("tiny/bert"), &SessionOptions::default()).expect("loads");
        let pairs = [("q", "a document"), ("q", "another one")];
        for encode in [
            &(|| model.encode_with("q", "d", None).map(|_| ())) as &dyn Fn() -> Result<()>,
            // The worker's path: one tokenizing thread, the caller's own.
            &|| model.encode_many_with(&pairs, 1, None).into_iter().collect::<Result<Vec<_>>>().map(|_| ()),
            &|| model.splitter().room("q").map(|_| ()),
        ] {
            PANIC_NEXT_TOKENIZE.with(|p| p.set(true));
            let err = encode().expect_err("the panic is an error");
            assert_eq!(err.kind, ErrorKind::Tokenize);
            assert_eq!(err.message, "the tokenizer failed on this text");
            assert!(err.detail.as_deref().is_some_and(|d| d.contains("the tokenizer test hook panics")), "{err:?}");
            encode().expect("the next call tokenizes");
        }
    }
}

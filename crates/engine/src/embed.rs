//! A loaded sentence-transformers bi-encoder: one text in, one embedding vector out.
//!
//! The model directory is a sentence-transformers save with the transformer exported to
//! ONNX: `model.onnx`, `tokenizer.json`, `modules.json` (Transformer -> Pooling ->
//! Normalize), the pooling module's `config.json`, `sentence_bert_config.json` (maximum
//! length) and `config_sentence_transformers.json` (query and document prompts). The graph
//! either returns the token vectors (`last_hidden_state` / `token_embeddings`
//! `[batch, sequence, dim]`), which are pooled here under the attention mask as the
//! pooling module says, or the finished `sentence_embedding` `[batch, dim]`.

use crate::batch::BatchLimits;
use crate::config::read_json;
use crate::error::{EngineError, ErrorKind, Result};
use crate::model::{cut_chars, Device, SessionOptions, CHARS_PER_TOKEN_BOUND};
use crate::session::{self, corrupt, inference, Padded, SessionPool, Tokenized, Tokens};
use ort::environment::Environment;
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorElementType, ValueType};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Whether a text is a search query or a document of the corpus: each gets its own prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextKind {
    Query,
    Document,
}

/// How token vectors become one sentence vector (sentence-transformers' `Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// Mean of the token vectors under the mask.
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// Element-wise maximum over the tokens under the mask.
    Max,
    /// The last token under the mask (decoder-style embedders).
    LastToken,
    /// Sum under the mask divided by the square root of the token count.
    MeanSqrtLen,
    /// Mean weighted by position (1 for the first token, 2 for the second, ...).
    WeightedMean,
}

impl Pooling {
    pub fn name(&self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::LastToken => "lasttoken",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
        }
    }

    fn parse(s: &str) -> Option<Pooling> {
        Some(match s {
            "mean" | "mean_tokens" => Pooling::Mean,
            "cls" | "cls_token" => Pooling::Cls,
            "max" | "max_tokens" => Pooling::Max,
            "lasttoken" | "last_token" => Pooling::LastToken,
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Pooling::MeanSqrtLen,
            "weightedmean" | "weightedmean_tokens" => Pooling::WeightedMean,
            _ => return None,
        })
    }
}

/// One tokenized text, prompt included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// The text lost tokens (or characters) to the maximum length.
    pub truncated: bool,
    /// Leading tokens left out of the pooling: the prompt and the special token before it,
    /// when the pooling module says `include_prompt: false`; else 0.
    pub skip: usize,
}

impl Tokenized for EncodedText {
    fn tokens(&self) -> Tokens<'_> {
        Tokens { ids: &self.ids, type_ids: &self.type_ids, truncated: self.truncated }
    }
}

/// What one [`Embedder::embed`] call did, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    pub texts: usize,
    pub tokens: usize,
    pub truncated: usize,
    pub batches: usize,
}

/// The graph output read, and what it holds.
#[derive(Debug, Clone)]
struct OutputSpec {
    name: String,
    /// `[batch, dim]`, already pooled; else `[batch, sequence, dim]` token vectors.
    pooled: bool,
    f16: bool,
}

/// Longest window when the model directory states none.
const DEFAULT_MAX_LENGTH: usize = 512;

pub struct Embedder {
    name: String,
    dir: PathBuf,
    tokenizer: Tokenizer,
    /// One or more sessions of the same graph: batches run on as many at once.
    pool: SessionPool,
    output: OutputSpec,
    pooling: Pooling,
    include_prompt: bool,
    normalize: bool,
    lower_case: bool,
    max_length: usize,
    dim: usize,
    pad_id: i64,
    left_padding: bool,
    query_prompt: String,
    document_prompt: String,
    device: Device,
    memory_bytes: u64,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_length", &self.max_length)
            .field("dim", &self.dim)
            .finish()
    }
}

fn as_len(v: Option<&Value>) -> Option<usize> {
    // tokenizer_config.json writes "no limit" as 1e30; ignore anything absurd.
    v.and_then(Value::as_f64).filter(|x| *x >= 1.0 && *x <= 1_048_576.0).map(|x| x as usize)
}

/// The modules of a sentence-transformers directory, from `modules.json`: (type, path).
fn modules(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let path = dir.join("modules.json");
    let Some(v) = read_json(&path)? else { return Ok(None) };
    let Some(list) = v.as_array() else {
        return Err(EngineError::new(ErrorKind::Corrupt, format!("could not parse \"{}\"", path.display()))
            .with_detail("expected a list of modules"));
    };
    Ok(Some(
        list.iter()
            .map(|m| {
                let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (s("type"), s("path"))
            })
            .collect(),
    ))
}

/// The last part of a module type: `sentence_transformers.models.Pooling` -> `Pooling`.
fn short_type(t: &str) -> &str {
    t.rsplit('.').next().unwrap_or(t)
}

/// Whether `dir` holds a sentence-transformers bi-encoder: a `modules.json` that lists a
/// Pooling module. Cheap (reads one small file) and never fails.
pub fn is_bi_encoder(dir: &Path) -> bool {
    matches!(modules(dir), Ok(Some(m)) if m.iter().any(|(t, _)| short_type(t) == "Pooling"))
}

/// Strips what Python's `str.strip()` strips (sentence-transformers strips every text).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The pooling mode of a Pooling module's `config.json` and its `include_prompt`.
fn read_pooling(name: &str, path: &Path) -> Result<(Pooling, bool, Option<usize>)> {
    let Some(cfg) = read_json(path)? else {
        return Err(EngineError::new(ErrorKind::MissingFile, format!("model \"{name}\" has no pooling configuration"))
            .with_detail(format!("\"{}\" does not exist", path.display())));
    };
    let include_prompt = cfg.get("include_prompt").and_then(Value::as_bool).unwrap_or(true);
    let dim = cfg.get("word_embedding_dimension").and_then(Value::as_u64).map(|d| d as usize).filter(|d| *d > 0);
    if let Some(mode) = cfg.get("pooling_mode").and_then(Value::as_str) {
        let pooling = Pooling::parse(mode).ok_or_else(|| {
            EngineError::new(ErrorKind::Unsupported, format!("model \"{name}\" has an unknown pooling mode \"{mode}\""))
        })?;
        return Ok((pooling, include_prompt, dim));
    }
    let flags = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ("pooling_mode_weightedmean_tokens", Pooling::WeightedMean),
        ("pooling_mode_lasttoken", Pooling::LastToken),
    ];
    let on: Vec<Pooling> =
        flags.iter().filter(|(k, _)| cfg.get(*k).and_then(Value::as_bool).unwrap_or(false)).map(|(_, p)| *p).collect();
    match on.as_slice() {
        [one] => Ok((*one, include_prompt, dim)),
        [] => Err(EngineError::new(ErrorKind::Unsupported, format!("model \"{name}\" has no pooling mode"))
            .with_detail(format!("no pooling_mode_* is true in \"{}\"", path.display()))),
        several => Err(EngineError::new(
            ErrorKind::Unsupported,
            format!("model \"{name}\" concatenates several pooling modes, which pg_rerank does not support"),
        )
        .with_detail(format!("modes: {}", several.iter().map(Pooling::name).collect::<Vec<_>>().join(", ")))),
    }
}

impl Embedder {
    /// Loads the sentence-transformers model in `dir`. `name` is how users refer to it;
    /// `env` comes from [`crate::runtime::init`].
    pub fn load(env: &Environment, name: &str, dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let (onnx, tok_path) = session::model_files(name, dir, opts)?;

        // modules.json: where the transformer's and the pooling's settings are, and
        // whether the vectors are normalised.
        let not_bi = |detail: String| {
            EngineError::new(
                ErrorKind::Unsupported,
                format!("model \"{name}\" is not a sentence-transformers bi-encoder"),
            )
            .with_detail(detail)
        };
        let Some(modules) = modules(dir)? else {
            return Err(not_bi(format!("\"{}\" does not exist", dir.join("modules.json").display())));
        };
        let find = |ty: &str| modules.iter().find(|(t, _)| short_type(t) == ty).map(|(_, p)| dir.join(p));
        let transformer_dir = find("Transformer").unwrap_or_else(|| dir.to_path_buf());
        let pooling_dir = find("Pooling");
        let normalize = find("Normalize").is_some();
        let others: Vec<&str> = modules
            .iter()
            .map(|(t, _)| short_type(t))
            .filter(|t| !["Transformer", "Pooling", "Normalize"].contains(t))
            .collect();

        // Tokenizer: no padding (batches pad themselves), truncation at the model's window.
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| corrupt(&tok_path, e))?;
        let tok_json: Value = serde_json::from_slice(&tok_bytes).map_err(|e| corrupt(&tok_path, e))?;
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let st_config = match read_json(&transformer_dir.join("sentence_bert_config.json"))? {
            Some(v) => v,
            None => read_json(&dir.join("sentence_bert_config.json"))?.unwrap_or(Value::Null),
        };
        let max_length = Self::max_length_of(&config, &tok_config, &st_config);
        let lower_case = st_config.get("do_lower_case").and_then(Value::as_bool).unwrap_or(false);
        let pad_id = config
            .get("pad_token_id")
            .and_then(Value::as_i64)
            .or_else(|| {
                let pad = tok_config.get("pad_token").and_then(Value::as_str)?;
                tok_json
                    .get("added_tokens")?
                    .as_array()?
                    .iter()
                    .find_map(|t| (t.get("content")?.as_str()? == pad).then(|| t.get("id")?.as_i64()).flatten())
            })
            .unwrap_or(0);
        let left_padding = tok_config.get("padding_side").and_then(Value::as_str) == Some("left");

        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes).map_err(|e| corrupt(&tok_path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| corrupt(&tok_path, e))?;

        // Prompts, chosen as SentenceTransformer.encode_query / encode_document do.
        let st = read_json(&dir.join("config_sentence_transformers.json"))?.unwrap_or(Value::Null);
        let prompts = st.get("prompts").and_then(Value::as_object);
        let prompt = |k: &str| prompts.and_then(|p| p.get(k)).and_then(Value::as_str).map(str::to_string);
        let default_prompt = st.get("default_prompt_name").and_then(Value::as_str).and_then(prompt);
        let query_prompt = prompt("query").or_else(|| default_prompt.clone()).unwrap_or_default();
        let document_prompt =
            ["document", "passage", "corpus"].iter().find_map(|k| prompt(k)).or(default_prompt).unwrap_or_default();

        // Pooling (read before the graph loads, so that a bad one fails fast): needed
        // unless the graph pools itself.
        let pooling_config = pooling_dir.map(|p| read_pooling(name, &p.join("config.json"))).transpose()?;

        let mut pool = SessionPool::load(env, name, &onnx, opts)?;
        let (output, graph_dim) = Self::discover_output(name, pool.first())?;

        let (pooling, include_prompt, pool_dim) = match pooling_config {
            Some(p) => p,
            None if output.pooled => (Pooling::Mean, true, None),
            None => return Err(not_bi("modules.json lists no Pooling module".to_string())),
        };
        if !output.pooled && !others.is_empty() {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                format!("model \"{name}\" has modules that pg_rerank cannot apply: {}", others.join(", ")),
            )
            .with_detail("export the whole pipeline to ONNX with a sentence_embedding output"));
        }
        if let (Some(g), Some(p)) = (graph_dim, pool_dim) {
            if !output.pooled && g != p {
                return Err(EngineError::new(
                    ErrorKind::Unsupported,
                    format!("model \"{name}\" returns vectors of {g} dimensions, its pooling configuration says {p}"),
                ));
            }
        }

        let output_pooled = output.pooled;
        let memory_bytes = session::memory_bytes(&onnx, &tok_path, pool.sessions());
        let mut embedder = Embedder {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            tokenizer,
            pool,
            output,
            pooling,
            include_prompt,
            normalize,
            lower_case,
            max_length,
            // A graph that pools itself may project (Dense): only its own shape says the width.
            dim: if output_pooled { graph_dim } else { graph_dim.or(pool_dim) }.unwrap_or(0),
            pad_id,
            left_padding,
            query_prompt,
            document_prompt,
            device: opts.device,
            memory_bytes,
        };
        if embedder.dim == 0 {
            // The graph does not say its width: ask it.
            let probe = embedder.encode("", TextKind::Document)?;
            let v = embedder.run_rows(&[&probe])?;
            embedder.dim = v.first().map_or(0, Vec::len);
            if embedder.dim == 0 {
                return Err(EngineError::new(
                    ErrorKind::Unsupported,
                    format!("model \"{name}\" returns empty vectors"),
                ));
            }
        }
        Ok(embedder)
    }

    /// `max_seq_length` of `sentence_bert_config.json`, else the smaller of the tokenizer's
    /// `model_max_length` and the position table, capped by the position table.
    fn max_length_of(config: &Value, tok_config: &Value, st_config: &Value) -> usize {
        let reserved = match config.get("model_type").and_then(Value::as_str) {
            // RoBERTa-style position tables reserve two entries for the padding offset.
            Some("xlm-roberta" | "roberta" | "camembert") => 2,
            _ => 0,
        };
        let positions = as_len(config.get("max_position_embeddings")).map(|n| n.saturating_sub(reserved));
        let stated = as_len(st_config.get("max_seq_length"));
        let from_tokenizer = as_len(tok_config.get("model_max_length"));
        // sentence-transformers' own fallback: the smaller of the two.
        let fallback = match (from_tokenizer, positions) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(DEFAULT_MAX_LENGTH),
        };
        let len = stated.unwrap_or(fallback);
        match positions {
            Some(p) if p > 0 => len.min(p),
            _ => len,
        }
        .max(2)
    }

    /// The output to read: `sentence_embedding` `[batch, dim]` when the graph has it, else
    /// `last_hidden_state` or `token_embeddings`, else the first `[batch, sequence, dim]`
    /// output. Also returns the width when the graph states it.
    fn discover_output(name: &str, session: &Session) -> Result<(OutputSpec, Option<usize>)> {
        let float = |ty: &ValueType| match ty {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Some((false, shape.to_vec())),
            ValueType::Tensor { ty: TensorElementType::Float16, shape, .. } => Some((true, shape.to_vec())),
            _ => None,
        };
        let outs: Vec<(String, bool, Vec<i64>)> = session
            .outputs()
            .iter()
            .filter_map(|o| float(o.dtype()).map(|(f16, shape)| (o.name().to_string(), f16, shape)))
            .collect();
        let pick = outs
            .iter()
            .find(|(n, _, s)| n == "sentence_embedding" && s.len() == 2)
            .or_else(|| outs.iter().find(|(n, _, s)| n == "last_hidden_state" && s.len() == 3))
            .or_else(|| outs.iter().find(|(n, _, s)| n == "token_embeddings" && s.len() == 3))
            .or_else(|| outs.iter().find(|(_, _, s)| s.len() == 3));
        let Some((out_name, f16, shape)) = pick else {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                format!("model \"{name}\" has no output that pg_rerank can read embeddings from"),
            )
            .with_detail(
                "expected sentence_embedding [batch, dim] or last_hidden_state [batch, sequence, dim], float32 or float16",
            ));
        };
        let dim = shape.last().copied().filter(|d| *d > 0).map(|d| d as usize);
        Ok((OutputSpec { name: out_name.clone(), pooled: shape.len() == 2, f16: *f16 }, dim))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Width of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens, special tokens and prompt included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Memory the model holds, estimated from its files: the graph once per session.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// How token vectors are pooled (unused when the graph returns `sentence_embedding`).
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether the graph pools itself (it returns `sentence_embedding`).
    pub fn graph_pools(&self) -> bool {
        self.output.pooled
    }

    /// Whether vectors are L2-normalised (modules.json lists a Normalize module).
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The prompt put before texts of `kind` (empty when none).
    pub fn prompt(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.query_prompt,
            TextKind::Document => &self.document_prompt,
        }
    }

    /// Names of the graph inputs that are fed, in graph order.
    pub fn input_names(&self) -> Vec<&str> {
        self.pool.input_names()
    }

    /// Characters of a text that can matter: beyond this, `encode` cuts the text before
    /// tokenizing, since its tokens would be truncated away.
    pub fn char_bound(&self) -> usize {
        self.max_length.saturating_mul(CHARS_PER_TOKEN_BOUND).max(4096)
    }

    fn tokenize(&self, text: &str) -> Result<tokenizers::Encoding> {
        crate::error::guard_tokenizer(|| {
            self.tokenizer
                .encode(text, true)
                .map_err(|e| EngineError::new(ErrorKind::Tokenize, "could not tokenize").with_detail(e.to_string()))
        })
    }

    /// Tokenizes one text as sentence-transformers does: the prompt of its kind before it,
    /// surrounding white space stripped, lowercased if the model says so, truncated on the
    /// right to the window and then wrapped in the special tokens.
    pub fn encode(&self, text: &str, kind: TextKind) -> Result<EncodedText> {
        let prompt = self.prompt(kind);
        let (text, cut) = cut_chars(text, self.char_bound());
        let joined = format!("{prompt}{text}");
        let mut input = py_strip(&joined).to_string();
        if self.lower_case {
            input = input.to_lowercase();
        }
        let enc = self.tokenize(&input)?;
        let skip = if !self.include_prompt && !prompt.is_empty() {
            // sentence-transformers' prompt_length: the prompt's tokens with the leading
            // special token, without the trailing one.
            let p = py_strip(prompt);
            let p = if self.lower_case { p.to_lowercase() } else { p.to_string() };
            self.tokenize(&p)?.get_ids().len().saturating_sub(1)
        } else {
            0
        };
        Ok(EncodedText {
            ids: enc.get_ids().iter().map(|&x| i64::from(x)).collect(),
            type_ids: enc.get_type_ids().iter().map(|&x| i64::from(x)).collect(),
            truncated: cut || !enc.get_overflowing().is_empty(),
            skip,
        })
    }

    /// Embeds `texts` of one kind; vectors come back in the order of `texts`. Texts are
    /// batched by length under `limits`, as many batches at once as there are sessions;
    /// `check` runs before every wave of batches and may stop the work by returning an
    /// error (cancellation).
    pub fn embed(
        &self,
        texts: &[&str],
        kind: TextKind,
        limits: BatchLimits,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<Vec<f32>>, EmbedStats)> {
        let mut encoded = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(256) {
            check()?;
            for t in chunk {
                encoded.push(self.encode(t, kind)?);
            }
        }
        self.embed_encoded(&encoded, limits, check)
    }

    /// Embeds already tokenized texts, batching them by length; order is preserved.
    pub fn embed_encoded(
        &self,
        encoded: &[EncodedText],
        limits: BatchLimits,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<Vec<f32>>, EmbedStats)> {
        let mut vectors = vec![Vec::new(); encoded.len()];
        let done = self.pool.run_batched(encoded, limits, check, |rows| self.run_rows(rows), |i, v| vectors[i] = v)?;
        let stats =
            EmbedStats { texts: done.rows, tokens: done.tokens, truncated: done.truncated, batches: done.batches };
        Ok((vectors, stats))
    }

    /// Runs batches, as many at once as the model has sessions, on scoped threads that
    /// only run the model; results are in the order of `batches`.
    pub fn run_many(&self, batches: &[Vec<&EncodedText>]) -> Vec<Result<Vec<Vec<f32>>>> {
        self.pool.run_many(batches, |b| self.run_rows(b))
    }

    /// The read output's shape and values as f32.
    fn read_output(outputs: &SessionOutputs<'_>, output: &OutputSpec) -> Result<(Vec<i64>, Vec<f32>)> {
        let Some(out) = outputs.get(&output.name) else {
            return Err(EngineError::new(ErrorKind::Inference, format!("the model returned no \"{}\"", output.name)));
        };
        Ok(if output.f16 {
            let (shape, data) = out.try_extract_tensor::<half::f16>().map_err(inference)?;
            (shape.to_vec(), data.iter().map(|x| x.to_f32()).collect())
        } else {
            let (shape, data) = out.try_extract_tensor::<f32>().map_err(inference)?;
            (shape.to_vec(), data.to_vec())
        })
    }

    /// Runs one batch, padded to its longest row, and returns one finished vector per
    /// row (pooled, and normalised when the model says so). Callers that gather texts from
    /// several requests batch them with [`crate::batch::plan`] and call this.
    pub fn run_rows(&self, rows: &[&EncodedText]) -> Result<Vec<Vec<f32>>> {
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let batch = Padded::new(rows, self.pad_id, self.left_padding);
        let width = batch.width;
        // What the pooling averages over: the mask, less the prompt when it is excluded (the
        // first and last tokens are those of the whole input, prompt or not).
        let mut pool_mask = batch.mask.clone();
        if !matches!(self.pooling, Pooling::Cls | Pooling::LastToken) {
            for (k, m) in pool_mask.iter_mut().enumerate() {
                let e = rows[k / width];
                if e.skip < e.ids.len() && (batch.positions[k] as usize) < e.skip {
                    *m = 0;
                }
            }
        }
        let (out_shape, data) = self.pool.run(batch, |outputs| Self::read_output(outputs, &self.output))?;
        let bad =
            |what: String| EngineError::new(ErrorKind::Inference, format!("model \"{}\" returned {what}", self.name));
        let mut vectors = if self.output.pooled {
            let [b, d] = out_shape[..] else { return Err(bad(format!("an output of shape {out_shape:?}"))) };
            if b as usize != n || (self.dim > 0 && d as usize != self.dim) || data.len() != n * d as usize {
                return Err(bad(format!("shape {out_shape:?} for {n} texts")));
            }
            data.chunks(d as usize).map(<[f32]>::to_vec).collect()
        } else {
            let [b, s, d] = out_shape[..] else { return Err(bad(format!("an output of shape {out_shape:?}"))) };
            if b as usize != n
                || s as usize != width
                || (self.dim > 0 && d as usize != self.dim)
                || data.len() != n * width * d as usize
            {
                return Err(bad(format!("shape {out_shape:?} for {n} texts of {width} tokens")));
            }
            pool(&data, n, width, d as usize, &pool_mask, self.pooling)
        };
        if self.normalize {
            vectors.iter_mut().for_each(|v| normalize(v));
        }
        Ok(vectors)
    }
}

/// Pools token vectors `hidden` (`[batch, seq, dim]`, row-major) into one vector per row,
/// over the tokens where `mask` (`[batch, seq]`) is non-zero. A row with no token under
/// the mask gives a zero vector.
pub fn pool(hidden: &[f32], batch: usize, seq: usize, dim: usize, mask: &[i64], mode: Pooling) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|r| {
            let token = |j: usize| &hidden[(r * seq + j) * dim..(r * seq + j + 1) * dim];
            let on: Vec<usize> = (0..seq).filter(|&j| mask[r * seq + j] != 0).collect();
            let mut out = vec![0f32; dim];
            match mode {
                Pooling::Cls => {
                    if let Some(&j) = on.first() {
                        out.copy_from_slice(token(j));
                    }
                }
                Pooling::LastToken => {
                    if let Some(&j) = on.last() {
                        out.copy_from_slice(token(j));
                    }
                }
                Pooling::Max => {
                    if !on.is_empty() {
                        out.fill(f32::NEG_INFINITY);
                        for &j in &on {
                            for (o, x) in out.iter_mut().zip(token(j)) {
                                *o = o.max(*x);
                            }
                        }
                    }
                }
                Pooling::Mean | Pooling::MeanSqrtLen | Pooling::WeightedMean => {
                    let first = on.first().copied().unwrap_or(0);
                    let mut total = 0f32;
                    for &j in &on {
                        let w = match mode {
                            Pooling::WeightedMean => (j - first + 1) as f32,
                            _ => 1.0,
                        };
                        total += w;
                        for (o, x) in out.iter_mut().zip(token(j)) {
                            *o += w * x;
                        }
                    }
                    let div = match mode {
                        Pooling::MeanSqrtLen => total.sqrt(),
                        _ => total,
                    };
                    if div > 0.0 {
                        out.iter_mut().for_each(|o| *o /= div);
                    }
                }
            }
            out
        })
        .collect()
}

/// Scales `v` to unit L2 length in place; a zero vector stays zero (as torch's
/// `normalize`, which divides by max(norm, 1e-12)).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    let norm = norm.max(1e-12) as f32;
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows, three tokens, two dimensions; row 1 has one padding token at the end.
    fn hidden() -> Vec<f32> {
        vec![
            1.0, 10.0, 2.0, 20.0, 3.0, 30.0, // row 0
            4.0, -1.0, 6.0, -3.0, 100.0, 100.0, // row 1: the last token is padding
        ]
    }
    const MASK: [i64; 6] = [1, 1, 1, 1, 1, 0];

    #[test]
    fn mean_over_masked_tokens_only() {
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::Mean);
        assert_eq!(v, vec![vec![2.0, 20.0], vec![5.0, -2.0]]);
    }

    #[test]
    fn cls_is_the_first_token() {
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::Cls);
        assert_eq!(v, vec![vec![1.0, 10.0], vec![4.0, -1.0]]);
        // Left padding: the first real token.
        let v = pool(&hidden(), 1, 3, 2, &[0, 1, 1], Pooling::Cls);
        assert_eq!(v, vec![vec![2.0, 20.0]]);
    }

    #[test]
    fn max_ignores_padding() {
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::Max);
        assert_eq!(v, vec![vec![3.0, 30.0], vec![6.0, -1.0]]);
    }

    #[test]
    fn last_token_with_right_and_left_padding() {
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::LastToken);
        assert_eq!(v, vec![vec![3.0, 30.0], vec![6.0, -3.0]]);
        let v = pool(&hidden(), 1, 3, 2, &[0, 1, 1], Pooling::LastToken);
        assert_eq!(v, vec![vec![3.0, 30.0]]);
    }

    #[test]
    fn mean_sqrt_len_and_weighted_mean() {
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::MeanSqrtLen);
        let s = 3f32.sqrt();
        assert!((v[0][0] - 6.0 / s).abs() < 1e-6 && (v[0][1] - 60.0 / s).abs() < 1e-5);
        let v = pool(&hidden(), 2, 3, 2, &MASK, Pooling::WeightedMean);
        // Row 0: (1*1 + 2*2 + 3*3) / 6; row 1: (1*4 + 2*6) / 3.
        assert!((v[0][0] - 14.0 / 6.0).abs() < 1e-6);
        assert!((v[1][0] - 16.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn nothing_under_the_mask_gives_zeros() {
        for mode in [Pooling::Mean, Pooling::Cls, Pooling::Max, Pooling::LastToken, Pooling::MeanSqrtLen] {
            let v = pool(&hidden(), 1, 3, 2, &[0, 0, 0], mode);
            assert_eq!(v, vec![vec![0.0, 0.0]], "{mode:?}");
        }
    }

    #[test]
    fn normalize_unit_and_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut z = vec![0.0f32; 4];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 4]);
        assert!(z.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn pooling_modes_parse() {
        for p in
            [Pooling::Mean, Pooling::Cls, Pooling::Max, Pooling::LastToken, Pooling::MeanSqrtLen, Pooling::WeightedMean]
        {
            assert_eq!(Pooling::parse(p.name()), Some(p));
        }
        assert_eq!(Pooling::parse("median"), None);
    }

    #[test]
    fn strip_like_python() {
        assert_eq!(py_strip("  a b \n\t\u{1f}"), "a b");
        assert_eq!(py_strip(""), "");
    }

    #[test]
    fn max_length_sources() {
        let st = serde_json::json!({"max_seq_length": 256});
        let cfg = serde_json::json!({"max_position_embeddings": 512, "model_type": "bert"});
        let tok = serde_json::json!({"model_max_length": 512});
        assert_eq!(Embedder::max_length_of(&cfg, &tok, &st), 256);
        assert_eq!(Embedder::max_length_of(&cfg, &tok, &Value::Null), 512);
        let roberta = serde_json::json!({"max_position_embeddings": 514, "model_type": "xlm-roberta"});
        let huge = serde_json::json!({"model_max_length": 1e30});
        assert_eq!(Embedder::max_length_of(&roberta, &huge, &Value::Null), 512);
        assert_eq!(Embedder::max_length_of(&Value::Null, &Value::Null, &Value::Null), 512);
        // A stated window longer than the position table is capped by it.
        assert_eq!(Embedder::max_length_of(&cfg, &tok, &serde_json::json!({"max_seq_length": 8192})), 512);
    }
}

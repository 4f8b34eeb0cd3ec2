//! What the cross-encoder ([`crate::Model`]) and the bi-encoder ([`crate::Embedder`])
//! share: the two files of a model directory, a pool of ONNX sessions of one graph, and
//! feeding a padded batch of token rows to the graph's inputs.

use crate::batch::{self, BatchLimits};
use crate::error::{EngineError, ErrorKind, Result};
use crate::model::{Device, SessionOptions};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{Tensor, TensorElementType, ValueType};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The error for a model file that exists but cannot be loaded.
pub(crate) fn corrupt(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorKind::Corrupt, format!("could not load \"{}\"", path.display())).with_detail(e.to_string())
}

/// The error for ONNX Runtime failing to run the graph (or to take or give its tensors).
pub(crate) fn inference(e: ort::Error) -> EngineError {
    EngineError::new(ErrorKind::Inference, "ONNX Runtime failed to run the model").with_detail(e.to_string())
}

/// The graph (`opts.onnx_file`) and `tokenizer.json` of model `name` in `dir`, in that
/// order; an error if the directory or either file does not exist.
pub(crate) fn model_files(name: &str, dir: &Path, opts: &SessionOptions) -> Result<(PathBuf, PathBuf)> {
    if !dir.is_dir() {
        return Err(EngineError::new(ErrorKind::ModelNotFound, format!("model \"{name}\" does not exist"))
            .with_detail(format!("no directory \"{}\"", dir.display())));
    }
    let onnx = dir.join(&opts.onnx_file);
    let tok_path = dir.join("tokenizer.json");
    for f in [&onnx, &tok_path] {
        if !f.is_file() {
            return Err(EngineError::new(
                ErrorKind::MissingFile,
                format!("model \"{name}\" has no {}", f.file_name().and_then(|s| s.to_str()).unwrap_or("file")),
            )
            .with_detail(format!("\"{}\" does not exist", f.display())));
        }
    }
    Ok((onnx, tok_path))
}

/// Memory a model holds, estimated from its files: each of its `sessions` holds its own
/// copy of the weights in `onnx` (ONNX Runtime's arena and activations come on top); the
/// tokenizer is small beside them.
pub(crate) fn memory_bytes(onnx: &Path, tokenizer: &Path, sessions: usize) -> u64 {
    let file_len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    file_len(onnx) * sessions as u64 + file_len(tokenizer)
}

/// Which of a batch's tensors a graph input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    PositionIds,
}

/// A graph input: its name, the tensor it takes, and whether as int32 (else int64).
#[derive(Debug, Clone)]
struct InputSpec {
    name: String,
    kind: InputKind,
    int32: bool,
}

/// A tokenized row as the shared code reads it: a cross-encoder's pair or a bi-encoder's
/// text.
pub(crate) struct Tokens<'a> {
    /// Token ids, special tokens included.
    pub(crate) ids: &'a [i64],
    /// Token type ids, one per token.
    pub(crate) type_ids: &'a [i64],
    /// The text lost tokens (or characters) to the maximum length.
    pub(crate) truncated: bool,
}

/// Something that holds a tokenized row.
pub(crate) trait Tokenized {
    /// The row's tokens.
    fn tokens(&self) -> Tokens<'_>;
}

/// What a [`SessionPool::run_batched`] call did, for statistics.
pub(crate) struct Totals {
    /// Rows run.
    pub(crate) rows: usize,
    /// Their tokens, padding not included.
    pub(crate) tokens: usize,
    /// Rows that lost tokens (or characters) to the maximum length.
    pub(crate) truncated: usize,
    /// Batches run.
    pub(crate) batches: usize,
}

/// A batch of token rows padded to its longest row: the tensors a graph may take, each
/// `[rows, width]` row-major.
pub(crate) struct Padded {
    /// How many rows.
    rows: usize,
    /// Tokens per row, padding included.
    pub(crate) width: usize,
    /// Token ids, `pad_id` over padding.
    ids: Vec<i64>,
    /// 1 over each row's tokens, 0 over its padding.
    pub(crate) mask: Vec<i64>,
    /// Token type ids (0 over padding).
    types: Vec<i64>,
    /// Each token's position in its row, from 0 (0 over padding).
    pub(crate) positions: Vec<i64>,
}

impl Padded {
    /// Pads `rows` to the longest row (at least 1 wide) with `pad_id`, on the left when
    /// `left`, else on the right.
    pub(crate) fn new<R: Tokenized>(rows: &[&R], pad_id: i64, left: bool) -> Self {
        let n = rows.len();
        let width = rows.iter().map(|r| r.tokens().ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; n * width];
        let mut mask = vec![0i64; n * width];
        let mut types = vec![0i64; n * width];
        let mut positions = vec![0i64; n * width];
        for (r, row) in rows.iter().enumerate() {
            let row = row.tokens();
            let len = row.ids.len();
            let start = if left { width - len } else { 0 };
            let base = r * width + start;
            ids[base..base + len].copy_from_slice(row.ids);
            types[base..base + len].copy_from_slice(row.type_ids);
            for j in 0..len {
                mask[base + j] = 1;
                positions[base + j] = j as i64;
            }
        }
        Padded { rows: n, width, ids, mask, types, positions }
    }
}

/// One or more sessions of the same graph, and the inputs it is fed: batches run on as
/// many sessions at once.
pub(crate) struct SessionPool {
    /// The sessions, each with its own copy of the weights.
    sessions: Vec<Mutex<Session>>,
    /// Signalled when a session is given back, for callers waiting for any free one.
    released: Condvar,
    /// The lock `released` is waited on with.
    released_lock: Mutex<()>,
    /// The graph's inputs, in graph order.
    inputs: Vec<InputSpec>,
}

impl SessionPool {
    /// Loads `opts.sessions` (at least one) sessions of the graph in `onnx` for model
    /// `name`, and maps the graph's inputs.
    pub(crate) fn load(env: &Environment, name: &str, onnx: &Path, opts: &SessionOptions) -> Result<Self> {
        let mut sessions = Vec::new();
        for _ in 0..opts.sessions.max(1) {
            sessions.push(Self::session(env, name, onnx, opts)?);
        }
        let inputs = Self::discover_inputs(name, sessions[0].get_mut())?;
        Ok(SessionPool { sessions, released: Condvar::new(), released_lock: Mutex::new(()), inputs })
    }

    /// One session of the graph in `onnx`.
    fn session(env: &Environment, name: &str, onnx: &Path, opts: &SessionOptions) -> Result<Mutex<Session>> {
        let builder = (|| -> std::result::Result<_, ort::Error> {
            Ok(Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(opts.intra_threads.max(1))?
                .with_inter_threads(1)?
                .with_intra_op_spinning(opts.spin)?
                .with_inter_op_spinning(false)?)
        })()
        .map_err(|e| {
            EngineError::new(ErrorKind::Runtime, "could not configure the ONNX session").with_detail(e.to_string())
        })?;
        let mut builder = match opts.device {
            Device::Cpu => builder,
            Device::Cuda(n) => {
                let cuda = ort::ep::CUDA::default().with_device_id(n).build().error_on_failure();
                builder.with_execution_providers([cuda]).map_err(|e| {
                    EngineError::new(ErrorKind::Device, format!("could not start CUDA device {n} for model \"{name}\""))
                        .with_detail(e.to_string())
                })?
            }
        };
        let session = builder.commit_from_file(onnx).map_err(|e| corrupt(onnx, e))?;
        Ok(Mutex::new(session))
    }

    /// Maps the graph's declared inputs to what we know how to feed, as
    /// text-embeddings-inference does; an input we cannot fill is an error now, not later.
    fn discover_inputs(name: &str, session: &Session) -> Result<Vec<InputSpec>> {
        let mut specs = Vec::new();
        for input in session.inputs() {
            let kind = match input.name() {
                "input_ids" => InputKind::InputIds,
                "attention_mask" => InputKind::AttentionMask,
                "token_type_ids" => InputKind::TokenTypeIds,
                "position_ids" => InputKind::PositionIds,
                other => {
                    return Err(EngineError::new(
                        ErrorKind::Unsupported,
                        format!("model \"{name}\" has an input \"{other}\" that pg_rerank cannot fill"),
                    )
                    .with_detail("supported inputs are input_ids, attention_mask, token_type_ids and position_ids"))
                }
            };
            let int32 = match input.dtype() {
                ValueType::Tensor { ty: TensorElementType::Int64, .. } => false,
                ValueType::Tensor { ty: TensorElementType::Int32, .. } => true,
                other => {
                    return Err(EngineError::new(
                        ErrorKind::Unsupported,
                        format!(
                            "model \"{name}\" input \"{}\" has type {other}, expected an int64 or int32 tensor",
                            input.name()
                        ),
                    ))
                }
            };
            specs.push(InputSpec { name: input.name().to_string(), kind, int32 });
        }
        if !specs.iter().any(|s| s.kind == InputKind::InputIds) {
            return Err(EngineError::new(ErrorKind::Unsupported, format!("model \"{name}\" has no input_ids input")));
        }
        Ok(specs)
    }

    /// The first session, for checking the graph's outputs while loading.
    pub(crate) fn first(&mut self) -> &Session {
        self.sessions[0].get_mut()
    }

    /// How many sessions there are: how many batches can run at once.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Names of the graph inputs that are fed, in graph order.
    pub(crate) fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|s| s.name.as_str()).collect()
    }

    /// Runs `batch` on whichever session is free first and returns what `read` takes from
    /// the outputs (the session is held until `read` returns).
    pub(crate) fn run<T>(&self, mut batch: Padded, read: impl FnOnce(&SessionOutputs<'_>) -> Result<T>) -> Result<T> {
        let shape = [batch.rows as i64, batch.width as i64];
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            // Each input kind is fed once: hand its buffer over instead of copying it.
            let data = std::mem::take(match spec.kind {
                InputKind::InputIds => &mut batch.ids,
                InputKind::AttentionMask => &mut batch.mask,
                InputKind::TokenTypeIds => &mut batch.types,
                InputKind::PositionIds => &mut batch.positions,
            });
            let value: SessionInputValue<'_> = if spec.int32 {
                let v: Vec<i32> = data.iter().map(|&x| x as i32).collect();
                Tensor::from_array((shape, v)).map_err(inference)?.into()
            } else {
                Tensor::from_array((shape, data)).map_err(inference)?.into()
            };
            feed.push((Cow::Borrowed(spec.name.as_str()), value));
        }

        // Whichever session is free first: batches run side by side on as many threads as
        // there are sessions, and a batch waiting for one never leaves another idle.
        let mut session = self.acquire();
        let out = session.run(feed).map_err(inference).and_then(|outputs| read(&outputs));
        drop(session);
        self.released.notify_one();
        out
    }

    /// A free session, waiting for one if all are busy.
    fn acquire(&self) -> MutexGuard<'_, Session> {
        loop {
            if let Some(s) = self.sessions.iter().find_map(|s| s.try_lock()) {
                return s;
            }
            let mut idle = self.released_lock.lock();
            // Bounded: a release between try_lock and this wait is seen within 1 ms.
            self.released.wait_for(&mut idle, std::time::Duration::from_millis(1));
        }
    }

    /// Runs `rows` batched by length under `limits`, in waves of as many batches as there
    /// are sessions; `check` runs before every wave and may stop the work by returning an
    /// error (cancellation). `put` gets each row's result with the row's index.
    pub(crate) fn run_batched<R: Tokenized + Sync, T: Send>(
        &self,
        rows: &[R],
        limits: BatchLimits,
        check: &mut dyn FnMut() -> Result<()>,
        run: impl Fn(&[&R]) -> Result<Vec<T>> + Sync,
        mut put: impl FnMut(usize, T),
    ) -> Result<Totals> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.tokens().ids.len()).collect();
        let mut totals = Totals {
            rows: rows.len(),
            tokens: lengths.iter().sum(),
            truncated: rows.iter().filter(|r| r.tokens().truncated).count(),
            batches: 0,
        };
        let plan = batch::plan(&lengths, limits);
        for wave in plan.chunks(self.sessions.len()) {
            check()?;
            let batches: Vec<Vec<&R>> = wave.iter().map(|b| b.iter().map(|&i| &rows[i]).collect()).collect();
            for (b, out) in wave.iter().zip(self.run_many(&batches, |batch| run(batch))) {
                for (&i, v) in b.iter().zip(out?) {
                    put(i, v);
                }
                totals.batches += 1;
            }
        }
        Ok(totals)
    }

    /// Runs `run` on each of `batches`, as many at once as there are sessions, on scoped
    /// threads that only run the model; results are in the order of `batches`.
    pub(crate) fn run_many<B: Sync, T: Send>(
        &self,
        batches: &[B],
        run: impl Fn(&B) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let threads = self.sessions.len().min(batches.len());
        if threads <= 1 {
            return batches.iter().map(run).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<Option<Result<T>>> = (0..batches.len()).map(|_| None).collect();
        let done: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(b) = batches.get(i) else { break };
                            out.push((i, run(b)));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for (i, r) in done.into_iter().flatten() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EngineError::new(ErrorKind::Inference, "an inference thread panicked"))))
            .collect()
    }
}

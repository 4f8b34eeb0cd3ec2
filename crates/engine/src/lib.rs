//! pg_rerank's engine: everything between text and a relevance score, with no PostgreSQL
//! inside. Tokenize (query, document) pairs with the model's `tokenizer.json`, batch them
//! by length under a token budget, run the ONNX graph with ONNX Runtime, and turn its
//! logits into scores. Tested and benchmarked with plain cargo.

pub mod batch;
pub mod cache;
pub mod chunk;
pub mod config;
pub mod diversity;
pub mod embed;
pub mod error;
pub mod evaluate;
pub mod model;
pub mod preselect;
pub mod rank;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod score_cache;
mod session;

pub use batch::BatchLimits;
pub use chunk::{ChunkOptions, Splitter};
pub use config::{Family, Head, ModelConfig};
pub use embed::{is_bi_encoder, EmbedStats, Embedder, EncodedText, Pooling, TextKind};
pub use error::{EngineError, ErrorKind, Result};
pub use model::{finish, Device, Encoded, Model, ScoreOptions, ScoreStats, SessionOptions};
pub use rank::rank;
pub use scheduler::{Batch, Finished, Policy, Priority, Scheduler};

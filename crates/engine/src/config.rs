//! What a model directory says about itself: family, maximum length, labels, padding.
//!
//! Read from `config.json` and `tokenizer_config.json` when present, and from the
//! truncation block of `tokenizer.json`; the ONNX graph's own inputs are checked later,
//! when the session is open.

use crate::error::{EngineError, ErrorKind, Result};
use serde_json::Value;
use std::fs;
use std::path::Path;

/// Architecture family, from `config.json`'s `model_type`. Only informative for encoders:
/// the inputs fed are those the ONNX graph declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Family {
    Bert,
    XlmRoberta,
    DebertaV2,
    ModernBert,
    /// Decoder-only LLM reranker scored through a prompt (see [`Prompt`]).
    Qwen3,
    /// Any other encoder with a classification head (`model_type` kept as written).
    Other(String),
}

impl Family {
    fn from_model_type(t: &str) -> Self {
        match t {
            "bert" | "distilbert" | "electra" | "mpnet" => Family::Bert,
            "xlm-roberta" | "roberta" | "camembert" => Family::XlmRoberta,
            "deberta-v2" | "deberta" => Family::DebertaV2,
            "modernbert" => Family::ModernBert,
            "qwen3" | "qwen2" => Family::Qwen3,
            other => Family::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Family::Bert => "bert",
            Family::XlmRoberta => "xlm-roberta",
            Family::DebertaV2 => "deberta-v2",
            Family::ModernBert => "modernbert",
            Family::Qwen3 => "qwen3",
            Family::Other(s) => s,
        }
    }
}

/// How the model's output becomes one score per pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A sequence-classification head: `logits [batch, num_labels]`. One label: the logit is
    /// the raw score and sigmoid gives the probability. Two labels: the raw score is
    /// `logit[positive] - logit[other]`, whose sigmoid is the softmax of the positive class.
    Classifier { num_labels: usize, positive: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Right,
    Left,
}

/// LLM rerankers (Qwen3-Reranker style) read one prompt holding query and document; the
/// exported graph returns `logit("yes") - logit("no")` at the last position. Read from
/// `reranker_prompt.json`: a `template` with `{prefix}`, `{instruction}`, `{query}`,
/// `{doc}` and `{suffix}`, and the values of the fixed parts.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub template: String,
    pub prefix: String,
    pub suffix: String,
    pub instruction: String,
}

impl Prompt {
    /// The prompt for one pair, with the model's own instruction.
    pub fn render(&self, query: &str, doc: &str) -> String {
        self.render_with(None, query, doc)
    }

    /// The prompt for one pair, with `instruction` in place of the model's own when given.
    /// One pass over the template: text put in (the instruction, query and document come
    /// from users) is never searched for placeholders.
    pub fn render_with(&self, instruction: Option<&str>, query: &str, doc: &str) -> String {
        let fill = [
            ("{prefix}", self.prefix.as_str()),
            ("{suffix}", self.suffix.as_str()),
            ("{instruction}", instruction.unwrap_or(&self.instruction)),
            ("{query}", query),
            ("{doc}", doc),
        ];
        let mut out = String::with_capacity(self.template.len() + query.len() + doc.len() + 256);
        let mut rest = self.template.as_str();
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            match fill.iter().find(|(name, _)| rest.starts_with(name)) {
                Some((name, value)) => {
                    out.push_str(value);
                    rest = &rest[name.len()..];
                }
                None => {
                    out.push('{');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    /// Longest input in tokens, special tokens included.
    pub max_length: usize,
    pub head: Head,
    pub pad_id: i64,
    pub padding_side: PaddingSide,
    /// Present for prompt-based (LLM) rerankers.
    pub prompt: Option<Prompt>,
}

pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            EngineError::new(ErrorKind::Corrupt, format!("could not parse \"{}\"", path.display()))
                .with_detail(e.to_string())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::new(ErrorKind::Corrupt, format!("could not read \"{}\"", path.display()))
            .with_detail(e.to_string())),
    }
}

fn as_len(v: Option<&Value>) -> Option<usize> {
    // tokenizer_config.json writes "no limit" as 1e30; ignore anything absurd.
    v.and_then(Value::as_f64).filter(|x| *x >= 8.0 && *x <= 1_048_576.0).map(|x| x as usize)
}

impl ModelConfig {
    /// Reads the configuration files of a model directory. `tokenizer` is the parsed
    /// `tokenizer.json`, whose truncation block (when present) is the most specific
    /// statement of the maximum length.
    pub fn discover(dir: &Path, tokenizer: &Value) -> Result<Self> {
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);

        let family = Family::from_model_type(config.get("model_type").and_then(Value::as_str).unwrap_or("bert"));

        // Maximum length: tokenizer.json truncation, else tokenizer_config's
        // model_max_length, else the position table (RoBERTa-style models reserve 2).
        let from_tokenizer = as_len(tokenizer.get("truncation").and_then(|t| t.get("max_length")));
        let from_tok_config = as_len(tok_config.get("model_max_length"));
        let from_positions = as_len(config.get("max_position_embeddings")).map(|n| match family {
            Family::XlmRoberta => n.saturating_sub(2),
            _ => n,
        });
        let max_length = from_tokenizer.or(from_tok_config).or(from_positions).unwrap_or(512);
        let max_length = match from_positions {
            Some(p) => max_length.min(p),
            None => max_length,
        };

        let num_labels = config
            .get("id2label")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .or_else(|| config.get("num_labels").and_then(Value::as_u64).map(|n| n as usize))
            .unwrap_or(1);
        let positive = if num_labels == 2 { positive_label(&config) } else { 0 };

        let pad_id = config
            .get("pad_token_id")
            .and_then(Value::as_i64)
            .or_else(|| pad_from_tokenizer(tokenizer, &tok_config))
            .unwrap_or(0);
        let padding_side = match tok_config.get("padding_side").and_then(Value::as_str) {
            Some("left") => PaddingSide::Left,
            _ => PaddingSide::Right,
        };

        let prompt = read_json(&dir.join("reranker_prompt.json"))?.map(|p| {
            let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").replace("\\n", "\n");
            Prompt {
                template: field("template"),
                prefix: field("prefix"),
                suffix: field("suffix"),
                instruction: field("instruction"),
            }
        });
        if prompt.as_ref().is_some_and(|p| !p.template.contains("{doc}")) {
            return Err(EngineError::new(ErrorKind::Corrupt, "reranker_prompt.json has no {doc} in its template"));
        }

        Ok(ModelConfig {
            family,
            max_length,
            head: Head::Classifier { num_labels, positive },
            pad_id,
            padding_side,
            prompt,
        })
    }
}

/// Index of the "relevant" class of a two-label head: a label whose name says so, else 1.
fn positive_label(config: &Value) -> usize {
    let Some(map) = config.get("id2label").and_then(Value::as_object) else { return 1 };
    for (idx, name) in map {
        let n = name.as_str().unwrap_or("").to_ascii_lowercase();
        if ["relevant", "positive", "entailment", "yes", "true"].contains(&n.as_str()) {
            if let Ok(i) = idx.parse() {
                return i;
            }
        }
    }
    1
}

fn pad_from_tokenizer(tokenizer: &Value, tok_config: &Value) -> Option<i64> {
    let pad = tok_config.get("pad_token").and_then(Value::as_str)?;
    tokenizer
        .get("added_tokens")?
        .as_array()?
        .iter()
        .find_map(|t| (t.get("content")?.as_str()? == pad).then(|| t.get("id")?.as_i64()).flatten())
}

/// The files a model's configuration is read from.
const CONFIG_FILES: [&str; 4] = ["tokenizer.json", "config.json", "tokenizer_config.json", "reranker_prompt.json"];

/// Size and modification time of each of [`CONFIG_FILES`] (None: absent or unreadable).
type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

/// Model directories' configurations, kept between calls (of `rerank_models()`) and read
/// again only when one of the files they come from changed size or modification time:
/// parsing every `tokenizer.json` (megabytes of JSON for large vocabularies) on each call
/// made a listing cost as much as loading every tokenizer.
#[derive(Default)]
pub struct ConfigCache {
    entries: std::collections::HashMap<std::path::PathBuf, (Stamp, Option<ModelConfig>)>,
    parses: usize,
}

impl ConfigCache {
    /// The configuration of the model in `dir` (None when its files do not give one).
    pub fn get(&mut self, dir: &Path) -> Option<ModelConfig> {
        let stamp: Stamp = CONFIG_FILES
            .iter()
            .map(|f| fs::metadata(dir.join(f)).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect();
        if let Some((seen, config)) = self.entries.get(dir) {
            if *seen == stamp {
                return config.clone();
            }
        }
        self.parses += 1;
        let config = fs::read(dir.join("tokenizer.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|tok| ModelConfig::discover(dir, &tok).ok());
        self.entries.insert(dir.to_path_buf(), (stamp, config.clone()));
        config
    }

    /// Forgets the directories `keep` says no to (models that are gone).
    pub fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        self.entries.retain(|dir, _| keep(dir));
    }

    /// Times a directory's files were parsed.
    pub fn parses(&self) -> usize {
        self.parses
    }
}

#[cfg(test)]
mod config_cache_tests {
    use super::*;

    #[test]
    fn files_are_parsed_again_only_when_they_change() {
        let dir = std::env::temp_dir().join(format!("pg_rerank_config_cache_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/tiny/bert");
        let shared = std::env::var_os("PG_RERANK_SHARED")
            .map(|s| Path::new(&s).join("models/tiny/bert"))
            .unwrap_or(shared);
        fs::copy(shared.join("tokenizer.json"), dir.join("tokenizer.json")).expect("copy");
        fs::write(dir.join("config.json"), r#"{"model_type": "bert", "max_position_embeddings": 64}"#).expect("write");
        let mut cache = ConfigCache::default();
        for _ in 0..3 {
            assert_eq!(cache.get(&dir).expect("config").max_length, 64);
        }
        assert_eq!(cache.parses(), 1, "read once, then from the cache");
        fs::write(dir.join("config.json"), r#"{"model_type": "bert", "max_position_embeddings": 128}"#).expect("write");
        assert_eq!(cache.get(&dir).expect("config").max_length, 128, "a changed file is read again");
        assert_eq!(cache.parses(), 2);
        fs::remove_file(dir.join("tokenizer.json")).expect("rm");
        assert!(cache.get(&dir).is_none(), "a removed file is seen");
        cache.retain(|_| false);
        assert!(cache.entries.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod prompt_tests {
    use super::Prompt;

    fn prompt() -> Prompt {
        Prompt {
            template: "{prefix}<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}{suffix}".into(),
            prefix: "[".into(),
            suffix: "]".into(),
            instruction: "Find packages".into(),
        }
    }

    #[test]
    fn an_instruction_replaces_the_models_own() {
        let p = prompt();
        assert_eq!(p.render("zip", "gzip"), "[<Instruct>: Find packages\n<Query>: zip\n<Document>: gzip]");
        assert_eq!(p.render_with(Some("Find bugs"), "zip", "gzip"), "[<Instruct>: Find bugs\n<Query>: zip\n<Document>: gzip]");
        assert_eq!(p.render_with(None, "zip", "gzip"), p.render("zip", "gzip"));
    }

    #[test]
    fn text_put_in_is_never_expanded() {
        let p = prompt();
        let out = p.render_with(Some("{doc} {query} {suffix}"), "{instruction}", "{prefix} {x");
        assert_eq!(out, "[<Instruct>: {doc} {query} {suffix}\n<Query>: {instruction}\n<Document>: {prefix} {x]");
    }
}


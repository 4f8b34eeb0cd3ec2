//! In-database tests (`cargo pgrx test`): the SQL functions on the real MiniLM model.
//! Error codes and messages are covered by the pg_regress golden files in tests/pg_regress.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn rows(sql: &str) -> Vec<(i32, f32)> {
        Spi::connect(|c| {
            c.select(sql, None, &[])
                .expect("query runs")
                .map(|r| {
                    (
                        r.get::<i32>(1).expect("idx").expect("not null"),
                        r.get::<f32>(2).expect("score").expect("not null"),
                    )
                })
                .collect()
        })
    }

    const DOCS: &str = "ARRAY['zlib is a library implementing the deflate compression method found in gzip and PKZIP',
        NULL,
        'GNU Chess is a chess-playing program',
        'a lossless data-compression library used by gzip and png']";

    #[pg_test]
    fn rerank_orders_and_skips_nulls() {
        let r = rows(&format!("SELECT idx, score FROM rerank('compression library', {DOCS})"));
        assert_eq!(r.len(), 3, "the NULL element is skipped");
        assert!(r.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {r:?}");
        assert_eq!(r.last().map(|x| x.0), Some(3), "the chess program is least relevant: {r:?}");
        assert!(r.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
        let top = rows(&format!("SELECT idx, score FROM rerank('compression library', {DOCS}, top_n => 1)"));
        assert_eq!(top, r[..1].to_vec());
        assert!(rows("SELECT * FROM rerank('q', ARRAY[]::text[])").is_empty());
        assert!(rows("SELECT * FROM rerank('q', NULL)").is_empty());
    }

    #[pg_test]
    fn rerank_score_agrees_with_rerank_and_raw_is_the_logit() {
        let p = Spi::get_one::<f32>("SELECT rerank_score('chess engine', 'GNU Chess is a chess-playing program')")
            .expect("spi")
            .expect("not null");
        let raw = Spi::get_one::<f32>(
            "SELECT rerank_score('chess engine', 'GNU Chess is a chess-playing program', raw => true)",
        )
        .expect("spi")
        .expect("not null");
        assert!((p - 1.0 / (1.0 + (-raw).exp())).abs() < 1e-6, "sigmoid(raw) = score");
        let r = rows("SELECT idx, score FROM rerank('chess engine', ARRAY['GNU Chess is a chess-playing program'])");
        assert!((r[0].1 - p).abs() < 1e-6);
        assert_eq!(Spi::get_one::<f32>("SELECT rerank_score(NULL, 'doc')").expect("spi"), None);
    }

    #[pg_test]
    fn rerank_topk_for_every_id_type() {
        Spi::run(
            "CREATE TEMP TABLE docs AS SELECT * FROM (VALUES
                (1, 'GNU Chess is a chess-playing program'),
                (2, 'zlib is a library implementing the deflate compression method'),
                (3, 'a lossless data-compression library used by gzip'),
                (4, NULL)) v(id, body)",
        )
        .expect("table");
        let best = |id_expr: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT rerank_topk('compression library', {id_expr}, body, 2)::text FROM docs"
            ))
            .expect("spi")
            .expect("not null")
        };
        let ints = best("id");
        assert!(ints == "{2,3}" || ints == "{3,2}", "{ints}");
        assert_eq!(best("id::bigint"), ints);
        assert_eq!(best("id::text"), ints);
        let uuid = best("('00000000-0000-0000-0000-00000000000' || id)::uuid");
        assert!(uuid.contains("00000000-0000-0000-0000-000000000002"), "{uuid}");
        // The scores aggregate returns the same ranking's scores, best first.
        let (ids, scores) = Spi::get_two::<Vec<i32>, Vec<f32>>(
            "SELECT rerank_topk('compression library', id, body, 3), rerank_topk_scores('compression library', id, body, 3) FROM docs",
        )
        .expect("spi");
        let (ids, scores) = (ids.expect("ids"), scores.expect("scores"));
        assert_eq!(ids.len(), 3, "k = 3 of 3 scored rows (NULL body skipped)");
        assert_eq!(scores.len(), 3);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        let direct = Spi::get_one::<f32>(&format!(
            "SELECT rerank_score('compression library', body) FROM docs WHERE id = {}",
            ids[0]
        ))
        .expect("spi")
        .expect("not null");
        assert!((direct - scores[0]).abs() < 1e-6);
    }

    #[pg_test]
    fn models_are_listed() {
        let names: Vec<String> = Spi::connect(|c| {
            c.select("SELECT name FROM rerank_models() WHERE family IS NOT NULL", None, &[])
                .expect("select")
                .map(|r| r.get::<String>(1).expect("name").expect("not null"))
                .collect()
        });
        for want in ["minilm-debian", "tiny/bert", "tiny/deberta-v2", "tiny/modernbert", "tiny/xlm-roberta"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let ml =
            Spi::get_one::<i32>("SELECT max_length FROM rerank_models() WHERE name = 'minilm-debian'").expect("spi");
        assert_eq!(ml, Some(256));
    }

    #[pg_test(error = "too many documents to rerank: 3, the limit is 2")]
    fn max_docs_is_enforced() {
        Spi::run("SET pg_rerank.max_docs = 2").expect("set");
        Spi::run("SELECT * FROM rerank('q', ARRAY['a','b','c'])").expect("fails");
    }

    #[pg_test(error = "model \"no-such-model\" does not exist")]
    fn unknown_model_is_an_error() {
        Spi::run("SELECT * FROM rerank('q', ARRAY['a'], model => 'no-such-model')").expect("fails");
    }

    fn show(name: &str) -> String {
        Spi::get_one::<String>(&format!("SHOW {name}")).expect("spi").expect("not null")
    }

    #[pg_test]
    fn worker_settings_defaults() {
        assert_eq!(show("pg_rerank.execution"), "auto");
        assert_eq!(show("pg_rerank.device"), "cpu");
        assert_eq!(show("pg_rerank.device_fallback"), "off");
        assert_eq!(show("pg_rerank.worker_threads"), "0");
        assert_eq!(show("pg_rerank.batch_wait"), "2ms");
        assert_eq!(show("pg_rerank.max_queued_pairs"), "20000");
        assert_eq!(show("pg_rerank.queue_timeout"), "10s");
        assert_eq!(show("pg_rerank.priority"), "auto");
        assert_eq!(show("pg_rerank.bulk_share"), "20");
        assert_eq!(show("pg_rerank.worker_memory"), "2GB");
        assert_eq!(show("pg_rerank.max_pairs"), "100000");
        assert_eq!(show("pg_rerank.cache_size"), "16MB");
        assert_eq!(show("pg_rerank.cache"), "on");
        Spi::run("SET pg_rerank.cache = off").expect("any user may turn the cache off");
        Spi::run("SET pg_rerank.priority = bulk").expect("any user may lower a session's priority");
        Spi::run("SET pg_rerank.execution = backend").expect("set");
        Spi::run("SET pg_rerank.queue_timeout = '250ms'").expect("set");
        assert_eq!(show("pg_rerank.queue_timeout"), "250ms");
    }

    /// This test server does not preload pg_rerank: auto scores in the backend, the
    /// worker reports itself absent, and the statistics view is empty.
    #[pg_test]
    fn without_preload_auto_runs_in_the_backend() {
        let state = Spi::get_one::<String>("SELECT state FROM pg_rerank_worker()").expect("spi");
        assert_eq!(state.as_deref(), Some("not preloaded"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pg_rerank_stats").expect("spi"), Some(0));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pg_rerank_progress").expect("spi"), Some(0));
        let capacity = Spi::get_one::<i64>("SELECT cache_capacity FROM pg_rerank_worker()").expect("spi");
        assert_eq!(capacity, Some(0), "no shared memory, no score cache");
        Spi::run("SELECT pg_rerank_cache_reset()").expect("a no-op without preload");
        let auto = rows("SELECT idx, score FROM rerank('chess', ARRAY['GNU Chess', 'zlib'])");
        Spi::run("SET pg_rerank.execution = backend").expect("set");
        let backend = rows("SELECT idx, score FROM rerank('chess', ARRAY['GNU Chess', 'zlib'])");
        assert_eq!(auto, backend);
    }

    #[pg_test(error = "the pg_rerank background worker is not available")]
    fn worker_execution_needs_preload() {
        Spi::run("SET pg_rerank.execution = worker").expect("set");
        Spi::run("SELECT * FROM rerank('q', ARRAY['a'])").expect("fails");
    }

    #[pg_test(error = "invalid value for parameter \"pg_rerank.execution\": \"gpu\"")]
    fn execution_values_are_checked() {
        Spi::run("SET pg_rerank.execution = gpu").expect("fails");
    }

    #[pg_test(error = "parameter \"pg_rerank.device\" cannot be changed now")]
    fn device_is_a_server_setting() {
        Spi::run("SET pg_rerank.device = 'cuda'").expect("fails");
    }

    /// Preloaded, the library path is a server-start setting (the pg_regress tests check
    /// that on the preloaded cluster); loaded on demand, as here, Postgres allows that
    /// only to preloaded libraries, so it is the superuser's.
    #[pg_test]
    fn onnxruntime_belongs_to_the_superuser_without_preload() {
        let context = Spi::get_one::<String>("SELECT context FROM pg_settings WHERE name = 'pg_rerank.onnxruntime'")
            .expect("spi");
        assert_eq!(context.as_deref(), Some("superuser"));
    }

    #[pg_test(error = "too many pairs to score: 3, the limit is 2")]
    fn max_pairs_is_enforced() {
        Spi::run("SET pg_rerank.max_pairs = 2").expect("set");
        Spi::run("SELECT rerank_pairs(ARRAY['q','q','q'], ARRAY['a','b','c'])").expect("fails");
    }

    #[pg_test]
    fn a_session_in_bulk_priority_scores_the_same() {
        let auto = rows("SELECT idx, score FROM rerank('chess', ARRAY['GNU Chess', 'zlib'])");
        Spi::run("SET pg_rerank.priority = bulk").expect("set");
        assert_eq!(rows("SELECT idx, score FROM rerank('chess', ARRAY['GNU Chess', 'zlib'])"), auto);
    }

    fn embedding(sql: &str) -> Option<Vec<f32>> {
        Spi::get_one::<Vec<f32>>(sql).expect("spi")
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    }

    #[pg_test]
    fn embed_gives_unit_vectors_and_null_for_null() {
        Spi::run("SET pg_rerank.embedding_model = 'all-minilm-l6-v2'").expect("set");
        let v = embedding("SELECT embed('zlib compression library')").expect("not null");
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length: {norm}");
        let named = embedding("SELECT embed('zlib compression library', 'all-minilm-l6-v2')").expect("not null");
        assert_eq!(named, v, "the setting and the argument name the same model");
        // all-MiniLM-L6-v2 has no prompts: a document is embedded as a query is.
        let doc = embedding("SELECT embed('zlib compression library', kind => 'document')").expect("not null");
        assert!(cosine(&doc, &v) > 0.99999);
        assert_eq!(embedding("SELECT embed(NULL)"), None);
        let related = embedding("SELECT embed('a lossless data-compression library used by gzip')").expect("v");
        let unrelated = embedding("SELECT embed('GNU Chess is a chess-playing program')").expect("v");
        assert!(cosine(&v, &related) > cosine(&v, &unrelated) + 0.2, "related texts are closer");
    }

    #[pg_test]
    fn embed_batch_keeps_positions_and_nulls() {
        Spi::run("SET pg_rerank.embedding_model = 'all-minilm-l6-v2'").expect("set");
        let got: Vec<(i32, Option<Vec<f32>>)> = Spi::connect(|c| {
            c.select(
                "SELECT idx, embedding FROM embed_batch(ARRAY['zlib compression library', NULL, 'GNU Chess', ''])",
                None,
                &[],
            )
            .expect("select")
            .map(|r| (r.get::<i32>(1).expect("idx").expect("not null"), r.get::<Vec<f32>>(2).expect("embedding")))
            .collect()
        });
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(got[1].1.is_none(), "a NULL element gives a NULL embedding");
        let single = embedding("SELECT embed('zlib compression library', kind => 'document')").expect("v");
        let first = got[0].1.as_ref().expect("embedded");
        assert!(cosine(first, &single) > 0.99999, "batched as embedded alone");
        assert_eq!(got[3].1.as_ref().map(Vec::len), Some(384), "an empty text has an embedding too");
        let none = Spi::get_one::<i64>("SELECT count(*) FROM embed_batch(NULL)").expect("spi");
        assert_eq!(none, Some(0));
    }

    #[pg_test(error = "model \"no-such-model\" does not exist")]
    fn embed_unknown_model_is_an_error() {
        Spi::run("SELECT embed('x', 'no-such-model')").expect("fails");
    }

    #[pg_test(error = "model \"minilm-debian\" is a cross-encoder, not a bi-encoder")]
    fn embed_refuses_a_cross_encoder() {
        Spi::run("SELECT embed('x', 'minilm-debian')").expect("fails");
    }

    #[pg_test(error = "model \"all-minilm-l6-v2\" is a bi-encoder, not a cross-encoder")]
    fn rerank_refuses_a_bi_encoder() {
        Spi::run("SELECT * FROM rerank('q', ARRAY['a'], model => 'all-minilm-l6-v2')").expect("fails");
    }

    #[pg_test(error = "invalid embedding kind \"passage\"")]
    fn embed_kind_is_checked() {
        Spi::run("SELECT embed('x', 'all-minilm-l6-v2', 'passage')").expect("fails");
    }

    #[pg_test(error = "no embedding model selected")]
    fn embed_needs_a_model() {
        Spi::run("SELECT embed('x')").expect("fails");
    }

    #[pg_test]
    fn models_say_their_kind() {
        let (kind, dims) =
            Spi::get_two::<String, i32>("SELECT kind, dimensions FROM rerank_models() WHERE name = 'all-minilm-l6-v2'")
                .expect("spi");
        assert_eq!((kind.as_deref(), dims), (Some("bi-encoder"), Some(384)));
        let (kind, dims) =
            Spi::get_two::<String, i32>("SELECT kind, dimensions FROM rerank_models() WHERE name = 'minilm-debian'")
                .expect("spi");
        assert_eq!((kind.as_deref(), dims), (Some("cross-encoder"), None));
    }
}

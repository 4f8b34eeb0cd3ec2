//! pg_rerank: the PostgreSQL glue around `pg_rerank_engine`. SQL functions live in
//! `api`, settings in `guc`, the per-backend model cache in `models`, and the mapping of
//! engine errors to SQLSTATEs in `error`.

use pgrx::prelude::*;

mod api;
mod error;
mod guc;
mod models;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

#[cfg(not(panic = "unwind"))]
compile_error!("pg_rerank must be built with panic = \"unwind\": pgrx turns Postgres errors into unwinding panics");

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The test cluster reads the shared models and the ONNX Runtime library from paths
    /// fixed at build time (the test server gets no other environment).
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            match option_env!("PG_RERANK_TEST_MODEL_DIR") {
                Some(_) => concat!("pg_rerank.model_dir = '", env!("PG_RERANK_TEST_MODEL_DIR"), "'"),
                None => concat!("pg_rerank.model_dir = '", env!("CARGO_MANIFEST_DIR"), "/../shared/models'"),
            },
            "pg_rerank.model = 'minilm-debian'",
        ]
    }
}

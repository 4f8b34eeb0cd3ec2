//! pg_rerank: the PostgreSQL glue around `pg_rerank_engine`. SQL functions live in
//! `api`, settings in `guc`, the per-backend model cache in `models`, and the mapping of
//! engine errors to SQLSTATEs in `error`. With shared_preload_libraries, `worker` runs
//! the shared model sessions (their queue is the engine's `Scheduler`); backends reach it
//! through `client`, the slots in `shmem` and the segment layout in `wire`.

use pgrx::prelude::*;

mod api;
mod client;
mod error;
mod guc;
mod models;
mod shmem;
mod stages;
#[cfg(any(test, feature = "pg_test"))]
mod tests;
mod wire;
mod worker;

#[cfg(not(panic = "unwind"))]
compile_error!("pg_rerank must be built with panic = \"unwind\": pgrx turns Postgres errors into unwinding panics");

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    // The worker and its shared memory exist only when the library is preloaded.
    // SAFETY: a plain read of a flag Postgres sets while it loads preloaded libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::install_hooks();
        worker::register();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The test cluster reads the shared models and the ONNX Runtime library from paths
    /// fixed at build time (the test server gets no other environment).
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        let dir = option_env!("PG_RERANK_TEST_MODEL_DIR")
            .map(str::to_string)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models").to_string());
        vec![Box::leak(format!("pg_rerank.model_dir = '{dir}'").into_boxed_str()), "pg_rerank.model = 'minilm-debian'"]
    }
}

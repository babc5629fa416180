//! The same trivial step (`noop`: JSON in, the same JSON out) written in
//! Rust, JavaScript (componentize-js) and Python (componentize-py): component
//! size, cold load (Cranelift compile, printed once per language), warm load
//! (from the on-disk compile cache), warm instantiation (fresh instance + the
//! trivial `names` export) and a warm step (fresh instance + the `noop` call).
//! Run with `cargo bench -p wrun-benches --bench polyglot`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_main};
use serde_json::json;
use std::sync::Arc;

use wrun_runtime::{
    Connection, Engine, Grants, JobOptions, Placement, SecretValue, StaticConnections,
};

fn components() -> [(&'static str, PathBuf); 3] {
    [
        ("rust", wrun_tests::guests_dir().join("noop.wasm")),
        ("javascript", wrun_tests::guests_js_dir().join("noop.wasm")),
        ("python", wrun_tests::guests_py_dir().join("noop.wasm")),
    ]
}

fn polyglot(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = std::env::temp_dir().join(format!("wrun-bench-polyglot-{}", std::process::id()));
    let input = json!({ "order": 1042, "customer": "acme", "items": [1, 2, 3] });
    let mut group = c.benchmark_group("polyglot_noop_step");
    group.sample_size(20);
    for (lang, path) in components() {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Cold: a fresh engine with an empty cache compiles the component.
        let engine = Engine::builder().cache_dir(&cache).build().expect("engine");
        let started = Instant::now();
        let component = engine.load(lang, &bytes).expect("load");
        println!(
            "{lang}: {} bytes, cold load (compile) {:.1?}",
            bytes.len(),
            started.elapsed()
        );

        group.bench_function(format!("{lang}/warm_load_from_cache"), |b| {
            b.iter(|| black_box(engine.load(lang, &bytes).expect("load")))
        });
        let grants = if lang == "python" {
            // componentize-py imports every interface of the world.
            Grants::builder()
                .net("example.invalid")
                .secret("unused", "unused")
                .env("unused")
        } else {
            Grants::builder()
        };
        let step = engine
            .step(lang, &component, grants.build().expect("grants"))
            .expect("step");
        let unused = Connection::new(
            "unused",
            SecretValue::new("unused-value"),
            ["example.invalid"],
            Placement::bearer(),
        )
        .expect("connection");
        let job = engine.job(
            JobOptions::new("bench", "polyglot")
                .connections(Arc::new(StaticConnections::new().with(unused))),
        );
        // Instantiation with the cheapest possible call (the `names`
        // export), to separate the instance from the interpreter's work.
        group.bench_function(format!("{lang}/warm_instantiate"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(job.actions(&step).await.expect("actions")) })
        });
        group.bench_function(format!("{lang}/warm_step"), |b| {
            b.to_async(&rt).iter(|| async {
                let out = job.run(&step, "noop", &input).await.expect("run");
                black_box(out.output);
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&cache);
}

/// Runs the benchmarks of this file; written out instead of
/// `criterion_group!`, whose generated function has no doc comment.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    polyglot(&mut c);
}

criterion_main!(benches);

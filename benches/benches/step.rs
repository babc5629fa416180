//! A fresh-instance step (instantiate, call a no-op action, drop) through
//! wrun, against the same component run by raw wasmtime with the same engine
//! settings (pooling allocator, copy-on-write images, epoch interruption) and
//! a minimal WASI context. Run with `cargo bench -p wrun-benches --bench step`.

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use serde_json::json;
use wasmtime::component::{ComponentExportIndex, Linker, ResourceTable};
use wasmtime::{
    Config, Engine as RawEngine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wrun_runtime::{Engine, Grants, JobOptions};

fn noop_component() -> Vec<u8> {
    let path = wrun_tests::guests_dir().join("noop.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The action's error as raw wasmtime users would declare it.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(variant)]
enum ActionError {
    #[component(name = "unknown-action")]
    UnknownAction(String),
    #[component(name = "invalid-input")]
    InvalidInput(String),
    #[component(name = "failed")]
    Failed(String),
}

struct RawState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The engine settings wrun uses, for the raw baseline.
fn raw_engine() -> RawEngine {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    let n = 256;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n * 16)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_memories_per_component(2)
        .max_tables_per_component(4)
        .max_core_instances_per_component(32)
        .max_memory_size(1 << 30)
        .linear_memory_keep_resident(16 << 20)
        .table_keep_resident(1 << 20)
        .table_elements(20_000);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    RawEngine::new(&config).expect("raw engine")
}

fn fresh_instance_step(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bytes = noop_component();
    let input = json!({ "order": 1042, "customer": "acme", "items": [1, 2, 3] });
    let input_text = input.to_string();

    let engine = Engine::builder().build().expect("engine");
    let component = engine.load("noop", &bytes).expect("load");
    let step = engine
        .step("noop", &component, Grants::none())
        .expect("step");
    let job = engine.job(JobOptions::new("bench", "bench"));

    let raw = raw_engine();
    let raw_component = wasmtime::component::Component::new(&raw, &bytes).expect("compile");
    let mut linker = Linker::<RawState>::new(&raw);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("linker");
    let pre = linker.instantiate_pre(&raw_component).expect("pre");
    let iface: ComponentExportIndex = raw_component
        .get_export_index(None, "wrun:recipe/actions@0.1.0")
        .expect("actions export");
    let call: ComponentExportIndex = raw_component
        .get_export_index(Some(&iface), "call")
        .expect("call export");

    let mut group = c.benchmark_group("fresh_instance_step");
    group.bench_function("wrun", |b| {
        b.to_async(&rt).iter(|| async {
            let out = job.run(&step, "noop", &input).await.expect("run");
            black_box(out.output);
        })
    });
    group.bench_function("raw_wasmtime", |b| {
        b.to_async(&rt).iter(|| async {
            let state = RawState {
                ctx: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&raw, state);
            store.set_epoch_deadline(1_000);
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .expect("instantiate");
            let func = instance
                .get_typed_func::<(&str, &str), (Result<String, ActionError>,)>(&mut store, call)
                .expect("typed func");
            let (result,) = func
                .call_async(&mut store, ("noop", &input_text))
                .await
                .expect("call");
            let value: serde_json::Value = match result {
                Ok(text) => serde_json::from_str(&text).expect("json"),
                Err(
                    ActionError::UnknownAction(m)
                    | ActionError::InvalidInput(m)
                    | ActionError::Failed(m),
                ) => {
                    panic!("{m}")
                }
            };
            black_box(value);
        })
    });
    group.finish();
}

/// Runs the benchmarks of this file; written out instead of
/// `criterion_group!`, whose generated function has no doc comment.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    fresh_instance_step(&mut c);
}
criterion_main!(benches);

//! Host bindings of the `wrun:recipe/step` world, generated once from `wit/`.
//!
//! `wasi:*` interfaces map onto wasmtime-wasi and wasmtime-wasi-http, so the
//! only host code written by hand is for wrun's own interfaces (`secrets`,
//! `log`, `mask`, `properties`), in `host_impl`.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wrun:recipe/step",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wrun:recipe/secrets.secret": crate::host_impl::SecretHandle,
        },
    });
}

pub(crate) use generated::StepPre;
pub(crate) use generated::exports::wrun::recipe::actions::ActionError;
pub(crate) use generated::wrun::recipe::{log, mask, properties, secrets};

/// Adds wrun's own interfaces to a linker that already has WASI and wasi:http.
pub(crate) fn add_wrun_to_linker(
    linker: &mut wasmtime::component::Linker<crate::host_impl::StepState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    type State = crate::host_impl::StepState;
    secrets::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    log::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    mask::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    properties::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    Ok(())
}

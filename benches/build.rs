//! Builds the guest components the benchmarks run: Rust, JavaScript and
//! Python.

#[path = "../guests/build_support.rs"]
mod build_support;

fn main() {
    build_support::build_all();
}

//! Builds the guest components the integration tests run: Rust, JavaScript
//! and Python.

#[path = "../guests/build_support.rs"]
mod build_support;

fn main() {
    build_support::build_all();
}

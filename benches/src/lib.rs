//! Benchmarks of wrun live in `benches/`; this library only exists to hold
//! the build script that compiles the guest components they run.

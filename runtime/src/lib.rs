//! wrun runtime.

//! `wrun`: the command-line tool and daemon for recipe authors and
//! operators, built on `wrun-runtime`.
//!
//! The recipe commands (`new`, `build`, `check`, `run`, `export`, `import`,
//! `connection`, `key`) and `wrun serve` are not implemented yet; this binary
//! only reports its version.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!("wrun {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "wrun {}: the recipe commands and the daemon are not available in this build yet; \
                 embed wrun-runtime to run steps (see README.md)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}

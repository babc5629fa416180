//! The guest SDK for wrun recipe steps.
//!
//! A step is a WebAssembly component (target `wasm32-wasip2`) that exports
//! one or more *actions*: JSON in, JSON out. This crate hides the component
//! bindings: an action is a plain function from a deserialisable input to a
//! serialisable output, and [`step!`] exports it.
//!
//! What a step may do is what its grants allow: [`http`] needs a `net`
//! grant (HTTPS to the listed hosts only), [`secrets`] needs a `secrets`
//! grant, [`properties`] needs an `env` grant. [`log`] and [`mask`] are always
//! available. There is no filesystem, no environment variable, no argument
//! and no socket; stdout and stderr go to the job log.
//!
//! # Example
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use wrun_sdk::{Error, http, log, properties, secrets, step};
//!
//! #[derive(Deserialize)]
//! struct In {
//!     owner: String,
//!     repo: String,
//!     number: u64,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     title: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Issue {
//!     title: String,
//! }
//!
//! fn get_issue(input: In) -> Result<Out, Error> {
//!     let base = properties::require("github_api")?;
//!     let github = secrets::get("github")?;
//!     log::info(&format!("fetching {}/{}#{}", input.owner, input.repo, input.number));
//!     let issue: Issue = http::Request::get(&format!(
//!         "{base}/repos/{}/{}/issues/{}",
//!         input.owner, input.repo, input.number
//!     ))
//!     .header("Accept", "application/vnd.github+json")
//!     .auth(&github)
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//!     Ok(Out { title: issue.title })
//! }
//!
//! step!("get-issue" => get_issue);
//! ```
//!
//! The step crate is a `cdylib`; `cargo build --release --target
//! wasm32-wasip2` turns it into a component.

#![deny(unsafe_code)]

extern crate self as wrun_sdk;

mod error;
pub mod http;
pub mod log;
pub mod mask;
pub mod properties;
pub mod secrets;

pub use error::Error;

/// The raw component bindings generated from `wit/recipe.wit`.
///
/// Recipe authors do not need them: [`step!`] and the other modules cover
/// the whole world. They are public only so that [`step!`] can reach them.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, unreachable_pub, clippy::all)]
pub mod bindings {
    // `wit/` travels with the crate (in the repository it is a link to the
    // one WIT source, `../../wit`), so the crate builds alike from the
    // repository, from wrun's toolkit and from crates.io.
    wit_bindgen::generate!({
        path: "wit",
        world: "wrun:recipe/step",
        with: {
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_step",
        default_bindings_module: "wrun_sdk::bindings",
        runtime_path: "wrun_sdk::__private::wit_bindgen::rt",
    });
}

/// Exports actions: `step!("name" => function, ...)`.
///
/// Each function takes one argument of a type that implements
/// [`serde::Deserialize`] (use [`serde_json::Value`] to take any JSON) and
/// returns `Result<O, Error>` where `O` implements [`serde::Serialize`].
/// The macro implements the component's `actions` export:
///
/// - `names` lists the action names in the order given;
/// - `call` parses the input JSON into the function's input type (a parse
///   error becomes `invalid-input` with serde's message), calls the
///   function, and serialises its output; an [`Error`] becomes `failed`
///   with the error's message; an unknown name becomes `unknown-action`.
///
/// Use it once per crate, at the top level.
///
/// ```no_run
/// fn echo(input: serde_json::Value) -> Result<serde_json::Value, wrun_sdk::Error> {
///     Ok(input)
/// }
///
/// wrun_sdk::step!("echo" => echo);
/// ```
#[macro_export]
macro_rules! step {
    ($($name:literal => $action:path),+ $(,)?) => {
        #[doc(hidden)]
        struct __WrunStep;

        impl $crate::__private::Guest for __WrunStep {
            fn names() -> ::std::vec::Vec<::std::string::String> {
                ::std::vec![$(::std::string::String::from($name)),+]
            }

            fn call(
                action: ::std::string::String,
                input: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::__private::ActionError> {
                match action.as_str() {
                    $($name => $crate::__private::run(&input, $action),)+
                    _ => ::core::result::Result::Err(
                        $crate::__private::ActionError::UnknownAction(action),
                    ),
                }
            }
        }

        $crate::bindings::export_step!(__WrunStep with_types_in $crate::bindings);
    };
}

/// Support code for [`step!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::wrun::recipe::actions::{ActionError, Guest};
    pub use wit_bindgen;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::Error;

    /// Runs one action on a JSON input and serialises its output.
    pub fn run<I, O, F>(input: &str, action: F) -> Result<String, ActionError>
    where
        I: DeserializeOwned,
        O: Serialize,
        F: FnOnce(I) -> Result<O, Error>,
    {
        let input: I = serde_json::from_str(input)
            .map_err(|error| ActionError::InvalidInput(error.to_string()))?;
        let output = action(input).map_err(|error| ActionError::Failed(error.to_string()))?;
        serde_json::to_string(&output).map_err(|error| {
            ActionError::Failed(format!("the action's output cannot be serialised: {error}"))
        })
    }
}

//! Secret handles.
//!
//! A step never sees a secret value. It asks for a handle by the step-local
//! alias its `secrets` grant names, and puts the handle's placeholder where
//! the connection says the credential belongs. The usual way is
//! [`Request::auth`](crate::http::Request::auth), which reads the placement
//! and does the right thing. The host replaces the placeholder with the
//! value at send time, after checking the request.

use core::fmt;

use crate::Error;
use crate::bindings::wrun::recipe::secrets as raw;

/// A handle to one connection, valid for the current job.
pub struct Secret {
    handle: raw::Secret,
}

/// Gets the handle for a step-local alias.
///
/// # Errors
///
/// Fails if the step has no `secrets` grant for `alias`, or if no connection
/// is bound to it in this workspace.
///
/// ```no_run
/// let github = wrun_sdk::secrets::get("github")?;
/// let response = wrun_sdk::http::Request::get("https://api.github.com/user")
///     .auth(&github)
///     .send()?;
/// # Ok::<(), wrun_sdk::Error>(())
/// ```
pub fn get(alias: &str) -> Result<Secret, Error> {
    let handle = raw::get(alias)?;
    Ok(Secret { handle })
}

impl Secret {
    /// The step-local alias this handle was obtained with.
    pub fn alias(&self) -> String {
        self.handle.alias()
    }

    /// The placeholder to put where the credential belongs.
    ///
    /// It is fresh for every job and means nothing outside the host. Putting
    /// it anywhere other than the connection's placement makes the host
    /// refuse the whole request.
    pub fn placeholder(&self) -> String {
        self.handle.placeholder()
    }

    /// Where the connection allows the credential.
    ///
    /// One of `header:NAME=TEMPLATE` (the template holds `{}` where the
    /// credential goes, as in `header:Authorization=Bearer {}`), `basic`
    /// (HTTP basic authentication), `query:PARAM` or `body:FIELD` (a form
    /// field, or a member of the top-level JSON object).
    pub fn placement(&self) -> String {
        self.handle.placement()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("alias", &self.alias())
            .finish_non_exhaustive()
    }
}

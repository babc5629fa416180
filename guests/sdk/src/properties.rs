//! Non-secret properties of the environment the job runs in.
//!
//! Properties are things like a base URL that differ between dev, test and
//! prod. A step sees only the names its `env` grant lists.

use crate::Error;

/// Gets a property, or `None` if it is not granted or has no value in this
/// environment.
pub fn get(name: &str) -> Option<String> {
    crate::bindings::wrun::recipe::properties::get(name)
}

/// Gets a property that the step cannot do without.
///
/// # Errors
///
/// Fails with a message naming the property if it is not granted or has no
/// value in this environment.
pub fn require(name: &str) -> Result<String, Error> {
    get(name).ok_or_else(|| {
        Error::msg(format_args!(
            "property `{name}` is not set (is it in the step's `env` grant and defined for this environment?)"
        ))
    })
}

//! Integration tests of the step runtime, from the guest side: real
//! components built from `guests/`, a real egress, and a loopback HTTPS
//! mock API trusted through an operator CA.

// Setup helpers panic on failure, as test code does; the assertions are
// what is under test.
#![allow(clippy::unwrap_used)]

mod claims;
mod common;
mod egress;
mod examples;
mod footprint;
mod guest_sdk;
mod limits;
mod load;
mod misuse;
mod oauth;
mod polyglot;
mod reflect;
mod secrets;

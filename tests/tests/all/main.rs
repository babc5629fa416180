//! Integration tests of the step runtime, from the guest side: real
//! components built from `guests/`, a real egress, and a loopback HTTPS
//! mock API trusted through an operator CA.

mod common;
mod egress;
mod examples;
mod limits;
mod load;
mod secrets;

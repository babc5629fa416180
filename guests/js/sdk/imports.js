// The raw imports the SDK uses, from the `wrun:recipe/step` world.
//
// `build.mjs` replaces this file, in its build copy only, with one that
// imports just the interfaces the step uses, so that a component needs only
// the grants its step needs (as a Rust step does): `wasi:http` for `net`,
// `wrun:recipe/secrets` for `secrets`, `wrun:recipe/properties` for `env`.
// What is left out becomes `undefined` or a function that throws.
// Componentizing against the full `step` world without `build.mjs` uses this
// file as it is.

export { Fields, OutgoingRequest, OutgoingBody, IncomingBody, httpErrorCode } from 'wasi:http/types@0.2.12';
export { handle as sendRequest } from 'wasi:http/outgoing-handler@0.2.12';
export { get as getSecret } from 'wrun:recipe/secrets@0.1.0';
export { log as writeLog } from 'wrun:recipe/log@0.1.0';
export { mark as markValue } from 'wrun:recipe/mask@0.1.0';
export { get as getProperty } from 'wrun:recipe/properties@0.1.0';

//! Any bytes as a `Predict` and an OIP `ModelInfer` message: decoded or
//! refused, served or answered with a code a client can act on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    assert!(ferry_inference::fuzzing::grpc(bytes), "a server error for a client's message");
});

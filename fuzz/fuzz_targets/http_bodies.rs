//! Any bytes as a body to every HTTP API that decodes one (JSON, and binary
//! OIP with any header length): an answer a client can act on, never a panic
//! or a server error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Option<u32>, &[u8])| {
    let (endpoint, header_length, body) = input;
    assert!(ferry_inference::fuzzing::http(endpoint, header_length, body), "a server error for a client's bytes");
});

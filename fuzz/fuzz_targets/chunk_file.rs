//! Arbitrary bytes as a chunk file: header and state-record decoders, then a real chunk store
//! opening, recovering, reading and verifying it. The body is shared with the test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_engine::fuzzing::chunk_file(data);
});

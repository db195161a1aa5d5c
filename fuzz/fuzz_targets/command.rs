//! Arbitrary bytes as a replicated-log command: the envelope decoder, then a real registry
//! applying it to a real redb state store. The body is shared with the test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_engine::fuzzing::command(data);
});

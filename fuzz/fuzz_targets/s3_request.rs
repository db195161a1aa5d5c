//! Arbitrary bytes as an S3 request (raw, signed with the root key, or with a changed
//! signature) to the gateway of a real in-process node started once per fuzzing process.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn::fuzzing::s3_request(data);
});

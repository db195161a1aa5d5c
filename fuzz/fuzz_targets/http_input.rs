//! Arbitrary bytes as the gateway's HTTP input: S3 XML bodies, ranges, paths, names, share-link
//! tokens and image headers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_api::fuzzing::http_input(data);
});

//! Arbitrary bytes as an internal-transport frame (the bytes a peer sends on a QUIC stream).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_proto::frame::fuzz_decode(data);
});

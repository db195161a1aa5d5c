//! Arbitrary bytes as a config file: the TOML layer, then resolving every key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn::fuzzing::config_file(data);
});

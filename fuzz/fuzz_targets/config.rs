#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| surgeguard_fuzz::config::check(data));

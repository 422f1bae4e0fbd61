#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| surgeguard_fuzz::lease::check(data));

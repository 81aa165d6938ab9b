#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imc_fuzz::request_framing(data));

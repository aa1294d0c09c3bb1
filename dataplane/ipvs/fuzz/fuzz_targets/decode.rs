#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kubelvs_ipvs::fuzz_all_parsers(data);
});

//! Fuzzes the request path: any bytes in, only valid DNS answers out.
#![no_main]

libfuzzer_sys::fuzz_target!(|request: &[u8]| {
    moat::fuzz::request_path(request);
});

//! The session state machine on arbitrary input (protocol, TLS state, backend answers and
//! the way the bytes are cut into reads all come from the fuzzer's data): it must never
//! panic or stall, and everything it writes must be well-formed replies. The invariants
//! are checked by `tern_smtp::harness`, which the crate's property tests run too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = tern_smtp::harness::run(data) {
        panic!("{broken}");
    }
});

//! The session on arbitrary client input, through the server's own framing (lines,
//! synchronising and non-synchronising literals, literal limits) and decoding (commands,
//! AUTHENTICATE responses, IDLE's DONE): it must never panic or stall, and everything it
//! writes must be whole responses, one tagged answer per command. The layout of the input
//! and the invariants are `tern_imap::harness`'s, which `tests/fuzz_corpus.rs` runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = tern_imap::harness::run(data) {
        panic!("{broken}");
    }
});

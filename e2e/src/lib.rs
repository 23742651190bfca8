//! Tern's end-to-end tests (under `tests/`), the local cluster launcher (`tern-dev`) and,
//! later, the benchmark driver.
#![forbid(unsafe_code)]

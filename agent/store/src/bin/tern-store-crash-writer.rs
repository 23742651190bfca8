//! Writes numbered batches into a store until it is killed; used by `tests/crash.rs`.
//!
//! `tern-store-crash-writer <redb|sled|log|split> <dir> <seed>` continues from the counter it
//! finds in the store. Each batch puts the next sequence number in keyspace "log", the same
//! number as the counter in keyspace "meta", and in keyspace "copy" a copy of the previous
//! record behind a one-byte head, linked to it ([`tern_store::Link`]: on the log engine, a
//! linked record), with `Immediate` durability. It also puts the sequence number under itself
//! in keyspace "window" and deletes the one three before it, so "window" holds the last three.
//! It prints `ack <seq>` only after `write` returned, so every number it prints is a write the
//! store promised to keep.
//!
//! `split` is [`tern_store::suite::CrashStore::Split`]: "log" and "meta" on redb, "window"
//! and "copy" on the log engine beside it, written before and after redb's part.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tern_store::suite::{CrashStore, crash_record};
use tern_store::{Batch, Durability, Link};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-store-crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, dir, seed] = args.as_slice() else {
        return Err("usage: tern-store-crash-writer <redb|sled|log|split> <dir> <seed>".into());
    };
    let store = CrashStore::parse(kind)?;
    let seed: u64 = seed.parse().map_err(|e| format!("seed {seed:?}: {e}"))?;
    let store = store.open(&PathBuf::from(dir)).map_err(|e| e.to_string())?;
    let mut seq = match store.get("meta", b"counter").map_err(|e| e.to_string())? {
        Some(bytes) => u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("counter has {} bytes", bytes.len()))?,
        ),
        None => 0,
    };
    let mut out = std::io::stdout().lock();
    // One write per line, newline included, so a kill cannot leave half a number behind.
    let mut say = |line: String| {
        out.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    say(format!("ready {}", seq + 1))?;
    loop {
        seq += 1;
        let mut batch = Batch::new();
        batch
            .put("log", seq.to_be_bytes().to_vec(), crash_record(seq, seed))
            .put("meta", b"counter".to_vec(), seq.to_be_bytes().to_vec())
            .put(
                "window",
                seq.to_be_bytes().to_vec(),
                seq.to_be_bytes().to_vec(),
            );
        if seq > 3 {
            batch.delete("window", (seq - 3).to_be_bytes().to_vec());
        }
        if seq > 1 {
            // The previous record may come from an earlier run, with another seed: copy it.
            let previous = (seq - 1).to_be_bytes().to_vec();
            let source = store
                .get("log", &previous)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("record {} is missing", seq - 1))?;
            batch.put_linked(
                "copy",
                seq.to_be_bytes().to_vec(),
                [&b"C"[..], &source].concat(),
                Some(Link {
                    keyspace: "log",
                    key: previous,
                    offset: 0,
                    head: 1,
                }),
            );
        }
        store
            .write(batch, Durability::Immediate)
            .map_err(|e| format!("write {seq}: {e}"))?;
        say(format!("ack {seq}"))?;
    }
}

//! The per-replica cost of mail deliveries, without the network: groups of 4 KiB deliveries
//! applied as a replica applies Raft entries, onto the engines the agent uses (the state on
//! redb behind a write buffer, bodies on the log engine linked to the log entries that carry
//! them), with the buffer flushed as the agent's state flush does.
//!
//! `cargo bench -p tern-mail --bench apply [-- DELIVERIES]` prints microseconds of CPU per
//! delivery for applying and for flushing, so a change to either is measured without the
//! noise of a whole cluster sharing the machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_mail::{Command, MailStateMachine, keys};
use tern_store::{Batch, Buffered, Durability, Engine, EngineKind, Link, Split};

const SHARD: u32 = 1;
const BODY: usize = 4096;
/// Commands per entry, about what the store benchmark's leaders group at 256 clients.
const GROUP: usize = 26;
/// Deliveries between flushes, about 200 ms of one shard at the store benchmark's rate.
const FLUSH_EVERY: usize = 1_300;
const LOG: &str = "raft_log";

fn main() {
    let deliveries: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60_000);
    let dir = std::env::temp_dir().join(format!("tern-apply-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the bench directory");
    let log = tern_store::open(EngineKind::Log, &dir.join("log")).expect("opening log/");
    // The agent's layout (see `tern_agent::serve`).
    let state = Arc::new(
        Split::open(
            tern_store::open(EngineKind::Redb, &dir.join("state")).expect("opening state/"),
            log.clone(),
            keys::SIDE_REFERENCED,
            keys::SIDE_AFTER,
        )
        .expect("opening the split state"),
    );
    let engine = Buffered::new(state);
    let sm = MailStateMachine::new();
    let mut index = 0u64;
    let mut run = |commands: &[Vec<u8>], timing: &mut (Duration, Duration)| {
        index += 1;
        // The entry as the Raft log holds it: the commands one after another.
        let entry: Vec<u8> = commands.concat();
        let key = [&SHARD.to_be_bytes()[..], &index.to_be_bytes()].concat();
        let mut batch = Batch::new();
        batch.put(LOG, key.clone(), entry.clone());
        log.write(batch, Durability::Deferred)
            .expect("writing the log");
        let mut at = 0;
        let stored: Vec<Link> = commands
            .iter()
            .map(|c| {
                let link = Link {
                    keyspace: LOG,
                    key: key.clone(),
                    offset: at as u64,
                    head: 0,
                };
                at += c.len();
                link
            })
            .collect();
        let slices: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
        let began = Instant::now();
        let mut batch = Batch::new();
        let outcomes = sm
            .apply_many(SHARD, index, &engine, &mut batch, &slices, &stored)
            .expect("applying");
        engine
            .write(batch, Durability::Deferred)
            .expect("writing the state");
        timing.0 += began.elapsed();
        for outcome in outcomes {
            match tern_mail::decode_response(&outcome) {
                Ok(tern_mail::Reply::Delivered(results)) if results.iter().all(Result::is_ok) => {}
                Ok(tern_mail::Reply::Done | tern_mail::Reply::AccountCreated { .. }) => {}
                other => panic!("refused: {other:?}"),
            }
        }
    };
    let mut setup = (Duration::ZERO, Duration::ZERO);
    run(
        &[Command::CreateDomain {
            domain: "example.org".into(),
            now: 1,
        }
        .encode()],
        &mut setup,
    );
    run(
        &[Command::CreateAccount {
            address: "user@example.org".into(),
            password_hash: tern_mail::hash_password("bench"),
            quota_bytes: None,
            now: 1,
        }
        .encode()],
        &mut setup,
    );
    let filler: Vec<u8> = (0..BODY).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let mut timing = (Duration::ZERO, Duration::ZERO);
    let mut since_flush = 0;
    let mut n = 0usize;
    let cpu_began = cpu_time();
    while n < deliveries {
        let commands: Vec<Vec<u8>> = (0..GROUP)
            .map(|k| {
                let id = n + k;
                let mut body =
                    format!("Subject: {id}\r\nMessage-ID: <{id}@example.org>\r\n\r\n").into_bytes();
                body.extend_from_slice(&filler[..BODY - body.len()]);
                Command::Deliver {
                    idempotency_key: random_key(id as u64),
                    recipients: vec!["user@example.org".into()],
                    mailbox: None,
                    internal_date: 1_700_000_000,
                    flags: vec![],
                    body,
                    now: 1_700_000_000_000 + id as i64,
                }
                .encode()
            })
            .collect();
        run(&commands, &mut timing);
        n += GROUP;
        since_flush += GROUP;
        if since_flush >= FLUSH_EVERY {
            since_flush = 0;
            let began = Instant::now();
            engine.flush().expect("flushing");
            timing.1 += began.elapsed();
        }
    }
    let cpu = cpu_time() - cpu_began;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{n} deliveries of {BODY} bytes in groups of {GROUP}: apply {:.1} µs, flush {:.1} µs per delivery (wall); process CPU {:.1} µs per delivery",
        per(timing.0),
        per(timing.1),
        per(cpu)
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 32-byte key as random as the SHA-256 digests that SMTP and LMTP deliveries carry
/// (`tern_agent::smtp::delivery::idempotency_key`): each lands somewhere else in the idempotency
/// index, as in production.
fn random_key(id: u64) -> Vec<u8> {
    (0..4u64)
        .flat_map(|k| {
            // splitmix64
            let mut z = (id * 4 + k)
                .wrapping_add(1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_be_bytes()
        })
        .collect()
}

/// CPU time of this process so far (user and system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

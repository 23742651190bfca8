//! The mail model on a real redb engine: every command, its errors, and the properties the
//! protocols rely on (UIDs, MODSEQ, idempotent delivery, shared bodies, determinism).

mod determinism;
mod directory;
mod groups;
mod messages;
mod queue;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tern_mail::{
    Command, KEYSPACES, MailReader, MailStateMachine, Outcome, Reply, decode_response,
};
use tern_store::{Batch, Durability, Engine, EngineKind, KeyValue};

/// A valid PHC string; hashing a real password (argon2) is slow in debug builds and the
/// model only checks the format.
pub const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// 2025-01-01T00:00:00Z in unix milliseconds.
pub const T0: i64 = 1_735_689_600_000;

/// A store directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tern-mail-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One shard of the mail model on its own redb engine (or on a shared one).
pub struct Shard {
    pub engine: Arc<dyn Engine>,
    pub shard: u32,
    /// The log index of the last entry applied.
    pub index: Arc<AtomicU64>,
    _dir: Option<Arc<TempDir>>,
}

impl Shard {
    pub fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let engine = tern_store::open(EngineKind::Redb, &dir.0).expect("open redb");
        Shard {
            engine,
            shard: 0,
            index: Arc::default(),
            _dir: Some(Arc::new(dir)),
        }
    }

    /// Another shard on the same engine.
    pub fn sibling(&self, shard: u32) -> Self {
        Shard {
            engine: self.engine.clone(),
            shard,
            index: Arc::default(),
            _dir: self._dir.clone(),
        }
    }

    /// The log index of the next entry.
    pub fn next_index(&self) -> u64 {
        self.index.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Applies raw command bytes as the Raft layer would: one batch per entry, written before
    /// the next entry. Returns the response bytes and the batch's length.
    pub fn apply_bytes(&self, command: &[u8]) -> (Vec<u8>, usize) {
        let mut batch = Batch::new();
        let response = MailStateMachine::new()
            .apply(
                self.shard,
                self.next_index(),
                &*self.engine,
                &mut batch,
                command,
            )
            .expect("apply reads the engine");
        let ops = batch.len();
        self.write(batch);
        (response, ops)
    }

    /// Applies a group of commands as the Raft layer would put them in one entry: one batch
    /// for the group, written before the next. Returns the responses and the batch's length.
    pub fn apply_group(&self, commands: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
        let mut batch = Batch::new();
        let commands: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
        let responses = MailStateMachine::new()
            .apply_many(
                self.shard,
                self.next_index(),
                &*self.engine,
                &mut batch,
                &commands,
                &[],
            )
            .expect("apply_many reads the engine");
        let ops = batch.len();
        self.write(batch);
        (responses, ops)
    }

    /// Writes an entry's batch, checking that it only touches this shard's keys.
    fn write(&self, batch: Batch) {
        for op in batch.ops() {
            let key = match op {
                tern_store::Op::Put { key, .. } | tern_store::Op::Delete { key, .. } => key,
            };
            assert_eq!(
                &key[..4],
                &self.shard.to_be_bytes(),
                "every key starts with the shard"
            );
            assert!(KEYSPACES.contains(&op.keyspace()));
        }
        self.engine
            .write(batch, Durability::Deferred)
            .expect("write batch");
    }

    pub fn run(&self, command: &Command) -> Outcome {
        decode_response(&self.apply_bytes(&command.encode()).0)
    }

    /// Runs a command that must succeed.
    #[track_caller]
    pub fn ok(&self, command: &Command) -> Reply {
        match self.run(command) {
            Ok(reply) => reply,
            Err(e) => panic!("{} failed: {e:?}", command.kind()),
        }
    }

    /// Runs a command that must fail, and checks that it wrote nothing.
    #[track_caller]
    pub fn err(&self, command: &Command) -> tern_mail::MailError {
        let before = self.dump();
        let (response, ops) = self.apply_bytes(&command.encode());
        let error = match decode_response(&response) {
            Ok(reply) => panic!("{} succeeded: {reply:?}", command.kind()),
            Err(e) => e,
        };
        assert_eq!(ops, 0, "a refused command writes nothing");
        assert_eq!(before, self.dump());
        error
    }

    pub fn read(&self) -> MailReader<'_> {
        MailReader::new(&*self.engine, self.shard)
    }

    /// Every key and value of every keyspace, of every shard.
    pub fn dump(&self) -> Vec<(&'static str, Vec<KeyValue>)> {
        dump(&*self.engine)
    }

    // Shorthands for the setup most tests need.

    pub fn domain(&self, domain: &str) {
        self.ok(&Command::CreateDomain {
            domain: domain.into(),
            now: T0,
        });
    }

    pub fn account(&self, address: &str, quota_bytes: Option<u64>) -> Reply {
        self.ok(&Command::CreateAccount {
            address: address.into(),
            password_hash: HASH.into(),
            quota_bytes,
            now: T0,
        })
    }

    pub fn mailbox(&self, account: &str, name: &str) -> Reply {
        self.ok(&Command::CreateMailbox {
            account: account.into(),
            name: name.into(),
            special_use: None,
            now: T0,
        })
    }
}

pub fn dump(engine: &dyn Engine) -> Vec<(&'static str, Vec<KeyValue>)> {
    KEYSPACES
        .iter()
        .map(|ks| {
            let rows = engine
                .scan(
                    ks,
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Unbounded,
                    usize::MAX,
                    false,
                )
                .expect("scan");
            (*ks, rows)
        })
        .collect()
}

pub fn deliver(key: &str, recipients: &[&str], body: &[u8]) -> Command {
    Command::Deliver {
        idempotency_key: key.as_bytes().to_vec(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        mailbox: None,
        internal_date: T0,
        flags: vec![],
        body: body.to_vec(),
        now: T0,
    }
}

pub fn append(account: &str, mailbox: &str, flags: Vec<tern_mail::Flag>, body: &[u8]) -> Command {
    Command::Append {
        account: account.into(),
        mailbox: mailbox.into(),
        flags,
        internal_date: T0,
        body: body.to_vec(),
        idempotency_key: None,
        now: T0,
    }
}

/// The UID an Append was given.
#[track_caller]
pub fn appended_uid(reply: Reply) -> u32 {
    match reply {
        Reply::Appended { uid, .. } => uid,
        other => panic!("not an append: {other:?}"),
    }
}

/// A fresh shard with domain `example.com` and account `alice@example.com` (no quota).
pub fn with_alice(name: &str) -> Shard {
    let shard = Shard::new(name);
    shard.domain("example.com");
    shard.account("alice@example.com", None);
    shard
}

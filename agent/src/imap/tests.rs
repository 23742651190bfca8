//! The backend on a real one-node shard host: a Raft group on a redb store in a temporary
//! directory, written and read through the same calls the agent makes. (The three-node
//! tests with real IMAP clients are in `agent/tests/imap_cluster.rs`.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tern_imap::{Account, AuthVerdict, Backend, BackendError, FlagOp};
use tern_mail::Command;
use tern_raft::Storage;
use tern_raft::testing::TempDir;
use tern_store::EngineKind;
use tokio::time::Instant;

use super::{ImapOptions, StoreBackend};
use crate::pki::LocalPki;
use crate::rpc::{Network, TlsConfig};
use crate::shards::{HostOptions, Peers, ShardHost, raft_config};

const ADDRESS: &str = "alice@example.test";
const PASSWORD: &str = "correct horse";

fn host(dir: &TempDir) -> Arc<ShardHost> {
    let pki = LocalPki::generate("imap-test").unwrap();
    let (cert, key) = pki.issue(&["localhost".to_owned()]).unwrap();
    let tls =
        TlsConfig::from_pem(pki.ca_cert_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    let name = crate::dev::node_name(0);
    ShardHost::new(
        HostOptions {
            node_id: 1,
            node_name: name.clone(),
            raft: Arc::new(raft_config("imap-test").validate().unwrap()),
            timeout: Duration::from_secs(5),
            peers: Peers::fixed(BTreeMap::from([(name, "127.0.0.1:9".to_owned())])),
            marker_dir: None,
        },
        Storage::new(tern_store::open(EngineKind::Redb, dir.path()).unwrap()),
        Network::new(tls.client.clone(), 0),
    )
}

/// Writes `command` on shard 1, retrying while the group elects its leader.
async fn write(host: &ShardHost, command: Command) {
    let started = Instant::now();
    loop {
        match host.write(1, command.encode()).await {
            Ok(answer) => {
                tern_mail::decode_response(&answer).unwrap();
                return;
            }
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                tracing::debug!(%e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A one-node host with shard 1, the domain and Alice's account.
async fn ready(dir: &TempDir) -> Arc<ShardHost> {
    let host = host(dir);
    host.reconcile(Arc::new(crate::dev::assignment(1, 1, None)))
        .await;
    write(
        &host,
        Command::CreateDomain {
            domain: "example.test".into(),
            now: 0,
        },
    )
    .await;
    write(
        &host,
        Command::CreateAccount {
            address: ADDRESS.into(),
            password_hash: tern_mail::hash_password(PASSWORD),
            quota_bytes: None,
            now: 0,
        },
    )
    .await;
    host
}

fn deliver(body: &str) -> Command {
    Command::Deliver {
        idempotency_key: body.as_bytes().to_vec(),
        recipients: vec![ADDRESS.into()],
        mailbox: None,
        internal_date: 1_700_000_000_000,
        flags: vec![],
        body: body.as_bytes().to_vec(),
        now: 1_700_000_000_000,
    }
}

fn options() -> ImapOptions {
    ImapOptions {
        deadline: Duration::from_secs(5),
        poll_every: Duration::from_millis(50),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_and_messages_live_in_the_replicated_store() {
    let dir = TempDir::new("imap-backend");
    let host = ready(&dir).await;
    let backend = StoreBackend::new(host.clone(), options());

    assert_eq!(
        backend.authenticate("Alice@Example.TEST", PASSWORD).await,
        AuthVerdict::Ok(Account {
            name: ADDRESS.into()
        })
    );
    assert_eq!(
        backend.authenticate(ADDRESS, "wrong").await,
        AuthVerdict::Invalid
    );
    assert_eq!(
        backend.authenticate("bob@example.test", PASSWORD).await,
        AuthVerdict::Invalid
    );
    assert_eq!(
        backend.authenticate("not an address", PASSWORD).await,
        AuthVerdict::Invalid
    );
    let alice = Account {
        name: ADDRESS.into(),
    };

    // Mailboxes.
    let names = |list: Vec<tern_imap::MailboxInfo>| -> Vec<String> {
        list.into_iter().map(|m| m.name).collect()
    };
    assert_eq!(names(backend.list(&alice).await.unwrap()), ["INBOX"]);
    backend.create(&alice, "Work").await.unwrap();
    assert_eq!(
        backend.create(&alice, "Work").await,
        Err(BackendError::AlreadyExists)
    );
    backend.subscribe(&alice, "Work", true).await.unwrap();
    let list = backend.list(&alice).await.unwrap();
    assert!(
        list.iter().any(|m| m.name == "Work" && m.subscribed),
        "{list:?}"
    );
    assert_eq!(
        backend.status(&alice, "Nope").await,
        Err(BackendError::NoMailbox)
    );

    // Mail delivered by SMTP and mail appended by IMAP, with the store's UIDs.
    write(&host, deliver("Subject: one\r\n\r\nfirst\r\n")).await;
    let inbox = backend.status(&alice, "INBOX").await.unwrap();
    assert_eq!((inbox.messages, inbox.unseen, inbox.uid_next), (1, 1, 2));
    let body = b"Subject: two\r\n\r\nsecond\r\n".to_vec();
    let (validity, uid) = backend
        .append(
            &alice,
            "INBOX",
            vec!["\\Flagged".into()],
            1_700_000_100,
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!((validity, uid), (inbox.uid_validity, 2));
    assert_eq!(
        backend
            .append(&alice, "Nope", vec![], 0, body.clone())
            .await,
        Err(BackendError::NoMailbox)
    );
    let metas = backend
        .messages(&alice, "INBOX", 1..=u32::MAX)
        .await
        .unwrap();
    assert_eq!(metas.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(metas[1].flags, ["\\Flagged"]);
    assert_eq!(metas[1].internal_date, 1_700_000_100);
    assert_eq!(metas[1].size as usize, body.len());
    assert_eq!(
        backend.message(&alice, "INBOX", 2).await.unwrap(),
        Some(body)
    );
    assert_eq!(backend.message(&alice, "INBOX", 9).await.unwrap(), None);

    // Flags: STORE reports every message of the set with its new MODSEQ.
    let before = metas[0].modseq;
    let stored = backend
        .store(
            &alice,
            "INBOX",
            &[1, 2],
            FlagOp::Add,
            &["\\Seen".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(stored.updated.len(), 2);
    assert!(
        stored
            .updated
            .iter()
            .all(|m| m.flags.contains(&"\\Seen".to_owned()))
    );
    assert!(stored.updated[0].modseq > before);
    // CONDSTORE: a message changed since the client's MODSEQ is left alone.
    let refused = backend
        .store(
            &alice,
            "INBOX",
            &[1],
            FlagOp::Add,
            &["$Late".into()],
            Some(before),
        )
        .await
        .unwrap();
    assert_eq!(refused.modified, [1]);
    assert!(matches!(
        backend
            .store(
                &alice,
                "INBOX",
                &[1],
                FlagOp::Add,
                &["\\Bogus".into()],
                None
            )
            .await,
        Err(BackendError::Refused(_))
    ));
    assert_eq!(backend.status(&alice, "INBOX").await.unwrap().unseen, 0);

    // COPY keeps the source, MOVE empties it; EXPUNGE removes only `\Deleted` messages.
    let (work_validity, pairs) = backend.copy(&alice, "INBOX", &[1], "Work").await.unwrap();
    assert_eq!(pairs, [(1, 1)]);
    assert_eq!(
        backend.status(&alice, "Work").await.unwrap().uid_validity,
        work_validity
    );
    let (_, pairs) = backend
        .move_messages(&alice, "INBOX", &[2], "Work")
        .await
        .unwrap();
    assert_eq!(pairs, [(2, 2)]);
    assert_eq!(
        backend.expunge(&alice, "Work", &[1, 2]).await.unwrap(),
        Vec::<u32>::new()
    );
    backend
        .store(
            &alice,
            "Work",
            &[1],
            FlagOp::Add,
            &["\\Deleted".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(backend.expunge(&alice, "Work", &[1, 2]).await.unwrap(), [1]);
    let work = backend
        .messages(&alice, "Work", 1..=u32::MAX)
        .await
        .unwrap();
    assert_eq!(work.iter().map(|m| m.uid).collect::<Vec<_>>(), [2]);

    // RENAME keeps UIDVALIDITY; DELETE removes.
    backend.rename(&alice, "Work", "Done").await.unwrap();
    assert_eq!(
        backend.status(&alice, "Done").await.unwrap().uid_validity,
        work_validity
    );
    backend.delete(&alice, "Done").await.unwrap();
    assert_eq!(
        backend.delete(&alice, "Done").await,
        Err(BackendError::NoMailbox)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_elsewhere_wake_the_account_and_the_poller_stops_when_nobody_waits() {
    let dir = TempDir::new("imap-changes");
    let host = ready(&dir).await;
    let backend = StoreBackend::new(host.clone(), options());
    let alice = Account {
        name: ADDRESS.into(),
    };
    let mut changes = backend.changes(&alice);
    // The poller's first look bumps once; wait for it, then for nothing more.
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("the first poll")
        .unwrap();
    changes.borrow_and_update();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), changes.changed())
            .await
            .is_err(),
        "no change, no wake-up"
    );
    // A delivery written straight to the shard (as another node's SMTP listener does).
    write(&host, deliver("Subject: hello\r\n\r\nhi\r\n")).await;
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("a delivery wakes the account")
        .unwrap();
    // A second session of the account shares the poller.
    let second = backend.changes(&alice);
    assert_eq!(backend.watched_accounts(), 1);
    drop(changes);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.watched_accounts() != 0 {
        assert!(Instant::now() < deadline, "the poller keeps running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.shutdown().await;
}

#[tokio::test]
async fn without_the_account_s_shard_every_call_is_unavailable() {
    let dir = TempDir::new("imap-unassigned");
    // A host that follows no assignment yet holds no shard.
    let backend = StoreBackend::new(host(&dir), options());
    let alice = Account {
        name: ADDRESS.into(),
    };
    assert_eq!(
        backend.authenticate(ADDRESS, PASSWORD).await,
        AuthVerdict::TempFail
    );
    assert!(matches!(
        backend.list(&alice).await,
        Err(BackendError::Unavailable(_))
    ));
    assert!(matches!(
        backend
            .append(&alice, "INBOX", vec![], 0, b"x".to_vec())
            .await,
        Err(BackendError::Unavailable(_))
    ));
}

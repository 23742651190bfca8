//! The mail model replicated by Raft: three replicas of one shard (real openraft instances on
//! real engines, connected in-process), deliveries through the leader, reads on every replica,
//! idempotent retries, and failover.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::Config;
use tern_agent::replica::{MailApp, decode_group, encode_group};
use tern_mail::{Command, MailReader, Reply, decode_response};
use tern_raft::testing::{Router, TempDir};
use tern_raft::{Node, NodeId, Request, ShardRaft, Storage, new_raft};
use tern_store::EngineKind;

const SHARD: u32 = 1;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

struct Replica {
    id: NodeId,
    _dir: TempDir,
    storage: Storage,
    raft: ShardRaft,
}

async fn start(router: &Router) -> Vec<Replica> {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Config::default()
        }
        .validate()
        .unwrap(),
    );
    let mut replicas = vec![];
    for id in 1..=3 {
        let dir = TempDir::new(&format!("mail-raft-{id}"));
        let storage = Storage::new(tern_store::open(EngineKind::Redb, dir.path()).unwrap());
        let raft = new_raft(
            id,
            SHARD,
            config.clone(),
            &storage,
            Arc::new(MailApp::default()),
            router.clone(),
        )
        .await
        .unwrap();
        router.add(id, raft.clone());
        replicas.push(Replica {
            id,
            _dir: dir,
            storage,
            raft,
        });
    }
    let nodes: BTreeMap<NodeId, Node> = (1..=3)
        .map(|id| {
            (
                id,
                Node {
                    rpc_addr: format!("in-process-{id}"),
                },
            )
        })
        .collect();
    replicas[0].raft.initialize(nodes).await.unwrap();
    replicas
}

async fn leader(replicas: &[Replica], not: Option<NodeId>) -> NodeId {
    let m = replicas[0]
        .raft
        .wait(TIMEOUT)
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .unwrap();
    m.current_leader.unwrap()
}

async fn propose(raft: &ShardRaft, command: &Command) -> (u64, Reply) {
    let written = raft
        .client_write(Request {
            bytes: encode_group(&[command.encode()]).into(),
        })
        .await
        .expect("committed");
    let outcomes = decode_group(&written.data.bytes).expect("one group of outcomes");
    assert_eq!(outcomes.len(), 1);
    let reply = decode_response(outcomes[0]).expect("the command succeeds");
    (written.log_id.index, reply)
}

fn deliver(key: &str, body: &str) -> Command {
    Command::Deliver {
        idempotency_key: key.as_bytes().to_vec(),
        recipients: vec!["alice@example.com".into()],
        mailbox: None,
        internal_date: 1_700_000_000_000,
        flags: vec![],
        body: body.as_bytes().to_vec(),
        now: 1_700_000_000_000,
    }
}

fn uid_of(reply: &Reply) -> u32 {
    match reply {
        Reply::Delivered(r) => r[0].as_ref().expect("delivered to alice").uid,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_replicate_are_idempotent_and_survive_failover() {
    let router = Router::default();
    let mut replicas = start(&router).await;
    let first = leader(&replicas, None).await;
    let raft = replicas
        .iter()
        .find(|r| r.id == first)
        .unwrap()
        .raft
        .clone();
    let now = 1_700_000_000_000;
    propose(
        &raft,
        &Command::CreateDomain {
            domain: "example.com".into(),
            now,
        },
    )
    .await;
    let hash = tern_mail::hash_password("correct horse");
    propose(
        &raft,
        &Command::CreateAccount {
            address: "alice@example.com".into(),
            password_hash: hash,
            quota_bytes: None,
            now,
        },
    )
    .await;

    let (_, reply) = propose(&raft, &deliver("msg-1", "Subject: one\r\n\r\nhello")).await;
    assert_eq!(uid_of(&reply), 1);
    // A client that lost the reply retries with the same key: stored once, same UID.
    let (index, retried) = propose(&raft, &deliver("msg-1", "Subject: one\r\n\r\nhello")).await;
    assert_eq!(uid_of(&retried), 1);

    for r in &replicas {
        r.raft
            .wait(TIMEOUT)
            .applied_index_at_least(Some(index), "applied")
            .await
            .unwrap();
        let reader = MailReader::new(&**r.storage.engine(), SHARD);
        let inbox = reader
            .mailbox("alice@example.com", "INBOX")
            .unwrap()
            .expect("INBOX");
        assert_eq!(
            (inbox.messages, inbox.uidnext),
            (1, 2),
            "replica {}: one message, once",
            r.id
        );
    }

    // The leader goes; a new one takes over and deliveries go on with the next UID.
    let gone = replicas.iter().position(|r| r.id == first).unwrap();
    let old = replicas.remove(gone);
    router.remove(old.id);
    old.raft.shutdown().await.unwrap();
    let second = leader(&replicas, Some(first)).await;
    let raft = replicas
        .iter()
        .find(|r| r.id == second)
        .unwrap()
        .raft
        .clone();
    let (index, reply) = propose(&raft, &deliver("msg-2", "Subject: two\r\n\r\nagain")).await;
    assert_eq!(
        uid_of(&reply),
        2,
        "UIDs keep increasing across leader changes"
    );
    for r in &replicas {
        r.raft
            .wait(TIMEOUT)
            .applied_index_at_least(Some(index), "applied")
            .await
            .unwrap();
        let reader = MailReader::new(&**r.storage.engine(), SHARD);
        let inbox = reader
            .mailbox("alice@example.com", "INBOX")
            .unwrap()
            .unwrap();
        assert_eq!((inbox.messages, inbox.uidnext), (2, 3), "replica {}", r.id);
    }
}

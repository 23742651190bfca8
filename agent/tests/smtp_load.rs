//! Load with Postfix's `smtp-source` into a real cluster of `tern-agent run` processes (see
//! `common`), and the leader of the recipient's shard SIGKILLed in the middle of it. What must
//! hold: every message that got `250` is in the mailbox exactly once, as every node lists it;
//! nothing is stored twice; nothing is stored that was not sent.
//!
//! Knowing which messages were acknowledged: each `smtp-source` process runs one session, so
//! its `-v` transcript (every command and every reply, in order) tells the outcome of its k-th
//! transaction, and `smtp-source` writes `Message-Id: <PID.FD.COUNT@HOST>` into each message,
//! where COUNT is the number of messages the process has still to start (`-m M`: M−k for the
//! k-th). So (process id, COUNT) names each message both in the transcript and in the
//! mailbox. A message answered with anything but `250` after its content was sent is
//! indeterminate — the shard may have committed it while the reply was lost with the leader —
//! and may or may not be stored (a client's retry would be stored once, see
//! `smtp_delivery.rs`); `smtp-source` does not retry.
//!
//! `smtp-source` comes from Debian's `postfix` package (`scripts/test.sh` installs it);
//! without it the test is skipped on a developer's machine and fails in CI.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Options, create_account_retrying, create_domain_retrying, tools};

const DOMAIN: &str = "load.test";
const PASSWORD: &str = "correct horse battery staple";
/// `smtp-source`'s HELO name and the domain of its Message-IDs.
const CLIENT_NAME: &str = "source.example";
/// Parallel `smtp-source` processes (one session each) and messages per process.
const PROCESSES: usize = 8;
const MESSAGES_PER_PROCESS: usize = 100;
/// Messages stored before the leader is killed.
const STORED_BEFORE_KILL: usize = 150;
/// The longest one `smtp-source` process may run.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(180);

const SMTP_SOURCE: (&str, &str) = (
    "smtp-source (Debian package postfix)",
    "command -v smtp-source",
);

/// What became of one transaction, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// `250` after the content: Tern promised the message is stored.
    Acknowledged,
    /// The content was sent and the reply was not `2xx` (or never came): maybe stored.
    Indeterminate(String),
    /// Refused before the content was sent (MAIL, RCPT or DATA): never stored.
    NotSent(String),
}

/// The outcome of each transaction in an `smtp-source -v` transcript, in order. Commands are
/// logged as `smtp-source: COMMAND`, replies as `smtp-source: <<< REPLY`.
fn transactions(transcript: &str) -> Result<Vec<Outcome>, String> {
    #[derive(PartialEq)]
    enum Last {
        Other,
        Envelope,
        Data,
        Dot,
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut open = false;
    let mut last = Last::Other;
    for line in transcript.lines() {
        let Some(line) = line.strip_prefix("smtp-source: ") else {
            continue;
        };
        if let Some(reply) = line.strip_prefix("<<< ") {
            if !open || last == Last::Other {
                continue;
            }
            let positive = match last {
                Last::Data => reply.starts_with("354"),
                _ => reply.starts_with('2'),
            };
            if last == Last::Dot {
                outcomes.push(if positive {
                    Outcome::Acknowledged
                } else {
                    Outcome::Indeterminate(reply.to_owned())
                });
                open = false;
            } else if !positive {
                outcomes.push(Outcome::NotSent(reply.to_owned()));
                open = false;
            }
            // A continuation line (`250-…`) says no more than the first line.
            last = Last::Other;
            continue;
        }
        if line.starts_with("MAIL FROM:") {
            if open {
                return Err(format!(
                    "transaction {} began before the last one ended",
                    outcomes.len() + 1
                ));
            }
            open = true;
            last = Last::Envelope;
        } else if line.starts_with("RCPT TO:") {
            last = Last::Envelope;
        } else if line == "DATA" {
            last = Last::Data;
        } else if line == "." {
            last = Last::Dot;
        }
    }
    if open {
        // The process ended in the middle of a transaction.
        outcomes.push(if last == Last::Dot {
            Outcome::Indeterminate("no reply".into())
        } else {
            Outcome::NotSent("no reply".into())
        });
    }
    Ok(outcomes)
}

/// (process id, COUNT) from a Message-ID `<PID.FD.COUNT@source.example>` (hexadecimal).
fn source_id(message_id: &str) -> Option<(u32, u32)> {
    let inner = message_id.strip_prefix('<')?.strip_suffix('>')?;
    let (local, host) = inner.split_once('@')?;
    if host != CLIENT_NAME {
        return None;
    }
    let mut parts = local.split('.');
    let pid = u32::from_str_radix(parts.next()?, 16).ok()?;
    let _fd = parts.next()?;
    let count = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((pid, count))
}

/// One `smtp-source` process, started.
struct Source {
    pid: u32,
    child: std::process::Child,
}

impl Source {
    fn start(server: std::net::SocketAddr, recipient: &str) -> Source {
        let child = Command::new("smtp-source")
            .args(["-v", "-A", "-s", "1", "-m"])
            .arg(MESSAGES_PER_PROCESS.to_string())
            .args(["-l", "2000", "-M", CLIENT_NAME, "-f", "load@sender.example"])
            .args(["-t", recipient])
            .arg(server.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting smtp-source: {e}"));
        Source {
            pid: child.id(),
            child,
        }
    }

    /// Waits for the process (killing it after [`SOURCE_TIMEOUT`]): exit code and transcript.
    async fn finish(self) -> (Option<i32>, String) {
        tokio::task::spawn_blocking(move || {
            let mut child = self.child;
            let deadline = Instant::now() + SOURCE_TIMEOUT;
            // Read the pipes on their own threads so that a full pipe cannot stall the child.
            let mut stdout = child.stdout.take().unwrap();
            let mut stderr = child.stderr.take().unwrap();
            let out = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
                s
            });
            let err = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
                s
            });
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status.code();
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
            (status, text)
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_messages_acknowledged_across_a_leader_kill_are_stored_once() {
    const TEST: &str = "smtp_source_messages_acknowledged_across_a_leader_kill_are_stored_once";
    if !tools(TEST, &[SMTP_SOURCE]) {
        return;
    }
    // The harness points the nodes' SPF/DKIM/DMARC lookups at a local NXDOMAIN server.
    let cluster = Cluster::start(3, Options::default()).await;
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    let recipient = format!("load@{DOMAIN}");
    cluster.check(
        create_account_retrying(&admin, &recipient, PASSWORD, Duration::from_secs(30)).await,
        &format!("creating {recipient}"),
    );
    let shard = cluster
        .assignment()
        .shard_of(&recipient)
        .expect("the recipient has a shard");
    let leader = cluster
        .wait_leader(shard, &[0, 1, 2], Duration::from_secs(30))
        .await;
    // The clients talk to the other two nodes, whose sessions outlive the leader: the kill
    // hits the shard's Raft group, not the SMTP connections.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let sources: Vec<Source> = (0..PROCESSES)
        .map(|p| Source::start(cluster.mail_addr(survivors[p % 2], "smtp"), &recipient))
        .collect();

    // Kill the leader once part of the load is stored.
    let observer = cluster.admin(survivors[0]);
    let mut stored_at_kill = 0;
    cluster
        .wait_until(
            Duration::from_secs(60),
            &format!("{STORED_BEFORE_KILL} messages stored"),
            async || {
                let listed = observer
                    .list_messages(&recipient, "INBOX", 0, STORED_BEFORE_KILL as u32)
                    .await
                    .map_err(|e| e.to_string())?;
                stored_at_kill = listed.len();
                if listed.len() >= STORED_BEFORE_KILL {
                    Ok(())
                } else {
                    Err(format!("{} stored", listed.len()))
                }
            },
        )
        .await;
    cluster.kill(leader);
    let killed = Instant::now();

    let mut sent: BTreeMap<(u32, u32), Outcome> = BTreeMap::new();
    for source in sources {
        let pid = source.pid;
        let (status, transcript) = source.finish().await;
        if status != Some(0) {
            cluster.fail(&format!(
                "smtp-source {pid} ended with {status:?}:\n{transcript}"
            ));
        }
        let outcomes = cluster.check(transactions(&transcript), "reading the transcript");
        if outcomes.len() != MESSAGES_PER_PROCESS {
            cluster.fail(&format!(
                "smtp-source {pid} made {} transactions of {MESSAGES_PER_PROCESS}:\n{transcript}",
                outcomes.len()
            ));
        }
        for (k, outcome) in outcomes.into_iter().enumerate() {
            // The k-th transaction (from 1) carries COUNT = M − k.
            let count = (MESSAGES_PER_PROCESS - (k + 1)) as u32;
            sent.insert((pid, count), outcome);
        }
    }
    eprintln!(
        "smtp-source finished {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let acknowledged = sent
        .values()
        .filter(|o| **o == Outcome::Acknowledged)
        .count();
    let indeterminate: Vec<&Outcome> = sent
        .values()
        .filter(|o| matches!(o, Outcome::Indeterminate(_)))
        .collect();
    let not_sent: Vec<&Outcome> = sent
        .values()
        .filter(|o| matches!(o, Outcome::NotSent(_)))
        .collect();
    eprintln!(
        "{} messages: {acknowledged} acknowledged, {} indeterminate {indeterminate:?}, {} refused before their content {not_sent:?}; {stored_at_kill} stored at the kill",
        sent.len(),
        indeterminate.len(),
        not_sent.len(),
    );
    // Writes went on under a new leader: far more acknowledged than stored before the kill.
    assert!(
        acknowledged >= stored_at_kill + 200,
        "only {acknowledged} messages acknowledged, {stored_at_kill} of them before the kill"
    );
    let new_leader = cluster
        .wait_leader(shard, &survivors, Duration::from_secs(30))
        .await;
    assert_ne!(new_leader, leader);

    // The killed node comes back and catches up; every node must list the same messages.
    cluster.restart(leader);
    cluster.wait_ready(leader).await;
    let mut listings = Vec::new();
    for i in 0..3 {
        let messages = cluster.check(
            cluster.admin(i).all_messages(&recipient, "INBOX").await,
            &format!("listing the INBOX through {}", cluster.name(i)),
        );
        let mut stored: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        for m in &messages {
            let id = m.message_id.as_deref().unwrap_or("");
            let Some(key) = source_id(id) else {
                cluster.fail(&format!("a stored message with Message-ID {id:?}"));
            };
            *stored.entry(key).or_default() += 1;
        }
        for (key, outcome) in &sent {
            let n = stored.get(key).copied().unwrap_or(0);
            match outcome {
                Outcome::Acknowledged if n != 1 => cluster.fail(&format!(
                    "{} lists the acknowledged message {key:?} {n} times",
                    cluster.name(i)
                )),
                Outcome::Indeterminate(_) if n > 1 => cluster.fail(&format!(
                    "{} lists the unacknowledged message {key:?} {n} times",
                    cluster.name(i)
                )),
                Outcome::NotSent(why) if n != 0 => cluster.fail(&format!(
                    "{} lists {key:?}, refused before its content ({why}), {n} times",
                    cluster.name(i)
                )),
                _ => {}
            }
        }
        if let Some(key) = stored.keys().find(|k| !sent.contains_key(k)) {
            cluster.fail(&format!(
                "{} lists {key:?}, which no smtp-source sent",
                cluster.name(i)
            ));
        }
        // Stored = acknowledged + those indeterminate ones the shard had committed.
        let extra = messages.len().saturating_sub(acknowledged);
        assert!(
            extra <= indeterminate.len(),
            "{} lists {} messages for {acknowledged} acknowledged and {} indeterminate",
            cluster.name(i),
            messages.len(),
            indeterminate.len()
        );
        eprintln!(
            "{} lists {} messages: the {acknowledged} acknowledged, each once, and {extra} of the {} indeterminate",
            cluster.name(i),
            messages.len(),
            indeterminate.len()
        );
        listings.push(stored);
    }
    assert!(
        listings.windows(2).all(|w| w[0] == w[1]),
        "the nodes list different messages"
    );
}

#[test]
fn transcripts_are_read_transaction_by_transaction() {
    let transcript = "\
smtp-source: name_mask: all
smtp-source: fd=3: stream buffer size old=0 new=130964
smtp-source: <<< 220 tern ESMTP
smtp-source: HELO source.example
smtp-source: <<< 250 tern
smtp-source: MAIL FROM:<a@sender.example>
smtp-source: <<< 250 2.1.0 Ok
smtp-source: RCPT TO:<b@load.test>
smtp-source: <<< 250 2.1.5 Ok
smtp-source: DATA
smtp-source: <<< 354 End data with <CR><LF>.<CR><LF>
smtp-source: .
smtp-source: <<< 250 2.0.0 Ok: queued as 1
smtp-source: QUIT
smtp-source: <<< 221 2.0.0 Bye
smtp-source: HELO source.example
smtp-source: <<< 250-tern
smtp-source: <<< 250 PIPELINING
smtp-source: MAIL FROM:<a@sender.example>
smtp-source: <<< 250 2.1.0 Ok
smtp-source: RCPT TO:<b@load.test>
smtp-source: <<< 451 4.3.0 try again later
smtp-source: warning: recipient rejected: 451 4.3.0 try again later
smtp-source: RSET
smtp-source: <<< 250 2.0.0 Ok
smtp-source: MAIL FROM:<a@sender.example>
smtp-source: <<< 250 2.1.0 Ok
smtp-source: RCPT TO:<b@load.test>
smtp-source: <<< 250 2.1.5 Ok
smtp-source: DATA
smtp-source: <<< 354 go ahead
smtp-source: .
smtp-source: <<< 451 4.3.0 shard unavailable
smtp-source: warning: end of data rejected: 451 4.3.0 shard unavailable
smtp-source: MAIL FROM:<a@sender.example>
smtp-source: <<< 250 2.1.0 Ok
smtp-source: RCPT TO:<b@load.test>
smtp-source: <<< 250 2.1.5 Ok
smtp-source: DATA
smtp-source: <<< 354 go ahead
smtp-source: .
";
    assert_eq!(
        transactions(transcript).unwrap(),
        vec![
            Outcome::Acknowledged,
            Outcome::NotSent("451 4.3.0 try again later".into()),
            Outcome::Indeterminate("451 4.3.0 shard unavailable".into()),
            Outcome::Indeterminate("no reply".into()),
        ]
    );
    assert!(transactions("smtp-source: MAIL FROM:<a@x>\nsmtp-source: MAIL FROM:<a@x>\n").is_err());
    assert_eq!(
        source_id("<3e61.0003.01ec@source.example>"),
        Some((0x3e61, 0x1ec))
    );
    assert_eq!(
        source_id("<1a2b3.0005.ffffffff@source.example>"),
        Some((0x1a2b3, u32::MAX))
    );
    assert_eq!(source_id("<3e61.0003.01ec@elsewhere.example>"), None);
    assert_eq!(source_id("<3e61.0003@source.example>"), None);
    assert_eq!(source_id("3e61.0003.01ec@source.example"), None);
}

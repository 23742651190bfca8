//! The mixed IMAP workload: every user runs sessions one after another on its own mailbox, each
//! `LOGIN`, `SELECT INBOX`, a fixed number of commands drawn from a weighted mix, `LOGOUT`.
//!
//! The mix (weights out of 100): header fetch of the last 20 messages
//! (`BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]`) 25, one whole message
//! (`BODY.PEEK[]`) 25, a flag change (`STORE +FLAGS`/`-FLAGS (\Flagged)`) 20, `APPEND` of a new
//! message 10, expunge of one message (`STORE +FLAGS.SILENT (\Deleted)` then `EXPUNGE`) 10, a
//! short `IDLE` (entered, then `DONE`) 10. Appends and expunges balance, so mailboxes keep their
//! size. Each command answered `OK` is one operation; `NO`, `BAD`, a broken connection, a
//! timeout or an answer that does not match the command (a header fetch returning the wrong
//! number of messages, a body shorter than any message stored, an expunge removing other than
//! one message) is an error of that command's kind.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{ClientError, Endpoint, Reply, quoted};

/// The operation kinds, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Login,
    Select,
    FetchHeaders,
    FetchBody,
    Store,
    Append,
    Expunge,
    Idle,
    Logout,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Login,
        Kind::Select,
        Kind::FetchHeaders,
        Kind::FetchBody,
        Kind::Store,
        Kind::Append,
        Kind::Expunge,
        Kind::Idle,
        Kind::Logout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Select => "select",
            Kind::FetchHeaders => "fetch headers",
            Kind::FetchBody => "fetch body",
            Kind::Store => "store flags",
            Kind::Append => "append",
            Kind::Expunge => "expunge",
            Kind::Idle => "idle",
            Kind::Logout => "logout",
        }
    }
}

/// The smallest and largest generated message.
pub const MIN_MESSAGE: usize = 2 * 1024;
pub const MAX_MESSAGE: usize = 20 * 1024;
/// Messages in a header fetch.
const HEADER_RANGE: u32 = 20;

/// What every user does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The users' addresses; user `i` owns mailbox `INBOX` of `users[i]`.
    pub users: Vec<String>,
    pub password: String,
    /// Messages each mailbox holds before the run (and keeps, on average).
    pub messages: u32,
    /// Mixed commands per session between `SELECT` and `LOGOUT`.
    pub commands_per_session: u32,
    /// How long a session stays in `IDLE`.
    pub idle_hold: Duration,
    /// Not measured, before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// Per command.
    pub timeout: Duration,
    /// Seeds every user's random choices (the same sequence against every target).
    pub seed: u64,
}

/// A small deterministic random source (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const WORDS: &[&str] = &[
    "the",
    "replica",
    "meeting",
    "quarterly",
    "report",
    "attached",
    "please",
    "review",
    "before",
    "friday",
    "thanks",
    "budget",
    "server",
    "mailbox",
    "schedule",
    "update",
    "project",
    "team",
    "notes",
    "draft",
    "customer",
    "invoice",
    "shipping",
    "tomorrow",
    "agenda",
    "question",
    "and",
    "with",
    "from",
    "about",
    "regards",
    "cluster",
    "latency",
    "storage",
    "deploy",
    "release",
];

/// Message `n` of `user`: plain-text mail of 2–20 KiB with the headers a client shows, the same
/// bytes for the same `(user, n)` against every target.
pub fn message(user: &str, n: u64) -> Vec<u8> {
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    for b in user.bytes() {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0x1000_0000_01b3));
    let size = MIN_MESSAGE + rng.below((MAX_MESSAGE - MIN_MESSAGE) as u64) as usize;
    let subject: Vec<&str> = (0..5)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect();
    let day = 1 + rng.below(28);
    let mut m = format!(
        "Return-Path: <sender{n}@example.org>\r\n\
         Date: Tue, {day} Oct 2025 {:02}:{:02}:{:02} +0000\r\n\
         From: \"Sender {n}\" <sender{n}@example.org>\r\n\
         To: <{user}>\r\n\
         Subject: {} #{n}\r\n\
         Message-ID: <{n}.{seed:x}@example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n",
        rng.below(24),
        rng.below(60),
        rng.below(60),
        subject.join(" "),
    )
    .into_bytes();
    let mut line = String::new();
    while m.len() < size - 2 {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        if line.len() + w.len() + 1 > 72 {
            m.extend_from_slice(line.as_bytes());
            m.extend_from_slice(b"\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    m.truncate(size - 2);
    // Never end on a lone CR or in the middle of a CRLF.
    while m.last() == Some(&b'\r') {
        m.pop();
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// One kind's measurements.
#[derive(Clone, Debug, Default)]
pub struct KindStats {
    /// Latencies of the operations inside the measured window, sorted.
    pub latencies: Vec<Duration>,
    pub errors: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Indexed like [`Kind::ALL`].
    pub kinds: Vec<KindStats>,
    pub measured: Duration,
    /// Sessions begun inside the measured window.
    pub sessions: u64,
    /// TCP connect, TLS handshake and greeting, per session in the window (not an operation).
    pub connects: Vec<Duration>,
    /// Message bytes received in literals.
    pub literal_bytes: u64,
    /// A few error messages, `kind: message`.
    pub first_errors: Vec<String>,
    /// Per user: messages appended and expunged by the run (`None` when an append or expunge
    /// ended without a clear answer, so the count is unknown).
    pub changes: Vec<Option<(u64, u64)>>,
}

impl Report {
    pub fn ops(&self) -> usize {
        self.kinds.iter().map(|k| k.latencies.len()).sum()
    }

    pub fn errors(&self) -> u64 {
        self.kinds.iter().map(|k| k.errors).sum()
    }

    pub fn ops_per_second(&self) -> f64 {
        self.ops() as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    pub fn kind(&self, kind: Kind) -> &KindStats {
        &self.kinds[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }
}

/// The `q` quantile in milliseconds of sorted durations.
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Fills every user's INBOX up to `messages` messages with `APPEND` (all users at once, each
/// over its own connection). Returns the messages appended.
pub async fn populate(endpoint: &Endpoint, w: &Workload) -> Result<u64, String> {
    let mut tasks = Vec::new();
    for (i, user) in w.users.iter().enumerate() {
        let endpoint = endpoint.clone();
        let user = user.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = endpoint
                .connect(w.timeout, endpoint.source_for(i))
                .await
                .map_err(|e| format!("{user}: {e}"))?;
            let login = format!("LOGIN {} {}", quoted(&user), quoted(&w.password));
            let step = |r: Result<Reply, ClientError>, what: &str| {
                r.map_err(|e| e.to_string())
                    .and_then(Reply::ok)
                    .map_err(|e| format!("{user}: {what}: {e}"))
            };
            step(c.command(&login).await, "LOGIN")?;
            step(c.command("SELECT INBOX").await, "SELECT")?;
            let mut added = 0u64;
            for n in u64::from(c.exists)..u64::from(w.messages) {
                step(c.append("INBOX", "", &message(&user, n)).await, "APPEND")?;
                added += 1;
            }
            step(c.command("LOGOUT").await, "LOGOUT")?;
            Ok::<u64, String>(added)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// The measured window, shared by every user.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn over(&self) -> bool {
        Instant::now() >= self.until
    }

    fn inside(&self, began: Instant) -> bool {
        began >= self.from && Instant::now() <= self.until
    }
}

#[derive(Default)]
struct UserResult {
    kinds: Vec<KindStats>,
    sessions: u64,
    connects: Vec<Duration>,
    literal_bytes: u64,
    errors: Vec<String>,
    appended: u64,
    expunged: u64,
    uncertain: bool,
}

impl UserResult {
    /// Records one command; `false` when it failed (the session then ends).
    fn record(
        &mut self,
        kind: Kind,
        began: Instant,
        window: &Window,
        outcome: Result<(), String>,
    ) -> bool {
        let stats = &mut self.kinds[kind as usize];
        match outcome {
            Ok(()) => {
                if window.inside(began) {
                    stats.latencies.push(began.elapsed());
                }
                true
            }
            Err(e) => {
                stats.errors += 1;
                if self.errors.len() < 3 {
                    self.errors.push(format!("{}: {e}", kind.name()));
                }
                false
            }
        }
    }
}

fn answered(r: Result<Reply, ClientError>) -> Result<Reply, String> {
    r.map_err(|e| e.to_string()).and_then(Reply::ok)
}

/// Runs the workload against `endpoint`: warm-up, then the measured window.
pub async fn run(endpoint: &Endpoint, w: &Workload) -> Report {
    let start = Instant::now();
    let window = Window {
        from: start + w.warmup,
        until: start + w.warmup + w.measure,
    };
    let w = Arc::new(w.clone());
    let mut tasks = Vec::new();
    for (i, user) in w.users.iter().enumerate() {
        let endpoint = endpoint.clone();
        let user = user.clone();
        let w = w.clone();
        let seed = w.seed ^ ((i as u64 + 1) << 32);
        tasks.push(tokio::spawn(async move {
            let source = endpoint.source_for(i);
            user_loop(&endpoint, &user, source, &w, window, seed).await
        }));
    }
    let mut report = Report {
        kinds: vec![KindStats::default(); Kind::ALL.len()],
        measured: w.measure,
        ..Report::default()
    };
    for t in tasks {
        let r = match t.await {
            Ok(r) => r,
            Err(e) => {
                report
                    .first_errors
                    .push(format!("a user's task failed: {e}"));
                report.changes.push(None);
                continue;
            }
        };
        for (all, mine) in report.kinds.iter_mut().zip(r.kinds) {
            all.latencies.extend(mine.latencies);
            all.errors += mine.errors;
        }
        report.sessions += r.sessions;
        report.connects.extend(r.connects);
        report.literal_bytes += r.literal_bytes;
        if report.first_errors.len() < 5 {
            report.first_errors.extend(r.errors);
        }
        report
            .changes
            .push((!r.uncertain).then_some((r.appended, r.expunged)));
    }
    for k in &mut report.kinds {
        k.latencies.sort_unstable();
    }
    report.connects.sort_unstable();
    report
}

async fn user_loop(
    endpoint: &Endpoint,
    user: &str,
    source: Option<IpAddr>,
    w: &Workload,
    window: Window,
    seed: u64,
) -> UserResult {
    let mut r = UserResult {
        kinds: vec![KindStats::default(); Kind::ALL.len()],
        ..UserResult::default()
    };
    let mut rng = Rng::new(seed);
    let mut appends = 0u64;
    let login = format!("LOGIN {} {}", quoted(user), quoted(&w.password));
    while !window.over() {
        let began = Instant::now();
        let mut c = match endpoint.connect(w.timeout, source).await {
            Ok(c) => c,
            Err(e) => {
                // Counted with the login it prevented.
                r.record(Kind::Login, began, &window, Err(format!("connecting: {e}")));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if window.inside(began) {
            r.connects.push(began.elapsed());
            r.sessions += 1;
        }
        if session(
            &mut c,
            &login,
            user,
            w,
            &window,
            &mut rng,
            &mut appends,
            &mut r,
        )
        .await
        {
            let began = Instant::now();
            let out = answered(c.command("LOGOUT").await).map(drop);
            r.record(Kind::Logout, began, &window, out);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.literal_bytes += c.literal_bytes;
    }
    r
}

/// One session after the greeting, up to (not including) LOGOUT; `false` when a command failed.
#[allow(clippy::too_many_arguments)]
async fn session<S>(
    c: &mut super::client::Connection<S>,
    login: &str,
    user: &str,
    w: &Workload,
    window: &Window,
    rng: &mut Rng,
    appends: &mut u64,
    r: &mut UserResult,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let began = Instant::now();
    let out = answered(c.command(login).await).map(drop);
    if !r.record(Kind::Login, began, window, out) {
        return false;
    }
    let began = Instant::now();
    let out = answered(c.command("SELECT INBOX").await).map(drop);
    if !r.record(Kind::Select, began, window, out) {
        return false;
    }
    for _ in 0..w.commands_per_session {
        if window.over() {
            break;
        }
        let exists = c.exists;
        let mut pick = rng.below(100);
        if exists == 0 {
            pick = 70; // nothing to read or remove: append
        } else if (80..90).contains(&pick) && exists < w.messages / 2 {
            pick = 70;
        }
        let began = Instant::now();
        let ok = match pick {
            0..25 => {
                let first = exists.saturating_sub(HEADER_RANGE - 1).max(1);
                let out = answered(
                    c.command(&format!(
                        "FETCH {first}:* (UID BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
                    ))
                    .await,
                )
                .and_then(|reply| {
                    let got = reply.fetches_with(b"BODY[HEADER.FIELDS").count() as u32;
                    let want = exists - first + 1;
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("{got} messages' headers for {want} requested"))
                    }
                });
                r.record(Kind::FetchHeaders, began, window, out)
            }
            25..50 => {
                let n = 1 + rng.below(u64::from(exists));
                let out = answered(c.command(&format!("FETCH {n} (UID BODY.PEEK[])")).await)
                    .and_then(|reply| {
                        let size = reply
                            .fetches_with(b"BODY[]")
                            .flat_map(|u| u.literals.iter())
                            .map(Vec::len)
                            .max()
                            .unwrap_or(0);
                        if size >= MIN_MESSAGE {
                            Ok(())
                        } else {
                            Err(format!("message {n}: a body of {size} bytes"))
                        }
                    });
                r.record(Kind::FetchBody, began, window, out)
            }
            50..70 => {
                let n = 1 + rng.below(u64::from(exists));
                let sign = if rng.below(2) == 0 { '+' } else { '-' };
                let out = answered(
                    c.command(&format!("STORE {n} {sign}FLAGS (\\Flagged)"))
                        .await,
                )
                .map(drop);
                r.record(Kind::Store, began, window, out)
            }
            70..80 => {
                *appends += 1;
                let body = message(user, 1_000_000 + *appends);
                match c.append("INBOX", "\\Seen", &body).await {
                    Ok(reply) => {
                        let out = reply.ok().map(drop);
                        if out.is_ok() {
                            r.appended += 1;
                        }
                        r.record(Kind::Append, began, window, out)
                    }
                    Err(e) => {
                        r.uncertain = true;
                        r.record(Kind::Append, began, window, Err(e.to_string()))
                    }
                }
            }
            80..90 => {
                let n = 1 + rng.below(u64::from(exists));
                let out = answered(
                    c.command(&format!("STORE {n} +FLAGS.SILENT (\\Deleted)"))
                        .await,
                )
                .map(drop);
                if !r.record(Kind::Store, began, window, out) {
                    return false;
                }
                let began = Instant::now();
                let before = c.exists;
                let out = match c.command("EXPUNGE").await {
                    Ok(reply) => reply.ok().and_then(|_| {
                        let removed = before.saturating_sub(c.exists);
                        r.expunged += u64::from(removed);
                        if removed == 1 {
                            Ok(())
                        } else {
                            Err(format!("EXPUNGE removed {removed} messages, not 1"))
                        }
                    }),
                    Err(e) => {
                        r.uncertain = true;
                        Err(e.to_string())
                    }
                };
                r.record(Kind::Expunge, began, window, out)
            }
            _ => {
                let out = answered(c.idle(w.idle_hold).await).map(drop);
                r.record(Kind::Idle, began, window, out)
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

/// After a run: each mailbox must hold `messages + appended − expunged` messages (`STATUS
/// INBOX (MESSAGES)`). Returns the users checked and a description of each mismatch.
pub async fn verify(
    endpoint: &Endpoint,
    w: &Workload,
    before: &[u32],
    report: &Report,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (i, user) in w.users.iter().enumerate() {
        let Some(Some((appended, expunged))) = report.changes.get(i) else {
            continue;
        };
        let expected = u64::from(before[i]) + appended - expunged;
        let got = async {
            let mut c = endpoint
                .connect(w.timeout, endpoint.source_for(i))
                .await
                .map_err(|e| e.to_string())?;
            answered(
                c.command(&format!("LOGIN {} {}", quoted(user), quoted(&w.password)))
                    .await,
            )?;
            let status = answered(c.command("STATUS INBOX (MESSAGES)").await)?;
            let _ = c.command("LOGOUT").await;
            status
                .untagged
                .iter()
                .find_map(|u| {
                    let t = u.text_lossy().to_ascii_uppercase();
                    let at = t.find("MESSAGES ")?;
                    t[at + 9..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .ok_or_else(|| "no MESSAGES in the STATUS answer".to_string())
        }
        .await;
        checked += 1;
        match got {
            Ok(n) if n == expected => {}
            Ok(n) => wrong.push(format!("{user}: {n} messages, expected {expected}")),
            Err(e) => wrong.push(format!("{user}: {e}")),
        }
    }
    (checked, wrong)
}

/// Each user's INBOX size as `SELECT` reports it.
pub async fn counts(endpoint: &Endpoint, w: &Workload) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for (i, user) in w.users.iter().enumerate() {
        let mut c = endpoint
            .connect(w.timeout, endpoint.source_for(i))
            .await
            .map_err(|e| format!("{user}: {e}"))?;
        answered(
            c.command(&format!("LOGIN {} {}", quoted(user), quoted(&w.password)))
                .await,
        )
        .map_err(|e| format!("{user}: LOGIN: {e}"))?;
        answered(c.command("SELECT INBOX").await).map_err(|e| format!("{user}: SELECT: {e}"))?;
        out.push(c.exists);
        let _ = c.command("LOGOUT").await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_deterministic_realistic_and_in_range() {
        let mut sizes = Vec::new();
        for n in 0..200 {
            let m = message("u1@bench.local", n);
            assert_eq!(m, message("u1@bench.local", n));
            assert!(
                (MIN_MESSAGE..=MAX_MESSAGE).contains(&m.len()),
                "{}",
                m.len()
            );
            assert!(m.ends_with(b"\r\n"));
            let text = String::from_utf8(m.clone()).unwrap();
            assert!(text.contains("\r\n\r\n"));
            assert!(text.starts_with("Return-Path: "));
            assert!(
                !text.replace("\r\n", "").contains(['\r', '\n']),
                "bare CR or LF"
            );
            sizes.push(m.len());
        }
        assert_ne!(message("u1@bench.local", 1), message("u2@bench.local", 1));
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((8 * 1024..14 * 1024).contains(&mean), "mean size {mean}");
    }

    #[test]
    fn percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 51.0);
        assert_eq!(percentile(&d, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}

//! Scale: a mailbox of 100,000 small messages (`TERN_SCALE_MESSAGES` to change), served by
//! the real server over TLS from the in-memory backend, read by a client that discards
//! what it reads. Prints, for each command, its seconds, the octets answered, and this
//! process's peak resident memory (VmHWM) after it, next to the peak after loading the
//! mailbox. Ignored by default (it measures, it does not judge); run it with
//!
//! ```sh
//! cargo test --release -p tern-imap --test scale -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::Instant;

use tern_imap::{ListenerConfig, MemoryBackend, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn tls() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// This process's peak resident set size, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Sends `command` tagged `tag` and reads until the tagged answer; returns the octets read
/// and the tagged line.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    tag: &str,
    command: &str,
) -> (u64, String) {
    stream
        .write_all(format!("{tag} {command}\r\n").as_bytes())
        .await
        .unwrap();
    let marker = format!("\r\n{tag} ");
    let mut window: Vec<u8> = b"\r\n".to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed during {command}");
        total += n as u64;
        window.extend_from_slice(&buf[..n]);
        if let Some(at) = window
            .windows(marker.len())
            .rposition(|w| w == marker.as_bytes())
            && window[at + 2..].ends_with(b"\r\n")
        {
            let line = String::from_utf8_lossy(&window[at + 2..]).trim().to_owned();
            return (total, line);
        }
        let keep = window.len().saturating_sub(512);
        window.drain(..keep);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn fetch_and_search_on_a_large_mailbox() {
    let count: usize = std::env::var("TERN_SCALE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    let started = Instant::now();
    for i in 1..=count {
        let word = if i % 10_000 == 0 { "needle" } else { "hay" };
        let body = format!(
            "From: sender{}@example.org\r\nTo: alice@example.org\r\nSubject: x message {i}\r\n\
             Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{i}@example.org>\r\n\r\n\
             Some {word} text for message {i}.\r\n",
            i % 97
        );
        backend.deliver("alice", "INBOX", body.as_bytes()).unwrap();
    }
    let loaded = peak_mib();
    println!(
        "loaded {count} messages in {:.1} s; peak RSS {loaded:.1} MiB",
        started.elapsed().as_secs_f64()
    );

    let (server_tls, client_tls) = tls();
    let mut config = ListenerConfig::new("imap.test", Some(server_tls));
    config.implicit_tls = true;
    let server = Server::new(config, Arc::clone(&backend)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });

    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(client_tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut greeting = vec![0u8; 1024];
    let _ = tls.read(&mut greeting).await.unwrap();
    let (_, answer) = exchange(&mut tls, "a", "LOGIN alice secret").await;
    assert!(answer.starts_with("a OK"), "{answer}");

    println!(
        "{:<52} {:>8} {:>12} {:>14}",
        "command", "seconds", "octets", "peak RSS MiB"
    );
    let commands = [
        "SELECT INBOX",
        "FETCH 1:* (UID FLAGS RFC822.SIZE)",
        "FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
        "UID SEARCH TEXT \"needle\"",
        "SEARCH SUBJECT x",
        "SEARCH UNSEEN",
        "NOOP",
    ];
    for (i, command) in commands.iter().enumerate() {
        let tag = format!("t{i}");
        let started = Instant::now();
        let (octets, answer) = exchange(&mut tls, &tag, command).await;
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            answer.starts_with(&format!("{tag} OK")),
            "{command}: {answer}"
        );
        println!(
            "{command:<52} {seconds:>8.2} {octets:>12} {:>14.1}",
            peak_mib()
        );
    }
    println!(
        "peak RSS grew {:.1} MiB over the loaded mailbox",
        peak_mib() - loaded
    );
}

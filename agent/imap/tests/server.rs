//! The server over real TCP and TLS, driven by Python's imaplib (tests/imaplib_client.py)
//! and by raw sockets, with the in-memory backend.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tern_imap::{Limits, ListenerConfig, MemoryBackend, Server, Throttle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn tls_config() -> Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    Arc::new(config)
}

/// Starts a STARTTLS and an implicit-TLS listener sharing one throttle; returns the ports.
async fn start(backend: Arc<MemoryBackend>, limits: Limits) -> (u16, u16) {
    let tls = tls_config();
    let throttle = Throttle::new(limits.clone());
    let mut ports = Vec::new();
    for implicit in [false, true] {
        let mut config = ListenerConfig::new("imap.test", Some(Arc::clone(&tls)));
        config.implicit_tls = implicit;
        config.limits = limits.clone();
        let server =
            Server::with_throttle(config, Arc::clone(&backend), Arc::clone(&throttle)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    }
    (ports[0], ports[1])
}

fn small_limits() -> Limits {
    Limits {
        max_literal: 1024 * 1024,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_session() {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    let (port, tls_port) = start(Arc::clone(&backend), small_limits()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/imaplib_client.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(tls_port.to_string())
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "imaplib client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("imaplib checks passed"), "{stdout}");
}

async fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut s))
        .await
        .expect("server answers")
        .unwrap();
    s
}

#[tokio::test]
async fn nonsync_literal_over_limit_closes_and_others_are_served() {
    let backend = Arc::new(MemoryBackend::new());
    let (port, _) = start(backend, small_limits()).await;
    let mut a = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert!(line(&mut a).await.starts_with("* OK [CAPABILITY IMAP4rev1"));
    a.get_mut()
        .write_all(b"x APPEND INBOX {5000000+}\r\n")
        .await
        .unwrap();
    assert!(line(&mut a).await.starts_with("* BYE [TOOBIG]"));
    assert_eq!(line(&mut a).await, "", "connection closed");

    let mut b = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    line(&mut b).await;
    b.get_mut().write_all(b"y CAPABILITY\r\n").await.unwrap();
    assert!(line(&mut b).await.contains("LOGINDISABLED"));
    assert!(line(&mut b).await.starts_with("y OK"));
}

#[tokio::test]
async fn starttls_drops_pipelined_commands() {
    let backend = Arc::new(MemoryBackend::new());
    let (port, _) = start(backend, small_limits()).await;
    let mut a = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    line(&mut a).await;
    // The NOOP pipelined in clear text after STARTTLS must not be answered.
    a.get_mut()
        .write_all(b"s STARTTLS\r\nn NOOP\r\n")
        .await
        .unwrap();
    assert!(line(&mut a).await.starts_with("s OK"));
    let tcp = a.into_inner();
    // The server now expects a TLS ClientHello; clear text gets no IMAP answer.
    let mut tcp = tcp;
    tcp.write_all(b"m NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains("n OK") && !text.contains("m OK"),
        "{text} {read:?}"
    );
}

#[tokio::test]
async fn connection_limit_per_address() {
    let backend = Arc::new(MemoryBackend::new());
    let limits = Limits {
        max_connections_per_address: 1,
        ..small_limits()
    };
    let (port, _) = start(backend, limits).await;
    let mut a = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert!(line(&mut a).await.starts_with("* OK"));
    let mut b = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert!(line(&mut b).await.starts_with("* BYE Too many connections"));
}

#[tokio::test]
async fn unauthenticated_idle_timeout() {
    let backend = Arc::new(MemoryBackend::new());
    let limits = Limits {
        unauthenticated_timeout: Duration::from_millis(300),
        ..small_limits()
    };
    let (port, _) = start(backend, limits).await;
    let mut a = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    line(&mut a).await;
    assert!(line(&mut a).await.starts_with("* BYE Autologout"));
}

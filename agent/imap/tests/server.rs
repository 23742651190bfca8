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
    start_with(backend, limits, false).await
}

/// As [`start`], with or without the PROXY protocol on both listeners.
async fn start_with(backend: Arc<MemoryBackend>, limits: Limits, proxy: bool) -> (u16, u16) {
    let tls = tls_config();
    let throttle = Throttle::new(limits.clone());
    let mut ports = Vec::new();
    for implicit in [false, true] {
        let mut config = ListenerConfig::new("imap.test", Some(Arc::clone(&tls)));
        config.implicit_tls = implicit;
        config.proxy_protocol = proxy;
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

/// A PROXY v2 header for a TCP over IPv4 connection from `source`.
fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&143u16.to_be_bytes());
    header
}

async fn connect_with(port: u16, first: &[u8]) -> BufReader<TcpStream> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(first).await.unwrap();
    BufReader::new(tcp)
}

#[tokio::test]
async fn proxy_protocol_address_counts_for_the_limits_and_no_header_is_refused() {
    let backend = Arc::new(MemoryBackend::new());
    let limits = Limits {
        max_connections_per_address: 1,
        ..small_limits()
    };
    let (port, _) = start_with(backend, limits, true).await;

    // The header's 10.0.0.1 holds the one connection it may.
    let mut a = connect_with(port, &proxy_v2([10, 0, 0, 1], 40001)).await;
    assert!(line(&mut a).await.starts_with("* OK"));

    // Another connection claiming 10.0.0.1 is over the limit, though its TCP peer differs
    // in port only like every other connection here.
    let mut b = connect_with(port, &proxy_v2([10, 0, 0, 1], 40002)).await;
    assert!(line(&mut b).await.starts_with("* BYE Too many connections"));

    // 10.0.0.2, from the same TCP peer address 127.0.0.1, is served; a command sent in the
    // same packet as the header is read as IMAP.
    let mut first = proxy_v2([10, 0, 0, 2], 40003);
    first.extend_from_slice(b"c CAPABILITY\r\n");
    let mut c = connect_with(port, &first).await;
    assert!(line(&mut c).await.starts_with("* OK"));
    assert!(line(&mut c).await.starts_with("* CAPABILITY"));
    assert!(line(&mut c).await.starts_with("c OK"));

    // A PROXY v1 header works as well.
    let mut v1 = connect_with(port, b"PROXY TCP4 10.0.0.3 127.0.0.1 40004 143\r\n").await;
    assert!(line(&mut v1).await.starts_with("* OK"));

    // Without a header: closed before any greeting.
    let mut d = connect_with(port, b"d CAPABILITY\r\n").await;
    assert_eq!(line(&mut d).await, "", "refused without a word");
    // A header that breaks the format: closed as well.
    let mut bad = proxy_v2([10, 0, 0, 4], 40005);
    bad[12] = 0x11;
    let mut e = connect_with(port, &bad).await;
    assert_eq!(line(&mut e).await, "");

    // The refused connections took no slot: 10.0.0.1's is still the only one held, and
    // freeing it lets the next 10.0.0.1 in.
    drop(a);
    let mut again = None;
    for _ in 0..50 {
        let mut f = connect_with(port, &proxy_v2([10, 0, 0, 1], 40006)).await;
        if line(&mut f).await.starts_with("* OK") {
            again = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot of 10.0.0.1 is released on close");
}

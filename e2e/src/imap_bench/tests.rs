//! The load generator against a real IMAP server: tern-imap's listener over implicit TLS on a
//! loopback socket, with its in-memory backend.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_agent::pki::LocalPki;
use tern_imap::{ListenerConfig, MemoryBackend, Server};
use tokio::net::TcpListener;

use super::client::{Endpoint, Trust};
use super::workload::{self, Kind, Workload};
use super::{Options, parse};

struct Imaps {
    addr: String,
    ca_pem: String,
    cert_pem: String,
    backend: Arc<MemoryBackend>,
}

async fn imaps_server(users: &[&str], password: &str) -> Imaps {
    let pki = LocalPki::generate("bench-test").unwrap();
    let (cert_pem, key_pem) = pki.issue(&["127.0.0.1".to_owned()]).unwrap();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let mut config = ListenerConfig::new("bench.test", Some(Arc::new(tls)));
    config.implicit_tls = true;
    let backend = Arc::new(MemoryBackend::new());
    for u in users {
        backend.add_account(u, password);
    }
    let server = Server::new(config, backend.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    Imaps {
        addr,
        ca_pem: pki.ca_cert_pem.clone(),
        cert_pem,
        backend,
    }
}

fn small(users: &[&str], password: &str) -> Workload {
    Workload {
        users: users.iter().map(|u| u.to_string()).collect(),
        password: password.into(),
        messages: 30,
        commands_per_session: 20,
        idle_hold: Duration::from_millis(5),
        warmup: Duration::from_millis(200),
        measure: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        seed: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mixed_workload_runs_every_operation_and_keeps_mailboxes_consistent() {
    // More users than the server admits connections per client address (20): each user
    // connects from its own loopback address.
    let names: Vec<String> = (0..24).map(|i| format!("u{i}@bench.test")).collect();
    let users: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = imaps_server(&users, "secret").await;
    let endpoint = Endpoint::new(&s.addr, &Trust::ca_pem(s.ca_pem.as_bytes()).unwrap()).unwrap();
    assert_eq!(endpoint.source_for(0), Some("127.1.0.1".parse().unwrap()));
    assert_eq!(endpoint.source_for(251), Some("127.1.1.2".parse().unwrap()));
    let w = small(&users, "secret");
    assert_eq!(workload::populate(&endpoint, &w).await.unwrap(), 24 * 30);
    // Filling is idempotent: full mailboxes get nothing more.
    assert_eq!(workload::populate(&endpoint, &w).await.unwrap(), 0);
    let before = workload::counts(&endpoint, &w).await.unwrap();
    assert_eq!(before, vec![30; 24]);
    let report = workload::run(&endpoint, &w).await;
    assert_eq!(report.errors(), 0, "{:?}", report.first_errors);
    for kind in Kind::ALL {
        assert!(
            !report.kind(kind).latencies.is_empty(),
            "no {} operations",
            kind.name()
        );
    }
    // One login per session, give or take one per user at each edge of the window (a session
    // connected before the window may log in inside it, and one connected at its end may not).
    let logins = report.kind(Kind::Login).latencies.len() as u64;
    assert!(
        logins.abs_diff(report.sessions) <= 2 * 24,
        "{logins} logins in {} sessions",
        report.sessions
    );
    assert!(report.ops() as f64 / 2.0 - report.ops_per_second() < 1e-6);
    // Message data was really read: at least one body of at least 2 KiB per body fetch.
    assert!(
        report.literal_bytes
            >= report.kind(Kind::FetchBody).latencies.len() as u64 * workload::MIN_MESSAGE as u64
    );
    let (checked, wrong) = workload::verify(&endpoint, &w, &before, &report).await;
    assert_eq!(checked, 24);
    assert!(wrong.is_empty(), "{wrong:?}");
    // And the check does catch a mailbox that changed behind the run's back.
    s.backend
        .deliver("u7@bench.test", "INBOX", b"Subject: extra\r\n\r\nx\r\n")
        .unwrap();
    let (_, wrong) = workload::verify(&endpoint, &w, &before, &report).await;
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].starts_with("u7@bench.test"), "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_reported_as_errors_without_hanging() {
    let s = imaps_server(&["a@bench.test"], "secret").await;
    let endpoint = Endpoint::new(&s.addr, &Trust::ca_pem(s.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut w = small(&["a@bench.test"], "wrong");
    w.warmup = Duration::ZERO;
    w.measure = Duration::from_millis(500);
    let err = workload::populate(&endpoint, &w).await.unwrap_err();
    assert!(err.contains("LOGIN: NO"), "{err}");
    let started = std::time::Instant::now();
    let report = workload::run(&endpoint, &w).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.ops(), 0);
    assert!(report.kind(Kind::Login).errors > 0);
    assert!(
        report.first_errors[0].starts_with("login: NO"),
        "{:?}",
        report.first_errors
    );
}

#[tokio::test]
async fn certificates_are_checked_by_ca_or_by_pin() {
    let s = imaps_server(&["a@bench.test"], "secret").await;
    let timeout = Duration::from_secs(5);
    let pinned =
        Endpoint::new(&s.addr, &Trust::pinned_pem(s.cert_pem.as_bytes()).unwrap()).unwrap();
    pinned.connect(timeout, None).await.unwrap();
    let other = LocalPki::generate("other").unwrap();
    let (other_cert, _) = other.issue(&["127.0.0.1".to_owned()]).unwrap();
    let wrong_pin =
        Endpoint::new(&s.addr, &Trust::pinned_pem(other_cert.as_bytes()).unwrap()).unwrap();
    assert!(wrong_pin.connect(timeout, None).await.is_err());
    let wrong_ca = Endpoint::new(
        &s.addr,
        &Trust::ca_pem(other.ca_cert_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(wrong_ca.connect(timeout, None).await.is_err());
    assert!(Trust::ca_pem(b"not pem").is_err());
    // Nothing listening: an error, quickly.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let nobody = Endpoint::new(&closed, &Trust::ca_pem(s.ca_pem.as_bytes()).unwrap()).unwrap();
    assert!(nobody.connect(timeout, None).await.is_err());
}

#[test]
fn options() {
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let o: Options = parse(&args(
        "--users 4,8 --seconds 5 --messages 10 --only tern --keep",
    ))
    .unwrap();
    assert_eq!(o.users, vec![4, 8]);
    assert_eq!(
        (o.seconds, o.messages, o.tern, o.dovecot, o.keep),
        (5, 10, true, false, true)
    );
    let d = parse(&[]).unwrap();
    assert_eq!(
        (d.users.clone(), d.seconds, d.messages),
        (vec![16, 64], 20, 100)
    );
    for bad in [
        "--users",
        "--users 0",
        "--users x",
        "--seconds 0",
        "--messages 0",
        "--base-port 80",
        "--only both",
        "--frobnicate",
    ] {
        assert!(parse(&args(bad)).is_err(), "{bad}");
    }
}

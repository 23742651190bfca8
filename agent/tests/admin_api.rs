//! The admin API over real HTTPS on loopback: an in-memory backend behind the server, driven
//! by `AdminClient` and by the `tern-agent admin` command line.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use tern_agent::admin::{
    AccountInfo, AdminBackend, AdminClient, AdminError, AdminServerConfig, ClientError, DomainInfo,
    NodeState, ServeError, ShardState, serve,
};
use tern_agent::pki::LocalPki;
use tokio::task::JoinHandle;

const PASSWORD: &str = "correct horse battery";

/// A CA and the PEMs of a certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca = LocalPki::generate(name).unwrap();
    let (cert_pem, key_pem) = ca
        .issue(&["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap();
    Pki {
        ca_pem: ca.ca_cert_pem.clone(),
        cert_pem,
        key_pem,
    }
}

#[derive(Default)]
struct State {
    domains: BTreeMap<String, i64>,
    /// address → (password, quota)
    accounts: BTreeMap<String, (String, Option<u64>)>,
}

/// Domains and accounts in memory; counts every call, and can play a shard without quorum.
#[derive(Default)]
struct Memory {
    state: Mutex<State>,
    calls: AtomicUsize,
    unavailable: AtomicBool,
}

impl Memory {
    fn enter(&self) -> Result<std::sync::MutexGuard<'_, State>, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(AdminError::Unavailable(
                "shard 0 has no leader (election in progress)".into(),
            ));
        }
        Ok(self.state.lock().unwrap())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn password(&self, address: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state.accounts.get(address).map(|(p, _)| p.clone())
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

impl AdminBackend for Memory {
    async fn create_domain(&self, domain: String) -> Result<(), AdminError> {
        let mut state = self.enter()?;
        if state.domains.contains_key(&domain) {
            return Err(AdminError::Conflict(format!("domain {domain} exists")));
        }
        state.domains.insert(domain, 1_700_000_000);
        Ok(())
    }

    async fn list_domains(&self) -> Result<Vec<DomainInfo>, AdminError> {
        let state = self.enter()?;
        Ok(state
            .domains
            .iter()
            .map(|(name, created)| DomainInfo {
                name: name.clone(),
                created: *created,
            })
            .collect())
    }

    async fn delete_domain(&self, domain: String) -> Result<(), AdminError> {
        let mut state = self.enter()?;
        if state.accounts.keys().any(|a| domain_of(a) == domain) {
            return Err(AdminError::Conflict(format!(
                "domain {domain} has accounts"
            )));
        }
        state
            .domains
            .remove(&domain)
            .map(drop)
            .ok_or_else(|| AdminError::NotFound(format!("no domain {domain}")))
    }

    async fn create_account(
        &self,
        address: String,
        password: String,
        quota_bytes: Option<u64>,
    ) -> Result<(), AdminError> {
        let mut state = self.enter()?;
        if !state.domains.contains_key(domain_of(&address)) {
            return Err(AdminError::NotFound(format!(
                "no domain {}",
                domain_of(&address)
            )));
        }
        if state.accounts.contains_key(&address) {
            return Err(AdminError::Conflict(format!("account {address} exists")));
        }
        state.accounts.insert(address, (password, quota_bytes));
        Ok(())
    }

    async fn list_accounts(&self, domain: String) -> Result<Vec<AccountInfo>, AdminError> {
        let state = self.enter()?;
        if !state.domains.contains_key(&domain) {
            return Err(AdminError::NotFound(format!("no domain {domain}")));
        }
        Ok(state
            .accounts
            .iter()
            .filter(|(a, _)| domain_of(a) == domain)
            .map(|(address, (_, quota))| AccountInfo {
                address: address.clone(),
                quota_bytes: *quota,
                used_bytes: 0,
                aliases: vec![],
            })
            .collect())
    }

    async fn delete_account(&self, address: String) -> Result<(), AdminError> {
        let mut state = self.enter()?;
        state
            .accounts
            .remove(&address)
            .map(drop)
            .ok_or_else(|| AdminError::NotFound(format!("no account {address}")))
    }

    async fn set_password(&self, address: String, password: String) -> Result<(), AdminError> {
        let mut state = self.enter()?;
        match state.accounts.get_mut(&address) {
            Some((p, _)) => {
                *p = password;
                Ok(())
            }
            None => Err(AdminError::NotFound(format!("no account {address}"))),
        }
    }

    async fn node_state(&self) -> Result<NodeState, AdminError> {
        drop(self.enter()?);
        Ok(NodeState {
            node_id: 1,
            name: "mail-default-0".into(),
            shards: vec![ShardState {
                shard: 0,
                role: "leader".into(),
                term: 3,
                leader: Some(1),
                last_log_index: Some(42),
                committed: Some(42),
                applied: Some(41),
                voters: vec![1, 2, 3],
                learners: vec![4],
            }],
        })
    }
}

struct Server {
    url: String,
    pki: Pki,
    backend: Arc<Memory>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let pki = pki("admin");
        let backend = Arc::new(Memory::default());
        let config = AdminServerConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cert_pem: pki.cert_pem.clone().into_bytes(),
            key_pem: pki.key_pem.clone().into_bytes(),
            password: PASSWORD.into(),
        };
        let (addr, task) = serve(config, backend.clone()).await.unwrap();
        Server {
            url: format!("https://{addr}"),
            pki,
            backend,
            task,
        }
    }

    fn client(&self, password: &str) -> AdminClient {
        AdminClient::new(
            &self.url,
            "admin",
            password,
            Some(self.pki.ca_pem.as_bytes()),
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn refused(e: &ClientError) -> (u16, &str, &str, Option<u64>) {
    match e {
        ClientError::Refused {
            status,
            reason,
            message,
            retry_after,
        } => (*status, reason, message, *retry_after),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn domains_and_accounts_round_trip_over_tls() {
    let server = Server::start().await;
    let client = server.client(PASSWORD);

    assert_eq!(client.list_domains().await.unwrap(), vec![]);
    client.create_domain("Example.ORG").await.unwrap();
    assert_eq!(
        client.list_domains().await.unwrap(),
        vec![DomainInfo {
            name: "example.org".into(),
            created: 1_700_000_000
        }]
    );
    let e = client.create_domain("example.org").await.unwrap_err();
    assert_eq!(refused(&e).0, 409);
    assert_eq!(refused(&e).1, "Conflict");
    assert!(refused(&e).2.contains("exists"), "{e}");

    client
        .create_account("Alice.B+mail@EXAMPLE.org", "first-password", Some(1 << 30))
        .await
        .unwrap();
    assert_eq!(
        server
            .backend
            .password("Alice.B+mail@example.org")
            .as_deref(),
        Some("first-password")
    );
    let accounts = client.list_accounts("example.org").await.unwrap();
    assert_eq!(
        accounts,
        vec![AccountInfo {
            address: "Alice.B+mail@example.org".into(),
            quota_bytes: Some(1 << 30),
            used_bytes: 0,
            aliases: vec![],
        }]
    );
    client
        .set_password("Alice.B+mail@example.org", "second-password")
        .await
        .unwrap();
    assert_eq!(
        server
            .backend
            .password("Alice.B+mail@example.org")
            .as_deref(),
        Some("second-password")
    );
    let e = client
        .set_password("nobody@example.org", "second-password")
        .await
        .unwrap_err();
    assert_eq!(refused(&e).0, 404);
    assert_eq!(refused(&e).1, "NotFound");

    let e = client.delete_domain("example.org").await.unwrap_err();
    assert_eq!(refused(&e).0, 409, "a domain with accounts stays");
    client
        .delete_account("Alice.B+mail@example.org")
        .await
        .unwrap();
    assert_eq!(client.list_accounts("example.org").await.unwrap(), vec![]);
    client.delete_domain("example.org").await.unwrap();
    assert_eq!(client.list_domains().await.unwrap(), vec![]);
    let e = client.delete_domain("example.org").await.unwrap_err();
    assert_eq!(refused(&e).0, 404);

    let node = client.node_state().await.unwrap();
    assert_eq!(node.name, "mail-default-0");
    assert_eq!(node.shards[0].voters, vec![1, 2, 3]);
    assert_eq!(node.shards[0].applied, Some(41));

    // The wire format is camelCase.
    let raw = client
        .send_raw(Method::GET, "/admin/v1/node", None)
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(raw.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(json["nodeId"], 1);
    assert_eq!(json["shards"][0]["lastLogIndex"], 42);
}

#[tokio::test]
async fn wrong_password_is_401_and_never_reaches_the_backend() {
    let server = Server::start().await;
    for client in [
        server.client("wrong password"),
        AdminClient::new(
            &server.url,
            "root",
            PASSWORD,
            Some(server.pki.ca_pem.as_bytes()),
        )
        .unwrap(),
    ] {
        let e = client.create_domain("example.org").await.unwrap_err();
        let (status, reason, _, _) = refused(&e);
        assert_eq!((status, reason), (401, "Unauthorized"));
        assert!(!e.is_temporary());
        let raw = client
            .send_raw(Method::GET, "/admin/v1/domains", None)
            .await
            .unwrap();
        assert_eq!(raw.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            raw.headers["www-authenticate"],
            "Basic realm=\"tern-admin\""
        );
    }
    assert_eq!(server.backend.calls(), 0);
    assert!(server.backend.state.lock().unwrap().domains.is_empty());
}

#[tokio::test]
async fn five_failures_block_the_address_even_with_the_right_password() {
    let server = Server::start().await;
    let wrong = server.client("wrong password");
    for _ in 0..5 {
        let e = wrong.list_domains().await.unwrap_err();
        assert_eq!(refused(&e).0, 401);
    }
    let right = server.client(PASSWORD);
    let e = right.list_domains().await.unwrap_err();
    let (status, reason, message, retry_after) = refused(&e);
    assert_eq!((status, reason), (429, "TooManyRequests"), "{message}");
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(e.is_temporary());
    assert_eq!(
        server.backend.calls(),
        0,
        "the blocked request reached the backend"
    );

    // Another address is not blocked.
    let elsewhere = server
        .client(PASSWORD)
        .with_local_ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(elsewhere.list_domains().await.unwrap(), vec![]);
    assert_eq!(server.backend.calls(), 1);
}

#[tokio::test]
async fn unavailable_backend_is_503_with_retry_after() {
    let server = Server::start().await;
    let client = server.client(PASSWORD);
    server.backend.unavailable.store(true, Ordering::SeqCst);
    let e = client.create_domain("example.org").await.unwrap_err();
    let (status, reason, message, retry_after) = refused(&e);
    assert_eq!((status, reason), (503, "Unavailable"));
    assert!(message.contains("no leader"), "{message}");
    assert_eq!(retry_after, Some(2));
    assert!(e.is_temporary());

    server.backend.unavailable.store(false, Ordering::SeqCst);
    client.create_domain("example.org").await.unwrap();
}

#[tokio::test]
async fn bad_input_is_400_with_a_readable_message() {
    let server = Server::start().await;
    let client = server.client(PASSWORD);

    let raw = client
        .send_raw(
            Method::POST,
            "/admin/v1/domains",
            Some(b"{\"name\": ".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    let error = raw.error().unwrap();
    assert_eq!(error.reason, "Invalid");
    assert!(error.error.starts_with("malformed JSON body"), "{error:?}");

    let raw = client
        .send_raw(
            Method::POST,
            "/admin/v1/domains",
            Some(br#"{"domain":"example.org"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    assert!(raw.error().unwrap().error.contains("unknown field"));

    for (address, password, want) in [
        ("nobody", "long enough", "invalid address"),
        ("a b@example.org", "long enough", "invalid address"),
        ("a@exa_mple.org", "long enough", "invalid address"),
        ("a@example.org", "short", "8 to 1024 characters"),
    ] {
        let e = client
            .create_account(address, password, None)
            .await
            .unwrap_err();
        let (status, reason, message, _) = refused(&e);
        assert_eq!((status, reason), (400, "Invalid"), "{address}");
        assert!(message.contains(want), "{address}: {message}");
    }
    let e = client.create_domain("bad..domain").await.unwrap_err();
    assert_eq!(refused(&e).0, 400);
    let e = client.list_accounts("-bad.example").await.unwrap_err();
    assert_eq!(refused(&e).0, 400);
    assert_eq!(
        server.backend.calls(),
        0,
        "invalid input never reaches the backend"
    );
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies() {
    let server = Server::start().await;
    let client = server.client(PASSWORD);
    /// Method, path, body, expected status and reason.
    type Case = (
        Method,
        &'static str,
        Option<Vec<u8>>,
        StatusCode,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            Method::GET,
            "/admin/v1/nope",
            None,
            StatusCode::NOT_FOUND,
            "NoSuchRoute",
        ),
        (Method::GET, "/", None, StatusCode::NOT_FOUND, "NoSuchRoute"),
        (
            Method::GET,
            "/admin/v2/domains",
            None,
            StatusCode::NOT_FOUND,
            "NoSuchRoute",
        ),
        (
            Method::DELETE,
            "/admin/v1/domains",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            Method::PUT,
            "/admin/v1/node",
            Some(b"{}".to_vec()),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            "/admin/v1/accounts",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            Method::POST,
            "/admin/v1/domains",
            Some(vec![b' '; 65 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
        ),
    ];
    for (method, path, body, status, reason) in cases {
        let raw = client
            .send_raw(method.clone(), path, body.clone())
            .await
            .unwrap();
        assert_eq!(raw.status, *status, "{method} {path}");
        assert_eq!(raw.error().unwrap().reason, *reason, "{method} {path}");
    }
    // Routing happens after authentication: strangers learn nothing about routes.
    let raw = server
        .client("wrong password")
        .send_raw(Method::GET, "/admin/v1/nope", None)
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.backend.calls(), 0);
}

#[tokio::test]
async fn a_client_without_the_right_ca_fails_the_handshake() {
    let server = Server::start().await;
    let stranger = pki("other");
    let client = AdminClient::new(
        &server.url,
        "admin",
        PASSWORD,
        Some(stranger.ca_pem.as_bytes()),
    )
    .unwrap();
    let e = client.list_domains().await.unwrap_err();
    assert!(matches!(e, ClientError::Handshake { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS handshake"), "{e}");

    assert!(matches!(
        AdminClient::new(&server.url, "admin", PASSWORD, None),
        Err(ClientError::NoTrust)
    ));
    // Only when asked for: no verification at all.
    let insecure = AdminClient::insecure(&server.url, "admin", PASSWORD).unwrap();
    assert_eq!(insecure.list_domains().await.unwrap(), vec![]);
    assert_eq!(server.backend.calls(), 1);
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_password_or_with_a_bad_key() {
    let pki = pki("admin");
    let config = AdminServerConfig {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        cert_pem: pki.cert_pem.into_bytes(),
        key_pem: pki.key_pem.into_bytes(),
        password: String::new(),
    };
    let backend = Arc::new(Memory::default());
    assert!(matches!(
        serve(config.clone(), backend.clone()).await,
        Err(ServeError::EmptyPassword)
    ));
    let config = AdminServerConfig {
        password: PASSWORD.into(),
        key_pem: b"garbage".to_vec(),
        ..config
    };
    assert!(matches!(
        serve(config, backend).await,
        Err(ServeError::Tls(_))
    ));
}

/// A scratch directory with the CA and password files, removed at the end.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(server: &Server, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tern-admin-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &server.pki.ca_pem).unwrap();
        std::fs::write(dir.join("admin-password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.join("account-password"), "from-a-file-123\n").unwrap();
        Files { dir }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tern-agent admin ARGS` with the URL, CA and admin password from the environment.
async fn cli(server: &Server, files: &Files, args: &[&str], stdin: &str) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern-agent"));
    command
        .arg("admin")
        .args(args)
        .env("TERN_ADMIN_URL", &server.url)
        .env("TERN_ADMIN_CA_FILE", files.dir.join("ca.pem"))
        .env("TERN_ADMIN_PASSWORD_FILE", files.dir.join("admin-password"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_drives_the_api() {
    let server = Server::start().await;
    let files = Files::new(&server, "drive");

    let out = cli(&server, &files, &["domain", "add", "Example.org"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "domain Example.org added\n");

    // The account's password from standard input …
    let out = cli(
        &server,
        &files,
        &["account", "add", "alice@example.org", "--quota", "1000"],
        "from-stdin-123\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        server.backend.password("alice@example.org").as_deref(),
        Some("from-stdin-123")
    );
    // … or from a file.
    let account_file = files.dir.join("account-password");
    let out = cli(
        &server,
        &files,
        &[
            "account",
            "passwd",
            "alice@example.org",
            "--password-file",
            account_file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        server.backend.password("alice@example.org").as_deref(),
        Some("from-a-file-123")
    );

    let out = cli(&server, &files, &["account", "list", "example.org"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "ADDRESS            QUOTA  USED  ALIASES\nalice@example.org  1000   0     -\n"
    );

    let out = cli(&server, &files, &["status"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("node 1 (mail-default-0)\nSHARD  ROLE"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("0      leader  3"), "{}", out.stdout);
    let out = cli(&server, &files, &["-o", "json", "status"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let node: NodeState = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(node.shards[0].learners, vec![4]);

    // Refused by the server: exit 1, the server's reason printed.
    let out = cli(&server, &files, &["domain", "add", "example.org"], "").await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("domain example.org exists"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    let out = cli(
        &server,
        &files,
        &["account", "add", "bob@example.org"],
        "short\n",
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("8 to 1024"), "{}", out.stderr);

    // Usage errors: exit 2, and a password on the command line is one.
    let out = cli(&server, &files, &["domain", "explode"], "").await;
    assert_eq!(out.code, 2);
    let out = cli(
        &server,
        &files,
        &[
            "account",
            "add",
            "bob@example.org",
            "--password",
            "hunter2222",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("never taken from the command line"));
    assert!(server.backend.password("bob@example.org").is_none());

    let out = cli(&server, &files, &["account", "rm", "alice@example.org"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&server, &files, &["domain", "rm", "example.org"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&server, &files, &["domain", "list", "-o", "json"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "[]");
}

//! Accepting connections: the accept loop of one listener ([`serve`]) and the admission of
//! each connection ([`admit`]).
//!
//! The loop refuses connections beyond the listener's limit at once, runs each admitted one
//! in its own task, and on shutdown stops accepting, tells the connections through [`Stop`]
//! and aborts those still running after the grace period. Admission reads the PROXY header
//! when the listener expects one (a connection without a valid one is refused: anyone
//! reaching the pod directly could otherwise pick their own address), then takes a
//! connection slot of the client's address from the [`Throttle`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::proxy::{self, ProxyHeader};
use crate::stream::Prefixed;
use crate::throttle::{ConnectionSlot, Throttle};

/// What a listener counted, for metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections that became sessions (after the PROXY header, the connection limits and,
    /// on an implicit-TLS listener, the handshake).
    pub sessions: AtomicU64,
    /// Connections closed before a session began: a full listener, too many connections
    /// from one address, no valid PROXY header, a failed implicit-TLS handshake.
    pub refused: AtomicU64,
}

impl ListenerStats {
    /// Counts a session.
    pub fn session(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused connection.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Tells a connection that its listener is shutting down.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once shutdown has begun.
    pub async fn stopping(&mut self) {
        // An error means the loop is gone, which is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// How a listener's accept loop behaves.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// The listener's name, for logs.
    pub name: &'static str,
    /// Most simultaneous connections on this listener; more are refused at once.
    pub max_connections: usize,
    /// What a connection refused because the listener is full is told, best effort and
    /// without waiting (None on an implicit-TLS listener, whose client expects a handshake).
    pub full_reply: Option<Vec<u8>>,
    /// How long connections may run on once shutdown begins before they are aborted.
    pub shutdown_grace: Duration,
}

/// Accepts connections on `listener` until `shutdown` completes, running
/// `connection(tcp, peer, stop)` in a task for each; then stops accepting, signals
/// [`Stop`], and returns once every connection has ended or, after the grace period,
/// been aborted.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    config: &LoopConfig,
    stats: &ListenerStats,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Stop) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = config.name;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    info!(listener = name, address = ?listener.local_addr().ok(), "listening");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    warn!(listener = name, error = %e, "connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if tasks.len() >= config.max_connections {
                        debug!(listener = name, %peer, "listener full");
                        stats.refused();
                        if let Some(reply) = &config.full_reply {
                            let _ = tcp.try_write(reply);
                        }
                        continue;
                    }
                    tasks.spawn(connection(tcp, peer, Stop(stop_rx.clone())));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    info!(listener = name, connections = tasks.len(), "shutting down");
    let deadline = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            done = tasks.join_next() => if done.is_none() { break },
            () = &mut deadline => {
                if !config.shutdown_grace.is_zero() {
                    warn!(listener = name, connections = tasks.len(), "grace period over, aborting connections");
                }
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// How connections are admitted.
#[derive(Clone, Debug)]
pub struct Admission {
    /// Whether every connection must start with a PROXY v1/v2 header.
    pub proxy_protocol: bool,
    /// Longest wait for that header.
    pub proxy_header_timeout: Duration,
    /// What a client over its address's connection limit is told before the connection is
    /// closed (None on an implicit-TLS listener).
    pub busy_reply: Option<Vec<u8>>,
    /// Longest wait to write `busy_reply`.
    pub reply_timeout: Duration,
}

/// An admitted connection.
#[derive(Debug)]
pub struct Admitted {
    /// The connection, with what followed the PROXY header read first.
    pub stream: Prefixed<TcpStream>,
    /// The client: the PROXY header's source address, or else the TCP peer.
    pub client: SocketAddr,
    /// The PROXY header, when there was one.
    pub proxy: Option<ProxyHeader>,
    /// The client address's connection slot; hold it for the life of the connection.
    pub slot: ConnectionSlot,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The listener expects a PROXY header and none valid came.
    #[error("no valid PROXY header: {0}")]
    Proxy(#[from] proxy::ReadError),
    /// The client's address holds all the connections it may.
    #[error("too many connections from {0}")]
    TooManyFromAddress(std::net::IpAddr),
}

/// Admits `tcp` from `peer`: reads the PROXY header if `admission` asks for one, then takes
/// a connection slot of the client's address (telling a client over its limit
/// `busy_reply`).
pub async fn admit(
    mut tcp: TcpStream,
    peer: SocketAddr,
    admission: &Admission,
    throttle: &Arc<Throttle>,
) -> Result<Admitted, Refused> {
    let _ = tcp.set_nodelay(true);
    let (proxy, leftover) = if admission.proxy_protocol {
        let (header, leftover) =
            proxy::read_header(&mut tcp, admission.proxy_header_timeout).await?;
        (Some(header), leftover)
    } else {
        (None, Vec::new())
    };
    let client = proxy.and_then(|h| h.source).unwrap_or(peer);
    let Some(slot) = throttle.connect(client.ip()) else {
        if let Some(reply) = &admission.busy_reply {
            let _ = timeout(admission.reply_timeout, tcp.write_all(reply)).await;
        }
        return Err(Refused::TooManyFromAddress(client.ip()));
    };
    Ok(Admitted {
        stream: Prefixed::new(tcp, leftover),
        client,
        proxy,
        slot,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::throttle::ThrottleLimits;

    fn admission(proxy_protocol: bool) -> Admission {
        Admission {
            proxy_protocol,
            proxy_header_timeout: Duration::from_secs(5),
            busy_reply: Some(b"busy\r\n".to_vec()),
            reply_timeout: Duration::from_secs(5),
        }
    }

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream, SocketAddr) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn admission_takes_the_client_address_from_the_proxy_header() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let throttle = Throttle::new(ThrottleLimits {
            max_connections_per_address: 1,
            ..ThrottleLimits::default()
        });
        let (mut c1, s1, peer) = pair(&listener).await;
        c1.write_all(b"PROXY TCP4 10.0.0.1 192.0.2.5 4000 143\r\nhello")
            .await
            .unwrap();
        let mut first = admit(s1, peer, &admission(true), &throttle).await.unwrap();
        assert_eq!(first.client, "10.0.0.1:4000".parse().unwrap());
        let mut hello = [0u8; 5];
        first.stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");

        // Same claimed address: over its limit of one, told so, refused.
        let (mut c2, s2, peer) = pair(&listener).await;
        c2.write_all(b"PROXY TCP4 10.0.0.1 192.0.2.5 4001 143\r\n")
            .await
            .unwrap();
        let err = admit(s2, peer, &admission(true), &throttle)
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::TooManyFromAddress(_)), "{err}");
        let mut reply = Vec::new();
        c2.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"busy\r\n");

        // Another claimed address from the same TCP peer is admitted.
        let (mut c3, s3, peer) = pair(&listener).await;
        c3.write_all(b"PROXY TCP4 10.0.0.2 192.0.2.5 4002 143\r\n")
            .await
            .unwrap();
        assert!(admit(s3, peer, &admission(true), &throttle).await.is_ok());

        // Without a header: refused.
        let (mut c4, s4, peer) = pair(&listener).await;
        c4.write_all(b"a1 LOGIN x y\r\n").await.unwrap();
        let err = admit(s4, peer, &admission(true), &throttle)
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::Proxy(_)), "{err}");
    }

    #[tokio::test]
    async fn without_proxy_protocol_the_peer_is_the_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let throttle = Throttle::new(ThrottleLimits::default());
        let (mut c, s, peer) = pair(&listener).await;
        c.write_all(b"PROXY TCP4 10.0.0.1 192.0.2.5 4000 143\r\n")
            .await
            .unwrap();
        let mut admitted = admit(s, peer, &admission(false), &throttle).await.unwrap();
        assert_eq!(admitted.client, peer);
        assert!(admitted.proxy.is_none());
        let mut first = [0u8; 6];
        admitted.stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PROXY ", "the bytes are the protocol's, untouched");
    }

    #[tokio::test]
    async fn the_loop_refuses_beyond_its_limit_and_aborts_after_the_grace_period() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = LoopConfig {
            name: "test",
            max_connections: 1,
            full_reply: Some(b"full\r\n".to_vec()),
            shutdown_grace: Duration::from_millis(100),
        };
        let stats = Arc::new(ListenerStats::default());
        let seen_stop = Arc::new(Mutex::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let loop_stats = Arc::clone(&stats);
        let loop_seen = Arc::clone(&seen_stop);
        let server = tokio::spawn(async move {
            serve(
                listener,
                async {
                    let _ = stop_rx.await;
                },
                &config,
                &loop_stats,
                move |tcp, _peer, mut stop| {
                    let seen = Arc::clone(&loop_seen);
                    async move {
                        let _tcp = tcp;
                        stop.stopping().await;
                        *seen.lock().unwrap() = true;
                        // Ignores the stop: only the grace period ends it.
                        std::future::pending::<()>().await;
                    }
                },
            )
            .await;
        });
        let _first = TcpStream::connect(addr).await.unwrap();
        // The first connection's task must be running before the second arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut reply = Vec::new();
        timeout(Duration::from_secs(5), second.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, b"full\r\n");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        stop_tx.send(()).unwrap();
        timeout(Duration::from_secs(5), server)
            .await
            .expect("the loop ends after the grace period")
            .unwrap();
        assert!(*seen_stop.lock().unwrap(), "connections are told to stop");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}

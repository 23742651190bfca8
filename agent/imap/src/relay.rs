//! Relayed sessions: a node that does not serve an account's mailboxes hands the account's
//! sessions, right after login, to a node that does ([`Backend::serves`],
//! [`Backend::relay`]).
//!
//! The client sees one IMAP session. This node sent the greeting and answered the
//! commands before login, and the login itself (`OK` only once the other node has accepted
//! the session). From then on every byte passes through unchanged, both ways — commands,
//! literals, IDLE and `DONE`, responses — to a session on the other node that starts in the
//! authenticated state ([`Server::serve_relayed`]). Bytes the client pipelined after its
//! login command go first.
//!
//! How a relayed session ends:
//!
//! - The client logs out or closes: the other node's session ends with it.
//! - The other node ends the session cleanly (the answer to LOGOUT, its own timeouts): its
//!   last bytes reach the client, then the connection closes.
//! - The other node is lost — the stream breaks or ends without a clean close (the node
//!   died or restarted), or the backend's stream reports it lost (e.g. failure detection
//!   holds the node suspect or dead): the client gets [`LOST`], a `BYE` with the
//!   `[UNAVAILABLE]` code, and the connection closes. A client that reconnects is relayed to
//!   another node. Commands in flight are lost with the connection: whether they took effect
//!   is unknown to the client, as with any connection lost mid-command.
//!
//! [`Backend::serves`]: crate::Backend::serves
//! [`Backend::relay`]: crate::Backend::relay
//! [`Server::serve_relayed`]: crate::Server::serve_relayed

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the client is told when the node serving its session is lost.
pub const LOST: &[u8] =
    b"* BYE [UNAVAILABLE] Lost the connection to the mailbox server, please reconnect\r\n";

/// Bytes read at once in each direction.
const BUFFER: usize = 32 * 1024;
/// How long closing either side may take.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How much of the server's last output is kept to see whether it said `BYE` itself.
const TAIL: usize = 512;

/// How a relayed session ended.
#[derive(Debug)]
pub enum Ended {
    /// The client closed its connection (or it broke).
    Client,
    /// The other node ended the session cleanly.
    Server,
    /// The other node was lost; the client was told so with [`LOST`] unless the server had
    /// just said `BYE` itself.
    Lost(io::Error),
}

/// Relays between `client` and `upstream` until the session ends; `pending` (what the
/// client sent after its login command) goes to `upstream` first.
pub async fn pipe<C, U>(client: &mut C, upstream: &mut U, pending: &[u8]) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut tail = Tail::default();
    if !pending.is_empty()
        && let Err(e) = send(upstream, pending).await
    {
        return lost(client, e, &tail).await;
    }
    let mut from_client = vec![0u8; BUFFER];
    let mut from_server = vec![0u8; BUFFER];
    loop {
        // Both reads are cancel-safe: whichever loses the race has read nothing.
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => {
                    // The client is gone: end the other node's session too.
                    let _ = tokio::time::timeout(CLOSE_WAIT, upstream.shutdown()).await;
                    return Ended::Client;
                }
                Ok(n) => {
                    if let Err(e) = send(upstream, &from_client[..n]).await {
                        return lost(client, e, &tail).await;
                    }
                }
            },
            read = upstream.read(&mut from_server) => match read {
                Ok(0) => {
                    let _ = tokio::time::timeout(CLOSE_WAIT, client.shutdown()).await;
                    return Ended::Server;
                }
                Ok(n) => {
                    tail.push(&from_server[..n]);
                    if send(client, &from_server[..n]).await.is_err() {
                        return Ended::Client;
                    }
                }
                Err(e) => return lost(client, e, &tail).await,
            },
        }
    }
}

async fn send<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// The upstream broke: tells the client (unless the server's last line was its own `BYE`)
/// and closes.
async fn lost<C: AsyncWrite + Unpin + ?Sized>(
    client: &mut C,
    error: io::Error,
    tail: &Tail,
) -> Ended {
    if !tail.said_bye() {
        let _ = tokio::time::timeout(CLOSE_WAIT, send(client, LOST)).await;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, client.shutdown()).await;
    Ended::Lost(error)
}

/// The last bytes the server sent.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(TAIL);
        self.0.extend_from_slice(&bytes[bytes.len() - keep..]);
        if self.0.len() > TAIL {
            self.0.drain(..self.0.len() - TAIL);
        }
    }

    /// Whether one of the last two lines the server sent is an untagged `BYE` (a session
    /// ending on a timeout says `BYE`; after LOGOUT, the tagged `OK` follows it).
    fn said_bye(&self) -> bool {
        let text = self.0.strip_suffix(b"\r\n").unwrap_or(&self.0);
        text.rsplit(|&b| b == b'\n')
            .take(2)
            .any(|line| line.starts_with(b"* BYE "))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut all)).await;
        all
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged_and_pending_ones_go_first() {
        let (mut client, mut client_side) = duplex(64);
        let (mut server_side, mut server) = duplex(64);
        let relay = tokio::spawn(async move {
            pipe(&mut client_side, &mut server_side, b"b SELECT INBOX\r\n").await
        });
        let mut got = vec![0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"b SELECT INBOX\r\n");
        // A literal with CR, LF and NUL, larger than the duplex buffers: byte for byte.
        let literal: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
        let writer = {
            let literal = literal.clone();
            tokio::spawn(async move {
                client.write_all(&literal).await.unwrap();
                client
            })
        };
        let mut got = vec![0u8; literal.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, literal);
        let mut client = writer.await.unwrap();
        server
            .write_all(b"* 3 EXISTS\r\nb OK done\r\n")
            .await
            .unwrap();
        let answer = b"* 3 EXISTS\r\nb OK done\r\n";
        let mut got = vec![0u8; answer.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        // The server closes cleanly: the client sees the end, no BYE added.
        server.shutdown().await.unwrap();
        drop(server);
        assert!(read_all(&mut client).await.is_empty());
        assert!(matches!(relay.await.unwrap(), Ended::Server));
    }

    /// An upstream whose reads fail, as a TLS stream closed without close_notify does.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify",
            )))
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_lost_server_means_bye_unavailable_and_a_closed_connection() {
        let (mut client, mut client_side) = duplex(1024);
        let ended = pipe(&mut client_side, &mut Broken, b"").await;
        assert!(matches!(ended, Ended::Lost(_)), "{ended:?}");
        drop(client_side);
        assert_eq!(read_all(&mut client).await, LOST);
    }

    #[tokio::test]
    async fn a_server_that_said_bye_itself_gets_no_second_one() {
        let mut tail = Tail::default();
        tail.push(b"* 1 FETCH (FLAGS ())\r\n* BYE Autologout; idle for too long\r\n");
        assert!(tail.said_bye());
        let mut tail = Tail::default();
        tail.push(b"* BYE logging out\r\na OK completed\r\n");
        assert!(tail.said_bye());
        let mut tail = Tail::default();
        tail.push(b"* BYE in a body long ago\r\n");
        tail.push(&[b'x'; 600]);
        tail.push(b"\r\nb OK done\r\n");
        assert!(!tail.said_bye());
        assert!(!Tail::default().said_bye());
    }

    #[test]
    fn what_the_client_pipelined_after_its_login_is_passed_on_as_sent() {
        use crate::server::{Event, Framer};
        let mut framer = Framer::new(&crate::Limits::default());
        let after = b"b SELECT INBOX\r\nc APPEND INBOX {5+}\r\nab";
        framer.enqueue(b"a LOGIN user secret\r\n");
        framer.enqueue(after);
        let mut out = Vec::new();
        assert!(matches!(framer.pump(&mut out), Event::Message));
        assert_eq!(framer.frag.message_bytes(), b"a LOGIN user secret\r\n");
        assert_eq!(framer.drain(), after);
        assert!(framer.drain().is_empty());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_leaves_ends_the_servers_session() {
        let (client, mut client_side) = duplex(1024);
        let (mut server_side, mut server) = duplex(1024);
        drop(client);
        let ended = pipe(&mut client_side, &mut server_side, b"").await;
        assert!(matches!(ended, Ended::Client), "{ended:?}");
        drop(server_side);
        assert!(read_all(&mut server).await.is_empty());
    }
}

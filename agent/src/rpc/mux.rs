//! Multiplexed connections (ALPN `tern-rpc/2`): many requests in flight on one connection.
//!
//! A node forwarding writes to a shard's leader has as many requests waiting as it has
//! deliveries in progress. With one request per connection each of them costs its own writes,
//! reads and wakeups on both sides, and the leader holds one connection per waiting request.
//! Here every frame carries the id of its request after the length prefix (a `u64`,
//! big-endian); the server answers each request when it is done, in any order, under the
//! request's id. Frames waiting to be written go out together, in one TLS write.
//!
//! Raft's own RPCs keep their connections of one request at a time (`tern-rpc/1`): a large
//! append or snapshot chunk must not hold up the answers to forwarded writes, nor they a
//! heartbeat. A peer that offers only `tern-rpc/1` (an older agent) is asked one request per
//! connection, as before.
//!
//! Memory is bounded on both sides: the server reads a request only while the requests it has
//! read and not yet answered come to less than [`MAX_FRAME`] bytes, so a peer that sends
//! faster than the shards answer waits on TCP; the client has at most the requests its
//! callers are waiting for.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::server::RpcStats;
use super::wire::{MAX_FRAME, Refused, RpcRequest, RpcResponse, decode, frame_len, read_frame};

/// The ALPN protocol of multiplexed connections.
pub(crate) const ALPN_MUX: &[u8] = b"tern-rpc/2";

/// Bytes of a request's id, after the length prefix of every frame.
const ID: usize = 8;

/// Frames gathered into one write, at most (more wait for the next).
const BATCH: usize = 256 << 10;

/// How long a client's write may wait for the peer to read. Callers give up sooner (their
/// deadlines), and a connection silent past a caller's deadline is closed (`Mux::call`).
const WRITE_STALL: Duration = Duration::from_secs(120);

/// A whole frame of a multiplexed connection for `message`: the length prefix, `id`, the
/// postcard message. A message that makes the frame longer than [`MAX_FRAME`] is
/// `InvalidInput`.
pub(crate) fn frame<T: Serialize>(id: u64, message: &T) -> io::Result<Vec<u8>> {
    // Allocated once at the frame's size: a forwarded write carries a whole message.
    let size = postcard::experimental::serialized_size(message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut head = Vec::with_capacity(4 + ID + size);
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&id.to_be_bytes());
    let mut frame = postcard::to_extend(message, head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = frame_len(frame.len() - 4)?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// The message of a frame made by [`frame`] (after its length prefix and id).
pub(crate) fn message(frame: &[u8]) -> &[u8] {
    &frame[4 + ID..]
}

/// The id and the message of a frame's body (what follows its length prefix).
fn split(body: &[u8]) -> io::Result<(u64, &[u8])> {
    match body.split_first_chunk::<ID>() {
        Some((id, message)) => Ok((u64::from_be_bytes(*id), message)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {} bytes has no request id", body.len()),
        )),
    }
}

/// A frame made by [`frame`] to go out under `id` (which replaces the one it was made with):
/// a request may go out on a second connection, under another id, without being encoded
/// again.
struct Outgoing {
    id: u64,
    frame: Arc<Vec<u8>>,
}

/// Writes the frames arriving on `frames` to `w`, all those waiting in one write, until the
/// last sender is gone or a write fails or takes longer than `stall` (the peer reads
/// nothing).
async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    stall: Duration,
) -> io::Result<()> {
    let mut batch = Vec::new();
    while let Some(first) = frames.recv().await {
        // Frames come in bursts: the answers to the commands of one Raft entry, the next
        // requests of callers woken by one read of answers. The runtime runs the task a
        // sender wakes next, before the other senders of the burst, so without this yield
        // each frame would go out in a write (a record, a syscall, a wakeup of the peer) of
        // its own.
        tokio::task::yield_now().await;
        batch.clear();
        let mut next = Some(first);
        while let Some(Outgoing { id, frame }) = next {
            let at = batch.len();
            batch.extend_from_slice(&frame);
            batch[at + 4..at + 4 + ID].copy_from_slice(&id.to_be_bytes());
            next = match batch.len() < BATCH {
                true => frames.try_recv().ok(),
                false => None,
            };
        }
        let write = async {
            w.write_all(&batch).await?;
            // TLS holds what it was given until flushed.
            w.flush().await
        };
        tokio::time::timeout(stall, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer reads nothing"))??;
        if batch.capacity() > 4 * BATCH {
            batch = Vec::new();
        }
    }
    Ok(())
}

/// Why a request on a multiplexed connection got no answer.
#[derive(Debug)]
pub(crate) enum MuxError {
    /// The connection was closed before the request was handed to it: it was not sent, and
    /// may be sent on another connection, whatever it is. How the connection ended.
    NotSent(Ended),
    /// The connection was lost after the request was handed to it: the peer may have carried
    /// it out.
    Lost(Ended),
    /// No answer by the deadline.
    TimedOut,
}

/// How a multiplexed connection ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ended {
    /// The peer's TLS refused this node (with TLS 1.3 a client hears that its certificate
    /// was refused only when it reads): it cannot be connected to, rather than broke.
    pub refused: bool,
    /// What ended it.
    pub why: String,
}

/// The client's end of a multiplexed connection.
pub(crate) struct Mux {
    frames: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What a connection's reader and its callers share.
struct Shared {
    /// Callers waiting for an answer, by request id; `None` once the connection is closed.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Vec<u8>>>>>,
    next_id: AtomicU64,
    /// When the connection opened; the times below count from it.
    opened: Instant,
    /// Answers received so far.
    answers: AtomicU64,
    /// Milliseconds after `opened` of the last request sent.
    used: AtomicU64,
    ended: Mutex<Option<Ended>>,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Fails every waiting caller (their answers will not come) and refuses new ones. `why`
    /// is the first reason given, unless a later one is a TLS refusal: the writer may see
    /// the connection reset before the reader reads the alert that tells why.
    fn close(&self, why: Ended) {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if ended.is_none() || why.refused {
            *ended = Some(why);
        }
        drop(ended);
        // Dropping the senders wakes the callers.
        drop(
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    fn ended(&self) -> Ended {
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default()
    }
}

impl Ended {
    fn from(error: &io::Error) -> Self {
        Self {
            refused: super::client::is_tls_refusal(error),
            why: error.to_string(),
        }
    }
}

/// Takes a waiting caller's entry out when it stops waiting, answered or not.
struct Waiting<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            waiting.remove(&self.id);
        }
    }
}

/// An answer received on a multiplexed connection.
#[derive(Debug)]
pub(crate) struct Answer(Vec<u8>);

impl Answer {
    /// The answer's message (after its id).
    pub(crate) fn message(&self) -> &[u8] {
        &self.0[ID..]
    }
}

impl Mux {
    /// Runs the client's end of a connection that negotiated [`ALPN_MUX`].
    pub(crate) fn start<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut r, w) = tokio::io::split(stream);
        let (frames, outgoing) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            opened: Instant::now(),
            answers: AtomicU64::new(0),
            used: AtomicU64::new(0),
            ended: Mutex::new(None),
        });
        let writer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let why = match write_frames(w, outgoing, WRITE_STALL).await {
                    Ok(()) => Ended::default(),
                    Err(error) => Ended::from(&error),
                };
                shared.close(why);
            })
        };
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let error = loop {
                    let body = match read_frame(&mut r).await {
                        Ok(body) => body,
                        Err(error) => break error,
                    };
                    let id = match split(&body) {
                        Ok((id, _)) => id,
                        Err(error) => break error,
                    };
                    shared.answers.fetch_add(1, Ordering::Relaxed);
                    let waiter = shared
                        .waiting
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_mut()
                        .and_then(|w| w.remove(&id));
                    // A caller that stopped waiting is no longer there: its answer is dropped.
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body);
                    }
                };
                shared.close(Ended::from(&error));
            })
        };
        Self {
            frames,
            shared,
            tasks: Mutex::new(vec![writer, reader]),
        }
    }

    /// Whether requests may still be sent on it.
    pub(crate) fn is_open(&self) -> bool {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// How long since a request was last sent on it.
    pub(crate) fn unused_for(&self) -> Duration {
        let used = self.shared.used.load(Ordering::Relaxed);
        Duration::from_millis(self.shared.ms().saturating_sub(used))
    }

    /// Closes it at once. Its socket should have been set to linger for nothing, so that what
    /// is still in the kernel's send queue is dropped too: requests not yet sent never are.
    pub(crate) fn kill(&self, why: &str) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        self.shared.close(Ended {
            refused: false,
            why: why.to_owned(),
        });
    }

    /// Sends `frame` (made by [`frame`]) under an id of this connection and waits until
    /// `deadline` for its answer.
    pub(crate) async fn call(
        &self,
        frame: &Arc<Vec<u8>>,
        deadline: Instant,
    ) -> Result<Answer, MuxError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(MuxError::NotSent(self.shared.ended())),
        };
        let _waiting = Waiting {
            shared: &self.shared,
            id,
        };
        self.shared.used.store(self.shared.ms(), Ordering::Relaxed);
        let answers = self.shared.answers.load(Ordering::Relaxed);
        let outgoing = Outgoing {
            id,
            frame: frame.clone(),
        };
        if self.frames.send(outgoing).is_err() {
            return Err(MuxError::NotSent(self.shared.ended()));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(body)) => Ok(Answer(body)),
            Ok(Err(_)) => Err(MuxError::Lost(self.shared.ended())),
            Err(_) => {
                // Nothing heard since this request went out: the peer is cut off or stuck.
                // Close the connection so that what is still queued for it is not delivered
                // later, after the callers were told it failed; while answers keep coming,
                // the peer is there and this request was merely slow.
                if self.shared.answers.load(Ordering::Relaxed) == answers {
                    self.kill("no answer in time");
                }
                Err(MuxError::TimedOut)
            }
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.kill("closed");
    }
}

/// Answers one request of a multiplexed connection.
pub(crate) type Handler =
    Arc<dyn Fn(RpcRequest) -> Pin<Box<dyn Future<Output = RpcResponse> + Send>> + Send + Sync>;

/// Serves a connection that negotiated [`ALPN_MUX`]: reads requests while fewer than
/// [`MAX_FRAME`] bytes of them are unanswered, runs each with `handler` as a task of its own,
/// and writes the answers as they come. It ends when the peer closes or sends a malformed
/// frame, or when no request is in flight and no frame arrives within `idle_timeout`;
/// answers to requests already read still go out.
pub(crate) async fn serve<S>(
    stream: S,
    peer: std::net::SocketAddr,
    handler: Handler,
    stats: Arc<RpcStats>,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, w) = tokio::io::split(stream);
    let (answers, outgoing) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(w, outgoing, idle_timeout));
    let budget = Arc::new(Semaphore::new(MAX_FRAME as usize));
    loop {
        // The next length prefix. The read is kept across timeouts (a prefix may arrive in
        // pieces); only a connection with nothing in flight counts as idle.
        let len = {
            let mut prefix = pin!(r.read_u32());
            loop {
                match tokio::time::timeout(idle_timeout, &mut prefix).await {
                    Ok(len) => break len,
                    Err(_) if budget.available_permits() == MAX_FRAME as usize => {
                        stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "rpc: multiplexed connection idle, closing it");
                        break Err(io::ErrorKind::TimedOut.into());
                    }
                    Err(_) => continue,
                }
            }
        };
        let Ok(len) = len else { break };
        if len > MAX_FRAME || (len as usize) < ID {
            stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, len, "rpc: malformed frame length, closing the connection");
            break;
        }
        let Ok(permit) = budget.clone().acquire_many_owned(len.max(1)).await else {
            break;
        };
        let mut body = vec![0; len as usize];
        match tokio::time::timeout(idle_timeout, r.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "rpc: half a frame, then nothing; closing the connection");
                break;
            }
        }
        let request = split(&body).and_then(|(id, message)| Ok((id, decode(message)?)));
        let (id, request): (u64, RpcRequest) = match request {
            Ok(request) => request,
            Err(error) => {
                stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %error, "rpc: malformed frame, closing the connection");
                break;
            }
        };
        drop(body);
        let answers = answers.clone();
        let handler = handler.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let response = handler(request).await;
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let answer = frame(id, &response).unwrap_or_else(|error| {
                tracing::warn!(%peer, %error, "rpc: cannot encode an answer");
                unsendable(&response, &error)
                    .and_then(|refusal| frame(id, &refusal).ok())
                    // Else an empty message, which the caller cannot decode: it fails this
                    // request alone.
                    .unwrap_or_else(|| frame(id, &()).expect("an empty message fits"))
            });
            let _ = answers.send(Outgoing {
                id,
                frame: Arc::new(answer),
            });
            drop(permit);
        });
    }
    drop(answers);
    // Requests in flight still answer; the writer ends with the last of them.
    let _ = writer.await;
}

/// What to answer instead of `response` when it cannot be sent (`error`: it does not fit in a
/// frame), for the answers that can say so: a refusal that names the reason.
fn unsendable(response: &RpcResponse, error: &io::Error) -> Option<RpcResponse> {
    let why = format!("the answer cannot be sent: {error}");
    match response {
        RpcResponse::Query(_) => Some(RpcResponse::Query(Err(Refused::Failed(why)))),
        RpcResponse::ReadIndex(_) => Some(RpcResponse::ReadIndex(Err(Refused::Failed(why)))),
        // Carried out: a retry with the same idempotency key is answered from the record.
        RpcResponse::Write(Ok(_)) => Some(RpcResponse::Write(Err(Refused::Failed(format!(
            "{why}; the command was carried out"
        ))))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_and_id() {
        let f = frame(0x0102_0304_0506_0708, &"hello").unwrap();
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        let (id, message) = split(&f[4..]).unwrap();
        assert_eq!(id, 0x0102_0304_0506_0708);
        assert_eq!(decode::<String>(message).unwrap(), "hello");
        assert!(split(&[1, 2, 3]).is_err(), "a body shorter than an id");
        // A forwarded write's frame is allocated once, at its size.
        let body = vec![7u8; 4096];
        let f = frame(9, &body).unwrap();
        assert_eq!(f.capacity(), f.len());
        assert_eq!(decode::<Vec<u8>>(super::message(&f)).unwrap(), body);
    }

    #[tokio::test]
    async fn waiting_frames_go_out_together_in_order_under_their_ids() {
        let (tx, rx) = mpsc::unbounded_channel();
        for i in 0..100u64 {
            let frame = Arc::new(frame(0, &vec![i as u8; i as usize]).unwrap());
            tx.send(Outgoing {
                id: 1000 + i,
                frame,
            })
            .unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        write_frames(&mut out, rx, Duration::from_secs(5))
            .await
            .unwrap();
        let mut r = &out[..];
        for i in 0..100u64 {
            let body = read_frame(&mut r).await.unwrap();
            let (id, message) = split(&body).unwrap();
            assert_eq!(id, 1000 + i);
            assert_eq!(
                decode::<Vec<u8>>(message).unwrap(),
                vec![i as u8; i as usize]
            );
        }
        assert!(r.is_empty());
    }

    /// Counts the writes it is given and keeps their bytes.
    #[derive(Default)]
    struct CountingWriter {
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// The burst of a Raft entry's answers: one task (the state machine's) wakes many (the
    /// requests' handlers), which each send a frame. The runtime runs the writer, woken by
    /// the first frame, before the other handlers; the frames still go out in one write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_sent_by_tasks_woken_together_go_out_in_one_write() {
        const SENDERS: usize = 40;
        let (tx, rx) = mpsc::unbounded_channel();
        let out = CountingWriter::default();
        let writes = out.writes.clone();
        let writer = tokio::spawn(write_frames(out, rx, Duration::from_secs(5)));
        let mut wakes = Vec::new();
        let mut senders = Vec::new();
        for i in 0..SENDERS {
            let (wake, woken) = oneshot::channel::<()>();
            wakes.push(wake);
            let tx = tx.clone();
            senders.push(tokio::spawn(async move {
                woken.await.unwrap();
                let frame = Arc::new(frame(0, &vec![i as u8; 100]).unwrap());
                tx.send(Outgoing {
                    id: i as u64,
                    frame,
                })
                .unwrap();
            }));
        }
        drop(tx);
        // Let every sender reach its wait, then wake them all from one task on the worker.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::spawn(async move {
            for wake in wakes {
                wake.send(()).unwrap();
            }
        })
        .await
        .unwrap();
        for sender in senders {
            sender.await.unwrap();
        }
        writer.await.unwrap().unwrap();
        let writes = writes.lock().unwrap().clone();
        let frame_len = frame(0, &vec![0u8; 100]).unwrap().len();
        assert_eq!(writes.iter().sum::<usize>(), SENDERS * frame_len);
        assert!(
            writes.len() <= 2,
            "{SENDERS} frames sent together went out in {} writes",
            writes.len()
        );
    }

    /// A peer that reads nothing stalls the writer, which gives up after `stall` (both ends
    /// write their frames this way: the client with its write limit, the server with its
    /// idle timeout).
    #[tokio::test]
    async fn a_writer_that_the_peer_does_not_read_gives_up() {
        let (writer, _unread) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Outgoing {
            id: 1,
            frame: Arc::new(frame(0, &vec![7u8; 64 << 10]).unwrap()),
        })
        .unwrap();
        let began = Instant::now();
        let writing = write_frames(writer, rx, Duration::from_millis(100));
        let error = tokio::time::timeout(Duration::from_secs(10), writing)
            .await
            .expect("the writer gives up on its own")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(began.elapsed() >= Duration::from_millis(100));
        drop(tx);
    }

    use crate::rpc::wire::RpcKind;
    use tern_raft::{Request, Response};

    /// Answers a query with its own bytes after as many milliseconds as its first byte says;
    /// a query starting with 255 is never answered, one starting with 254 is answered with
    /// more than a frame holds.
    fn echo() -> Handler {
        Arc::new(|request: RpcRequest| {
            Box::pin(async move {
                let RpcKind::Query(query) = request.kind else {
                    return RpcResponse::UnknownShard(request.shard);
                };
                match query.bytes[0] {
                    255 => std::future::pending().await,
                    254 => {
                        return RpcResponse::Query(Ok(Response {
                            bytes: vec![0; MAX_FRAME as usize],
                        }));
                    }
                    ms => tokio::time::sleep(Duration::from_millis(ms.into())).await,
                }
                RpcResponse::Query(Ok(Response {
                    bytes: query.bytes.to_vec(),
                }))
            })
        })
    }

    fn query(bytes: Vec<u8>) -> Arc<Vec<u8>> {
        let request = RpcRequest {
            shard: 1,
            kind: RpcKind::Query(Request::new(bytes)),
        };
        Arc::new(frame(0, &request).unwrap())
    }

    fn answered(answer: Result<Answer, MuxError>) -> Vec<u8> {
        match decode(answer.unwrap().message()).unwrap() {
            RpcResponse::Query(Ok(response)) => response.bytes,
            other => panic!("not an answer to a query: {other:?}"),
        }
    }

    const PEER: &str = "127.0.0.1:1";

    /// A client's end and a server's end (run as a task, with `idle` as its idle timeout)
    /// over in-memory pipes, and the task relaying between them: aborting it cuts the
    /// connection.
    fn pair(idle: Duration) -> (Mux, JoinHandle<()>, Arc<RpcStats>) {
        let (client, mut near) = tokio::io::duplex(64 << 10);
        let (mut far, server) = tokio::io::duplex(64 << 10);
        let relay = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut near, &mut far).await;
        });
        let stats = Arc::new(RpcStats::default());
        tokio::spawn(serve(
            server,
            PEER.parse().unwrap(),
            echo(),
            stats.clone(),
            idle,
        ));
        (Mux::start(client), relay, stats)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn answers_come_back_to_their_callers_in_any_order() {
        let (mux, _served, stats) = pair(Duration::from_secs(10));
        let mux = Arc::new(mux);
        let calls: Vec<_> = (0..100u8)
            .map(|i| {
                let mux = mux.clone();
                // Later requests are answered first.
                let bytes = vec![(100 - i) % 25, i, i];
                tokio::spawn(async move {
                    let answer = mux.call(&query(bytes.clone()), soon()).await;
                    (bytes, answered(answer))
                })
            })
            .collect();
        for call in calls {
            let (asked, answer) = call.await.unwrap();
            assert_eq!(answer, asked);
        }
        assert_eq!(stats.requests.load(Ordering::Relaxed), 100);
    }

    #[tokio::test]
    async fn a_lost_connection_fails_the_callers_still_waiting_and_takes_no_more() {
        let (mux, relay, _) = pair(Duration::from_secs(10));
        let mux = Arc::new(mux);
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let mux = mux.clone();
                tokio::spawn(async move { mux.call(&query(vec![255]), soon()).await })
            })
            .collect();
        // Everything was sent when an answer to a later request came back.
        assert_eq!(answered(mux.call(&query(vec![0, 1]), soon()).await), [0, 1]);
        relay.abort();
        for call in calls {
            let lost = call.await.unwrap();
            assert!(matches!(lost, Err(MuxError::Lost(_))), "{lost:?}");
        }
        assert!(!mux.is_open());
        let refused = mux.call(&query(vec![0]), soon()).await;
        assert!(matches!(refused, Err(MuxError::NotSent(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out_alone_while_the_peer_answers_others() {
        let (mux, _served, _) = pair(Duration::from_secs(10));
        let mux = Arc::new(mux);
        let slow = {
            let mux = mux.clone();
            let deadline = Instant::now() + Duration::from_millis(300);
            tokio::spawn(async move { mux.call(&query(vec![255]), deadline).await })
        };
        // Answers keep coming while the slow one waits.
        for _ in 0..20 {
            assert_eq!(answered(mux.call(&query(vec![20]), soon()).await), [20]);
        }
        let slow = slow.await.unwrap();
        assert!(matches!(slow, Err(MuxError::TimedOut)), "{slow:?}");
        assert!(mux.is_open(), "the peer answers, the connection stays");
        assert_eq!(answered(mux.call(&query(vec![0, 2]), soon()).await), [0, 2]);
    }

    #[tokio::test]
    async fn a_request_timing_out_with_nothing_heard_since_closes_the_connection() {
        let (mux, _served, _) = pair(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_millis(100);
        let timed_out = mux.call(&query(vec![255]), deadline).await;
        assert!(
            matches!(timed_out, Err(MuxError::TimedOut)),
            "{timed_out:?}"
        );
        assert!(!mux.is_open(), "a silent peer's connection is closed");
    }

    #[tokio::test]
    async fn the_server_closes_on_a_frame_without_an_id() {
        let (mut client, server) = tokio::io::duplex(1024);
        let stats = Arc::new(RpcStats::default());
        let served = tokio::spawn(serve(
            server,
            PEER.parse().unwrap(),
            echo(),
            stats.clone(),
            Duration::from_secs(10),
        ));
        client.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the server ends")
            .unwrap();
        assert_eq!(stats.malformed_frames.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_server_counts_a_connection_idle_only_with_nothing_in_flight() {
        let (mux, _relay, stats) = pair(Duration::from_millis(100));
        // Answered after two idle timeouts' time: the connection stays open for it.
        assert_eq!(
            answered(mux.call(&query(vec![250, 3]), soon()).await),
            [250, 3]
        );
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 0);
        let began = Instant::now();
        while mux.is_open() {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "then it is closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_server_reads_no_further_than_its_budget_allows() {
        let (client, server) = tokio::io::duplex(64 << 10);
        let stats = Arc::new(RpcStats::default());
        tokio::spawn(serve(
            server,
            PEER.parse().unwrap(),
            echo(),
            stats,
            Duration::from_secs(10),
        ));
        let mux = Arc::new(Mux::start(client));
        // Two requests of more than half the budget each: the second is read only once
        // the first is answered, so it waits for the first's 200 ms.
        let big = |first: u8| {
            let mut bytes = vec![first; (MAX_FRAME / 2) as usize + 1];
            bytes[1] = 7;
            bytes
        };
        let first = {
            let mux = mux.clone();
            tokio::spawn(async move { mux.call(&query(big(200)), soon()).await })
        };
        let began = Instant::now();
        let second = mux.call(&query(big(0)), soon()).await;
        assert!(
            began.elapsed() >= Duration::from_millis(150),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(answered(second).len(), (MAX_FRAME / 2) as usize + 1);
        assert!(first.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_answer_too_large_for_a_frame_is_a_refusal_that_says_so() {
        let (mux, _served, stats) = pair(Duration::from_secs(10));
        let answer = mux.call(&query(vec![254]), soon()).await.unwrap();
        match decode(answer.message()).unwrap() {
            RpcResponse::Query(Err(Refused::Failed(why))) => {
                assert!(why.contains("cannot be sent"), "{why}");
            }
            other => panic!("not a refusal: {other:?}"),
        }
        // The connection carries on.
        assert_eq!(answered(mux.call(&query(vec![0, 1]), soon()).await), [0, 1]);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 2);
    }
}

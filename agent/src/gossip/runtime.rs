//! The gossip runtime: sockets, timers and the one task that owns the [`Member`].
//!
//! ```text
//!  UDP socket ───────────────┐
//!  TCP accept → conn tasks ──┤ Inbound      ┌──────────────────────────────┐
//!  dial tasks (answers) ─────┼─────────────▶│ member task: open (keyring,  │──▶ UDP send
//!  Gossip::leave ────────────┤ Command      │ replay table), Member, seal  │──▶ dial tasks
//!  10 ms ticks ──────────────┘              └──────────────┬───────────────┘
//!                                                          └──▶ Snapshot (Gossip handle)
//!  keyring file watcher ──▶ watch<Keyring>     seed resolver ──▶ watch<seed addresses>
//! ```
//!
//! Connection tasks only read and write frames (with deadlines); opening, membership and
//! sealing happen in the member task, so there is one replay table and one sequence counter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tern_gossip::crypto::{self, DropReason, Header, SealError};
use tern_gossip::keyring::Keyring;
use tern_gossip::message::{Kind, Message, NodeId, State};
use tern_gossip::replay::{ReplayTable, SequenceCounter};
use tern_gossip::swim::{Member, Out, SplitMix64};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::handle::{Command, Gossip, Inner, MemberState, MemberView, ShardView, Snapshot};
use super::keys::{read_key_file, watch_key_file};
use super::meta::NodeMeta;
use super::metrics::Metrics;
use super::options::{GossipOptions, Seed, advertised};
use super::transport::{CONNECT_TIMEOUT, FRAME_TIMEOUT, FrameError, read_frame, write_frame};
use crate::follow::Shared;
use crate::rpc::ShardStatus;

/// The replicas this node runs and their status (`ShardHost::shard_statuses`); empty on a
/// node without data.
pub type ShardSource = Arc<dyn Fn() -> Vec<(u32, ShardStatus)> + Send + Sync>;

/// Timer resolution of the member task (probe timeouts are 80 ms).
const TICK: Duration = Duration::from_millis(10);
/// The view served by [`Gossip`] is rebuilt at least this often (and after every change).
const PUBLISH_EVERY_MS: u64 = 100;
/// A leaving node gossips its departure for at most this long.
const LEAVE_GRACE_MS: u64 = 1_000;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// Connections served at once; more are closed at once.
const MAX_ACCEPTED: usize = 64;
/// Outgoing stream exchanges at once; more are skipped (they are retried by the protocol).
const MAX_DIALS: usize = 32;
/// Seeds asked per join attempt (the headless Service may list every pod).
const SEEDS_PER_ROUND: usize = 5;
/// Seed names are looked up again this soon when they resolved to nothing.
const SEED_RETRY: Duration = Duration::from_secs(2);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds gossip's UDP socket and TCP listener on `options.listen`, checks the keyring file, and
/// starts the runtime: it waits until the assignment names this node, then joins through the
/// seeds and runs until [`Gossip::leave`].
pub async fn start(
    options: GossipOptions,
    followed: Shared,
    shards: ShardSource,
) -> Result<Gossip, String> {
    let (keyring, key_bytes) =
        read_key_file(&options.cluster, &options.key_file).map_err(|e| e.to_string())?;
    let (udp, tcp) = bind(options.listen).await?;
    let listen = udp
        .local_addr()
        .map_err(|e| format!("gossip socket: {e}"))?;
    let advertise = options.advertise.or_else(|| advertised(listen, None));
    let metrics = Arc::new(Metrics::default());
    let primary = keyring.primary_id();
    let (key_tx, key_rx) = watch::channel(Arc::new(keyring));
    let (commands_tx, commands) = mpsc::channel(4);
    let inner = Arc::new(Inner {
        node: options.node_name.clone(),
        listen,
        followed: followed.clone(),
        snapshot: RwLock::default(),
        metrics: metrics.clone(),
        commands: commands_tx,
        keyring: key_rx.clone(),
    });
    let key_watch = tokio::spawn(watch_key_file(
        options.cluster.clone(),
        options.key_file.clone(),
        key_bytes,
        key_tx,
        metrics.clone(),
        options.key_poll,
    ));
    tracing::info!(
        %listen,
        advertise = %advertise.map_or("(learned from packets)".to_owned(), |a| a.to_string()),
        seeds = %options.seeds.iter().map(Seed::to_string).collect::<Vec<_>>().join(","),
        key_id = %primary,
        "gossip listening (UDP and TCP)"
    );
    tokio::spawn(run(Setup {
        options,
        listen,
        advertise,
        udp,
        tcp,
        inner: inner.clone(),
        keyring: key_rx,
        commands,
        shards,
        key_watch,
    }));
    Ok(Gossip { inner })
}

/// UDP and TCP on one port. With port 0 the UDP socket picks a port and the listener takes the
/// same one (tried again when another process holds that port for TCP).
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), String> {
    for _ in 0..32 {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("gossip UDP socket {listen}: {e}"))?;
        let at = udp
            .local_addr()
            .map_err(|e| format!("gossip UDP socket {listen}: {e}"))?;
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if listen.port() == 0 => continue,
            Err(e) => return Err(format!("gossip TCP listener {at}: {e}")),
        }
    }
    Err(format!(
        "gossip {listen}: no port free for both UDP and TCP"
    ))
}

struct Setup {
    options: GossipOptions,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    udp: UdpSocket,
    tcp: TcpListener,
    inner: Arc<Inner>,
    keyring: watch::Receiver<Arc<Keyring>>,
    commands: mpsc::Receiver<Command>,
    shards: ShardSource,
    key_watch: JoinHandle<()>,
}

/// What connection tasks hand to the member task.
enum Inbound {
    /// A frame read from an accepted connection; the answer, if any, goes back on it.
    Accepted {
        frame: Vec<u8>,
        answer: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// The answer read from a connection this node dialled to `dialled`.
    Answer { frame: Vec<u8>, dialled: SocketAddr },
}

async fn run(mut setup: Setup) {
    // Gossip speaks with the node id of the assignment: wait until it names this node.
    let id = loop {
        let id = setup
            .inner
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current
            .as_ref()
            .and_then(|a| a.node_id(&setup.options.node_name));
        if let Some(id) = id {
            break id;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            command = setup.commands.recv() => {
                if let Some(Command::Leave(done)) = command {
                    let _ = done.send(());
                }
                setup.key_watch.abort();
                return;
            }
        }
    };
    tracing::info!(
        node_id = id,
        "gossip: the assignment names this node, joining"
    );
    let Setup {
        options,
        listen,
        advertise,
        udp,
        tcp,
        inner,
        keyring,
        commands,
        shards,
        key_watch,
    } = setup;
    let (seeds_tx, seeds) = watch::channel(Vec::new());
    let (inbound_tx, inbound) = mpsc::channel(256);
    let metrics = inner.metrics.clone();
    let tasks = vec![
        key_watch,
        tokio::spawn(resolve_seeds(
            options.seeds.clone(),
            seeds_tx,
            metrics.clone(),
            options.seed_refresh,
        )),
        tokio::spawn(accept(tcp, inbound_tx.clone(), metrics.clone())),
    ];
    let started = Instant::now();
    let mut random = SplitMix64::new(random_seed());
    let member = Member::new(id, options.swim.clone(), random.next_u64(), 0);
    let base_meta = NodeMeta {
        name: options.node_name.clone(),
        pool: options.pool.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        gossip: advertise,
        rpc: options.rpc,
        ..NodeMeta::default()
    };
    let mut own = vec![];
    if !listen.ip().is_unspecified() {
        own.push(listen);
    }
    own.extend(advertise);
    let mut runtime = Runtime {
        id,
        member,
        started,
        random,
        udp: Arc::new(udp),
        inner,
        metrics,
        keyring,
        replay: ReplayTable::default(),
        sequence: Arc::new(Mutex::new(SequenceCounter::starting_at_time(
            std::time::SystemTime::now(),
        ))),
        addresses: HashMap::new(),
        own,
        seeds,
        inbound_tx,
        dials: Arc::new(Semaphore::new(MAX_DIALS)),
        shards,
        own_meta: base_meta.clone(),
        base_meta,
        meta_bytes: Vec::new(),
        metas: HashMap::new(),
        last_states: HashMap::new(),
        names: HashMap::new(),
        names_epoch: None,
        meta_refresh_ms: options.meta_refresh.as_millis() as u64,
        next_join_at: 0,
        next_meta_at: 0,
        next_publish_at: 0,
        dirty: true,
        leaving: None,
    };
    runtime.refresh_meta();
    runtime.run(commands, inbound).await;
    for task in tasks {
        task.abort();
    }
}

struct Runtime {
    id: NodeId,
    member: Member,
    started: Instant,
    random: SplitMix64,
    udp: Arc<UdpSocket>,
    inner: Arc<Inner>,
    metrics: Arc<Metrics>,
    keyring: watch::Receiver<Arc<Keyring>>,
    replay: ReplayTable,
    sequence: Arc<Mutex<SequenceCounter>>,
    /// Where each member's gossip is reached: the source of its last authenticated datagram,
    /// the address that answered a dial, or the address it advertises, whichever came last.
    addresses: HashMap<NodeId, SocketAddr>,
    /// Addresses that are this node (seeds may resolve to it).
    own: Vec<SocketAddr>,
    seeds: watch::Receiver<Vec<SocketAddr>>,
    inbound_tx: mpsc::Sender<Inbound>,
    dials: Arc<Semaphore>,
    shards: ShardSource,
    /// This node's metadata without shards, and as last announced.
    base_meta: NodeMeta,
    own_meta: NodeMeta,
    meta_bytes: Vec<u8>,
    /// The last metadata decoded for each member (kept when it dies, for its name).
    metas: HashMap<NodeId, (Vec<u8>, NodeMeta)>,
    last_states: HashMap<NodeId, State>,
    /// Name and pool by id, from the assignment, for members whose metadata is unknown.
    names: HashMap<NodeId, (String, String)>,
    names_epoch: Option<u64>,
    meta_refresh_ms: u64,
    next_join_at: u64,
    next_meta_at: u64,
    next_publish_at: u64,
    dirty: bool,
    /// Set by `leave`: the deadline and who waits.
    leaving: Option<(u64, Vec<oneshot::Sender<()>>)>,
}

impl Runtime {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = vec![0u8; 65_536];
        let udp = self.udp.clone();
        let mut commands_open = true;
        loop {
            tokio::select! {
                received = udp.recv_from(&mut buffer) => match received {
                    Ok((n, from)) => self.on_datagram(&buffer[..n], from),
                    // An ICMP error for an earlier datagram; nothing to do with this one.
                    Err(e) => tracing::debug!(error = %e, "gossip UDP receive"),
                },
                Some(event) = inbound.recv() => self.on_inbound(event),
                command = commands.recv(), if commands_open => match command {
                    Some(Command::Leave(done)) => self.start_leave(done),
                    None => commands_open = false,
                },
                _ = tick.tick() => {
                    if self.on_tick() {
                        return;
                    }
                }
            }
        }
    }

    // ---- packets in ----

    /// Checks and decodes a packet; drops (and counts) anything that fails.
    fn open(&mut self, packet: &[u8]) -> Option<(NodeId, Message)> {
        let keyring = self.keyring.borrow().clone();
        match crypto::open(&keyring, &mut self.replay, packet) {
            Err(reason) => {
                self.metrics.dropped(reason);
                tracing::debug!(%reason, "gossip packet dropped");
                None
            }
            Ok(opened) => match Message::decode(&opened.plaintext) {
                Ok(message) => Some((opened.sender, message)),
                Err(e) => {
                    self.metrics.malformed();
                    tracing::debug!(sender = opened.sender, error = %e, "gossip packet dropped");
                    None
                }
            },
        }
    }

    fn on_datagram(&mut self, packet: &[u8], source: SocketAddr) {
        add(&self.metrics.udp_packets_received, 1);
        add(&self.metrics.udp_bytes_received, packet.len());
        let Some((from, message)) = self.open(packet) else {
            return;
        };
        if from == self.id {
            self.note_own(source);
            return;
        }
        self.addresses.insert(from, source);
        let now = self.now();
        let out = self.member.receive(now, from, message);
        self.dispatch(now, out, None);
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Accepted { frame, answer } => {
                let mut reply = None;
                if let Some((from, message)) = self.open(&frame) {
                    if from == self.id {
                        // A seed that is this node: say so, so the dialler stops asking it.
                        reply = self.seal(&Message::new(Kind::Gossip).encode());
                    } else {
                        let now = self.now();
                        let out = self.member.receive(now, from, message);
                        self.dispatch(now, out, Some((from, &mut reply)));
                    }
                }
                let _ = answer.send(reply);
            }
            Inbound::Answer { frame, dialled } => {
                let Some((from, message)) = self.open(&frame) else {
                    return;
                };
                if from == self.id {
                    self.note_own(dialled);
                    return;
                }
                self.addresses.insert(from, dialled);
                let now = self.now();
                let out = self.member.receive(now, from, message);
                self.dispatch(now, out, None);
            }
        }
    }

    fn note_own(&mut self, address: SocketAddr) {
        if !self.own.contains(&address) {
            tracing::debug!(%address, "gossip: this address is this node");
            self.own.push(address);
        }
    }

    // ---- packets out ----

    fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        let keyring = self.keyring.borrow().clone();
        seal(&keyring, self.id, &self.sequence, plaintext)
            .map_err(|e| {
                add(&self.metrics.send_failures, 1);
                tracing::warn!(error = %e, "gossip: cannot seal a packet");
            })
            .ok()
    }

    /// Sends what the member asked for. `answer`: a stream message to that peer goes into the
    /// slot instead (the answer on the connection its request came on).
    fn dispatch(
        &mut self,
        now: u64,
        out: Vec<Out>,
        mut answer: Option<(NodeId, &mut Option<Vec<u8>>)>,
    ) {
        for o in out {
            match o {
                Out::Changed {
                    node,
                    incarnation,
                    state,
                } => self.on_changed(now, node, incarnation, state),
                Out::Send { to, message } if message.needs_stream() => {
                    if let Some((peer, slot)) = answer.as_mut()
                        && *peer == to
                        && slot.is_none()
                    {
                        **slot = self.seal(&message.encode());
                        continue;
                    }
                    let wants_answer = matches!(message.kind, Kind::Sync { reply: true, .. });
                    match self.addresses.get(&to).copied() {
                        Some(address) => self.dial(address, &message, wants_answer),
                        None => add(&self.metrics.unaddressable, 1),
                    }
                }
                Out::Send { to, message } => self.send_datagram(to, &message),
            }
        }
    }

    fn send_datagram(&mut self, to: NodeId, message: &Message) {
        let Some(address) = self.addresses.get(&to).copied() else {
            add(&self.metrics.unaddressable, 1);
            return;
        };
        let Some(packet) = self.seal(&message.encode()) else {
            return;
        };
        if packet.len() > MAX_DATAGRAM {
            add(&self.metrics.send_failures, 1);
            tracing::warn!(bytes = packet.len(), "gossip: a datagram too large to send");
            return;
        }
        // Never waits: a full socket buffer loses the datagram, as the network may.
        match self.udp.try_send_to(&packet, address) {
            Ok(n) => {
                add(&self.metrics.udp_packets_sent, 1);
                add(&self.metrics.udp_bytes_sent, n);
            }
            Err(e) => {
                add(&self.metrics.send_failures, 1);
                tracing::debug!(%address, error = %e, "gossip UDP send");
            }
        }
    }

    /// One stream exchange with `address` in its own task: connect, send, and with
    /// `wants_answer` read the answer and hand it to the member task.
    fn dial(&self, address: SocketAddr, message: &Message, wants_answer: bool) {
        let Ok(permit) = self.dials.clone().try_acquire_owned() else {
            add(&self.metrics.stream_overload, 1);
            return;
        };
        let keyring = self.keyring.borrow().clone();
        let sequence = self.sequence.clone();
        let metrics = self.metrics.clone();
        let inbound = self.inbound_tx.clone();
        let id = self.id;
        let plaintext = message.encode();
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        add(&metrics.stream_connect_failures, 1);
                        tracing::debug!(%address, error = %e, "gossip: cannot connect");
                        return;
                    }
                    Err(_) => {
                        add(&metrics.stream_connect_failures, 1);
                        tracing::debug!(%address, "gossip: connect timed out");
                        return;
                    }
                };
            // Sealed once connected, so its sequence number is close to what is sent now.
            let frame = match seal(&keyring, id, &sequence, &plaintext) {
                Ok(frame) => frame,
                Err(e) => {
                    add(&metrics.send_failures, 1);
                    tracing::warn!(error = %e, "gossip: cannot seal a frame");
                    return;
                }
            };
            if let Err(e) = write_frame(&mut stream, &frame, FRAME_TIMEOUT).await {
                frame_error(&metrics, &e, address);
                return;
            }
            add(&metrics.tcp_frames_sent, 1);
            add(&metrics.tcp_bytes_sent, frame.len() + 4);
            if !wants_answer {
                let _ = stream.shutdown().await;
                return;
            }
            match read_frame(&mut stream, FRAME_TIMEOUT).await {
                Ok(answer) => {
                    add(&metrics.tcp_frames_received, 1);
                    add(&metrics.tcp_bytes_received, answer.len() + 4);
                    let _ = inbound
                        .send(Inbound::Answer {
                            frame: answer,
                            dialled: address,
                        })
                        .await;
                }
                Err(e) => frame_error(&metrics, &e, address),
            }
        });
    }

    // ---- time ----

    /// Returns true once a leave is complete.
    fn on_tick(&mut self) -> bool {
        let now = self.now();
        let out = self.member.tick(now);
        self.dispatch(now, out, None);
        if !self.member.has_left()
            && now >= self.next_join_at
            && (!self.member.joined() || !self.has_live_peer())
        {
            self.next_join_at = now + self.member.config().join_retry_ms;
            self.join_through_seeds();
        }
        if now >= self.next_meta_at {
            self.next_meta_at = now + self.meta_refresh_ms;
            self.refresh_meta();
            self.refresh_names();
        }
        if self.dirty || now >= self.next_publish_at {
            self.publish(now);
        }
        if let Some((deadline, _)) = &self.leaving
            && (self.member.pending_updates() == 0 || now >= *deadline || !self.has_live_peer())
        {
            tracing::info!(
                pending = self.member.pending_updates(),
                "gossip: left the cluster"
            );
            self.publish(now);
            if let Some((_, waiting)) = self.leaving.take() {
                for done in waiting {
                    let _ = done.send(());
                }
            }
            return true;
        }
        false
    }

    fn has_live_peer(&self) -> bool {
        self.member
            .peers()
            .any(|(_, p)| matches!(p.state, State::Alive | State::Suspect))
    }

    /// Asks a few seeds (by address: their ids are unknown) for their state.
    fn join_through_seeds(&mut self) {
        let mut candidates: Vec<SocketAddr> = self
            .seeds
            .borrow()
            .iter()
            .filter(|a| !self.own.contains(a))
            .copied()
            .collect();
        if candidates.is_empty() {
            return;
        }
        for i in (1..candidates.len()).rev() {
            let j = self.random.below(i as u64 + 1) as usize;
            candidates.swap(i, j);
        }
        candidates.truncate(SEEDS_PER_ROUND);
        let request = self.member.join_request();
        tracing::debug!(seeds = ?candidates, "gossip: asking seeds to join");
        for address in candidates {
            self.dial(address, &request, true);
        }
    }

    fn start_leave(&mut self, done: oneshot::Sender<()>) {
        if let Some((_, waiting)) = self.leaving.as_mut() {
            waiting.push(done);
            return;
        }
        let now = self.now();
        tracing::info!("gossip: leaving the cluster");
        let out = self.member.leave(now);
        self.dispatch(now, out, None);
        self.leaving = Some((now + LEAVE_GRACE_MS, vec![done]));
        self.dirty = true;
    }

    // ---- the view ----

    fn on_changed(&mut self, now: u64, node: NodeId, incarnation: u64, state: State) {
        self.dirty = true;
        if state == State::Alive
            && let Some(meta) = self.member.peer(node).map(|p| p.meta.clone())
            && let Some(meta) = self.remember_meta(node, &meta)
            && let Some(address) = meta.gossip
            && !address.ip().is_unspecified()
        {
            self.addresses.insert(node, address);
        }
        let before = self.last_states.insert(node, state);
        let name = self.name_of(node).unwrap_or_default();
        if before == Some(state) {
            tracing::debug!(node, %name, incarnation, "gossip: member updated");
        } else {
            tracing::info!(
                node,
                %name,
                incarnation,
                state = MemberState::from(state).as_str(),
                at_ms = now,
                "gossip: member changed"
            );
        }
    }

    /// Decodes and keeps `bytes` as `node`'s metadata when they are new.
    fn remember_meta(&mut self, node: NodeId, bytes: &[u8]) -> Option<NodeMeta> {
        if bytes.is_empty() {
            return self.metas.get(&node).map(|(_, m)| m.clone());
        }
        if let Some((known, meta)) = self.metas.get(&node)
            && known == bytes
        {
            return Some(meta.clone());
        }
        let meta = NodeMeta::decode(bytes)?;
        self.metas.insert(node, (bytes.to_vec(), meta.clone()));
        Some(meta)
    }

    fn name_of(&self, node: NodeId) -> Option<String> {
        self.metas
            .get(&node)
            .map(|(_, m)| m.name.clone())
            .or_else(|| self.names.get(&node).map(|(n, _)| n.clone()))
    }

    /// Rebuilds this node's metadata from its shards and announces it when it changed.
    fn refresh_meta(&mut self) {
        if self.member.has_left() {
            return;
        }
        let statuses = (self.shards)();
        let mut meta = self.base_meta.clone();
        meta.set_shards(self.id, &statuses);
        let bytes = meta.encode();
        if bytes != self.meta_bytes && self.member.set_meta(bytes.clone()) {
            self.meta_bytes = bytes;
            self.own_meta = meta;
            self.dirty = true;
        }
    }

    fn refresh_names(&mut self) {
        let followed = self
            .inner
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(assignment) = followed.current.as_ref() else {
            return;
        };
        if self.names_epoch == Some(assignment.epoch) {
            return;
        }
        self.names = assignment
            .nodes
            .iter()
            .map(|(name, entry)| (entry.id, (name.clone(), entry.pool.clone())))
            .collect();
        self.names_epoch = Some(assignment.epoch);
    }

    fn publish(&mut self, now: u64) {
        self.dirty = false;
        self.next_publish_at = now + PUBLISH_EVERY_MS;
        let peers: Vec<(NodeId, Vec<u8>)> = self
            .member
            .peers()
            .map(|(id, p)| (id, p.meta.clone()))
            .collect();
        for (id, meta) in &peers {
            self.remember_meta(*id, meta);
        }
        let own = &self.own_meta;
        let mut members = Vec::with_capacity(peers.len() + 1);
        members.push(MemberView {
            id: self.id,
            name: Some(own.name.clone()),
            pool: Some(own.pool.clone()),
            state: if self.member.has_left() {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: self.member.incarnation(),
            phi: 0.0,
            version: Some(own.version.clone()),
            gossip_addr: own.gossip,
            rpc_addr: own.rpc,
            shards: shard_views(own),
            shards_held: own.shards_held,
            shards_led: own.shards_led,
            last_heard_ms: None,
            is_self: true,
        });
        for (id, peer) in self.member.peers() {
            let meta = self.metas.get(&id).map(|(_, m)| m);
            let named = self.names.get(&id);
            let holds = matches!(peer.state, State::Alive | State::Suspect);
            let phi = self.member.phi(id, now);
            members.push(MemberView {
                id,
                name: meta
                    .map(|m| m.name.clone())
                    .or_else(|| named.map(|(n, _)| n.clone())),
                pool: meta
                    .map(|m| m.pool.clone())
                    .or_else(|| named.map(|(_, p)| p.clone())),
                state: peer.state.into(),
                incarnation: peer.incarnation,
                phi: if phi.is_finite() {
                    (phi.clamp(0.0, 1e9) * 100.0).round() / 100.0
                } else {
                    1e9
                },
                version: meta.map(|m| m.version.clone()),
                gossip_addr: self
                    .addresses
                    .get(&id)
                    .copied()
                    .or(meta.and_then(|m| m.gossip)),
                rpc_addr: meta.and_then(|m| m.rpc),
                shards: meta.filter(|_| holds).map(shard_views).unwrap_or_default(),
                shards_held: meta.filter(|_| holds).map_or(0, |m| m.shards_held),
                shards_led: meta.filter(|_| holds).map_or(0, |m| m.shards_led),
                last_heard_ms: peer.last_heard().map(|t| now.saturating_sub(t)),
                is_self: false,
            });
        }
        let snapshot = Snapshot {
            id: Some(self.id),
            joined: self.member.joined(),
            incarnation: self.member.incarnation(),
            local_health: self.member.local_health(),
            members,
            replay_evictions: self.replay.evictions(),
        };
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

fn shard_views(meta: &NodeMeta) -> Vec<ShardView> {
    meta.shards
        .iter()
        .map(|(shard, role)| ShardView {
            shard: *shard,
            role: role.raft_role(),
        })
        .collect()
}

fn add(counter: &std::sync::atomic::AtomicU64, n: usize) {
    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

fn seal(
    keyring: &Keyring,
    id: NodeId,
    sequence: &Mutex<SequenceCounter>,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let sequence = sequence
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .next_sequence();
    crypto::seal(
        keyring,
        &Header {
            sender: id,
            sequence,
        },
        plaintext,
    )
}

fn frame_error(metrics: &Metrics, error: &FrameError, peer: SocketAddr) {
    match error {
        FrameError::TooLarge(_) => metrics.dropped(DropReason::TooLarge),
        FrameError::Timeout(_) => add(&metrics.stream_timeouts, 1),
        FrameError::Truncated | FrameError::Io(_) => add(&metrics.stream_io_errors, 1),
    }
    tracing::debug!(%peer, %error, "gossip stream");
}

/// Serves the stream transport: each connection carries one frame and maybe its answer.
async fn accept(listener: TcpListener, inbound: mpsc::Sender<Inbound>, metrics: Arc<Metrics>) {
    let limit = Arc::new(Semaphore::new(MAX_ACCEPTED));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::warn!(error = %e, "gossip: accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            add(&metrics.stream_overload, 1);
            continue;
        };
        let inbound = inbound.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let frame = match read_frame(&mut stream, FRAME_TIMEOUT).await {
                Ok(frame) => frame,
                Err(e) => return frame_error(&metrics, &e, peer),
            };
            add(&metrics.tcp_frames_received, 1);
            add(&metrics.tcp_bytes_received, frame.len() + 4);
            let (answer, answered) = oneshot::channel();
            if inbound
                .send(Inbound::Accepted { frame, answer })
                .await
                .is_err()
            {
                return;
            }
            let Ok(Some(reply)) = answered.await else {
                return;
            };
            match write_frame(&mut stream, &reply, FRAME_TIMEOUT).await {
                Ok(()) => {
                    add(&metrics.tcp_frames_sent, 1);
                    add(&metrics.tcp_bytes_sent, reply.len() + 4);
                    let _ = stream.shutdown().await;
                }
                Err(e) => frame_error(&metrics, &e, peer),
            }
        });
    }
}

/// Resolves the seeds now and every `every` (every [`SEED_RETRY`] while they resolve to
/// nothing). A lookup that fails keeps the addresses found before.
async fn resolve_seeds(
    seeds: Vec<Seed>,
    found: watch::Sender<Vec<SocketAddr>>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    if seeds.is_empty() {
        return;
    }
    let mut failing: Vec<String> = vec![];
    loop {
        let mut addresses = vec![];
        let mut failed = vec![];
        for seed in &seeds {
            let lookup = tokio::net::lookup_host((seed.host.as_str(), seed.port));
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(resolved)) => addresses.extend(resolved),
                Ok(Err(e)) => failed.push(format!("{seed}: {e}")),
                Err(_) => failed.push(format!("{seed}: no answer within {LOOKUP_TIMEOUT:?}")),
            }
        }
        if !failed.is_empty() {
            add(&metrics.seed_resolve_errors, failed.len());
            if failed != failing {
                tracing::warn!(errors = %failed.join("; "), "gossip: seeds do not resolve");
            }
        }
        failing = failed;
        addresses.sort();
        addresses.dedup();
        let resolved = !addresses.is_empty();
        if resolved || failing.is_empty() {
            found.send_if_modified(|current| {
                if *current == addresses {
                    return false;
                }
                tracing::info!(seeds = ?addresses, "gossip: seed addresses");
                *current = addresses;
                true
            });
        }
        tokio::time::sleep(if resolved { every } else { SEED_RETRY }).await;
    }
}

fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Only spreads probe timing; the clock is a fine fallback.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

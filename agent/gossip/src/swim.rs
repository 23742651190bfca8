//! SWIM membership as a sans-IO state machine (Das et al. 2002, with the Lifeguard
//! extensions of Dadgar et al. 2018): the caller feeds it time (`tick`) and packets
//! (`receive`) and sends what it returns. Nothing here reads a clock, a socket or global
//! randomness, so the same inputs always give the same outputs, which the simulator relies on.
//!
//! Failure detection is the SWIM probe cycle (ping, then ping-req through k peers); phi
//! accrual runs beside it on every packet heard from a peer: a peer whose phi crosses the
//! threshold is probed next (out of round-robin order), and a suspect whose phi is above the
//! threshold gets the shortest suspicion timeout. Phi alone never makes a peer suspect: under
//! heavy loss a silent stretch is common, while a failed direct-and-indirect probe is not.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{Kind, MAX_META_BYTES, Message, NodeId, State, Update};
use crate::phi::{PhiConfig, PhiDetector};

/// Protocol timing and fan-out. Defaults aim at LAN clusters: detection well under 2 s.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// One probe per interval (scaled up by local health).
    pub probe_interval_ms: u64,
    /// How long to wait for a direct ack before asking others (scaled up by local health).
    pub probe_timeout_ms: u64,
    /// k: peers asked to probe indirectly.
    pub indirect_probes: usize,
    /// Minimum suspicion timeout = this × max(1, log10 N) × probe interval. 3 (memberlist
    /// uses 4) keeps crash detection p99 under 2 s at N = 20 in the simulator with zero
    /// false positives over 30 minutes at 20% loss (`cargo bench -p tern-gossip`).
    pub suspicion_mult: u64,
    /// Maximum suspicion timeout (no confirmations) = this × the minimum.
    pub suspicion_max_mult: u64,
    /// λ: each update is sent λ·⌈log10(N+1)⌉ times.
    pub retransmit_mult: u64,
    /// Updates are also pushed on their own every gossip interval to `gossip_nodes` peers.
    pub gossip_interval_ms: u64,
    pub gossip_nodes: usize,
    /// Full state exchange with one random peer this often (0 disables).
    pub push_pull_interval_ms: u64,
    /// Try a full sync with one node we believe dead this often (0 disables), so the two
    /// sides of a healed partition find each other again.
    pub reconnect_interval_ms: u64,
    /// A node that has not joined yet retries its seeds this often.
    pub join_retry_ms: u64,
    pub phi_threshold: f64,
    pub phi: PhiConfig,
    /// Lifeguard local health ceiling: intervals and timeouts are scaled by (1 + health).
    pub max_local_health: u32,
    /// Byte budget of piggybacked updates per datagram.
    pub max_piggyback_bytes: usize,
    /// A gap between two calls larger than this means this process was paused (GC, SIGSTOP,
    /// VM steal): timers are moved forward instead of firing on everyone at once.
    pub pause_threshold_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe_interval_ms: 200,
            probe_timeout_ms: 80,
            indirect_probes: 3,
            suspicion_mult: 3,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            gossip_interval_ms: 200,
            gossip_nodes: 3,
            push_pull_interval_ms: 30_000,
            reconnect_interval_ms: 5_000,
            join_retry_ms: 1_000,
            phi_threshold: 8.0,
            phi: PhiConfig::default(),
            max_local_health: 8,
            max_piggyback_bytes: 1_200,
            pause_threshold_ms: 500,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// Send `message` to `to` (over the stream transport when `message.needs_stream()`).
    Send { to: NodeId, message: Message },
    /// This member's view of `node` changed.
    Changed {
        node: NodeId,
        incarnation: u64,
        state: State,
    },
}

/// Small deterministic PRNG (SplitMix64); seeded by the caller.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What this member knows about one peer.
#[derive(Clone, Debug)]
pub struct Peer {
    pub incarnation: u64,
    pub state: State,
    pub meta: Vec<u8>,
    /// When the state last changed (local time).
    pub since: u64,
    suspicion: Option<Suspicion>,
    phi: PhiDetector,
    /// Last packet heard (the phi detector's arrival time is moved by pauses it forgives).
    heard: Option<u64>,
}

impl Peer {
    /// Local time of the last packet heard from this peer, if any.
    pub fn last_heard(&self) -> Option<u64> {
        self.heard
    }
}

#[derive(Clone, Debug)]
struct Suspicion {
    start: u64,
    /// When we last told the suspect itself.
    last_told: u64,
    /// Distinct members that suspect the same incarnation (the first one included).
    confirmations: BTreeSet<NodeId>,
}

#[derive(Clone, Debug)]
struct Probe {
    seq: u32,
    target: NodeId,
    sent_at: u64,
    timeout: u64,
    deadline: u64,
    indirect_sent: bool,
    expected_nacks: usize,
    nacks: usize,
}

#[derive(Clone, Debug)]
struct Relay {
    origin: NodeId,
    origin_seq: u32,
    target: NodeId,
    nack_at: u64,
    expires: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    update: Update,
    size: usize,
    transmits: u64,
    /// Insertion order, so that among equally sent updates the newest goes first.
    order: u64,
}

/// One node's SWIM membership.
#[derive(Clone, Debug)]
pub struct Member {
    id: NodeId,
    config: Config,
    incarnation: u64,
    meta: Vec<u8>,
    left: bool,
    peers: BTreeMap<NodeId, Peer>,
    probe_order: Vec<NodeId>,
    probe_index: usize,
    probe: Option<Probe>,
    next_probe_at: u64,
    relays: BTreeMap<u32, Relay>,
    seq: u32,
    pending: BTreeMap<NodeId, Pending>,
    pending_order: u64,
    rng: SplitMix64,
    local_health: u32,
    last_seen_time: Option<u64>,
    next_gossip_at: u64,
    next_push_pull_at: u64,
    next_reconnect_at: u64,
    seeds: Vec<NodeId>,
    next_join_at: u64,
    joined: bool,
}

impl Member {
    /// A member that knows only itself; call `join` to find the others.
    pub fn new(id: NodeId, config: Config, seed: u64, now: u64) -> Self {
        let mut member = Self {
            id,
            incarnation: 0,
            meta: Vec::new(),
            left: false,
            peers: BTreeMap::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            probe: None,
            next_probe_at: now,
            relays: BTreeMap::new(),
            seq: 0,
            pending: BTreeMap::new(),
            pending_order: 0,
            rng: SplitMix64::new(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            local_health: 0,
            last_seen_time: None,
            next_gossip_at: now,
            next_push_pull_at: now + config.push_pull_interval_ms,
            next_reconnect_at: now + config.reconnect_interval_ms,
            seeds: Vec::new(),
            next_join_at: now,
            joined: false,
            config,
        };
        // Spread the first probes of many nodes started together.
        member.next_probe_at = now + member.rng.below(member.config.probe_interval_ms.max(1));
        member.announce_alive();
        member
    }

    /// A member that already knows `peers` as alive at incarnation 0 (tests, benchmarks,
    /// and restarts from a persisted member list).
    pub fn with_peers(
        id: NodeId,
        config: Config,
        seed: u64,
        now: u64,
        peers: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        let mut member = Self::new(id, config, seed, now);
        for peer in peers {
            if peer != id {
                member.insert_peer(now, peer, 0, State::Alive, Vec::new());
            }
        }
        member.pending.clear();
        member.joined = !member.peers.is_empty();
        member
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this member has heard from the cluster (for readiness).
    pub fn joined(&self) -> bool {
        self.joined
    }

    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Lifeguard local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// This member's view of the others.
    pub fn peers(&self) -> impl Iterator<Item = (NodeId, &Peer)> {
        self.peers.iter().map(|(id, p)| (*id, p))
    }

    pub fn peer(&self, node: NodeId) -> Option<&Peer> {
        self.peers.get(&node)
    }

    pub fn state_of(&self, node: NodeId) -> Option<State> {
        self.peers.get(&node).map(|p| p.state)
    }

    /// Current phi of `node` as seen from here (for status and metrics).
    pub fn phi(&self, node: NodeId, now: u64) -> f64 {
        self.peers.get(&node).map_or(0.0, |p| p.phi.phi(now))
    }

    /// Updates waiting to be gossiped.
    pub fn pending_updates(&self) -> usize {
        self.pending.len()
    }

    /// Replaces this node's metadata and announces it with a new incarnation.
    pub fn set_meta(&mut self, meta: Vec<u8>) -> bool {
        if meta.len() > MAX_META_BYTES {
            return false;
        }
        self.meta = meta;
        self.incarnation += 1;
        self.announce_alive();
        true
    }

    /// The request a joining node sends to a seed it knows only by address (seeds come from
    /// DNS, so their node ids are unknown until they answer): this member's full state, asking
    /// for the peer's back. Send it over the stream transport; the peer's `receive` answers
    /// with a `Sync` addressed to this member's id, which the caller routes back on the same
    /// connection. Unlike [`join`](Self::join), nothing here is retried: the caller decides
    /// when to ask again (while [`joined`](Self::joined) is false).
    pub fn join_request(&self) -> Message {
        Message::new(Kind::Sync {
            reply: true,
            members: self.full_state(),
        })
    }

    /// Starts (or restarts) joining through `seeds`; retried until someone answers.
    pub fn join(&mut self, now: u64, seeds: impl IntoIterator<Item = NodeId>) -> Vec<Out> {
        self.seeds = seeds.into_iter().filter(|s| *s != self.id).collect();
        self.joined = false;
        self.next_join_at = now;
        let mut out = Vec::new();
        self.join_round(now, &mut out);
        out
    }

    /// Graceful leave: announce `Left` with a higher incarnation and stop probing. Keep
    /// calling `tick` until `pending_updates()` is 0 so the news gets out.
    pub fn leave(&mut self, now: u64) -> Vec<Out> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        self.left = true;
        self.incarnation += 1;
        self.probe = None;
        self.enqueue(Update {
            node: self.id,
            incarnation: self.incarnation,
            state: State::Left,
            origin: self.id,
            meta: Vec::new(),
        });
        self.gossip_round(now, &mut out);
        out
    }

    /// Advances timers to `now`.
    pub fn tick(&mut self, now: u64) -> Vec<Out> {
        let mut out = Vec::new();
        self.observe_time(now);
        if !self.joined && !self.seeds.is_empty() && now >= self.next_join_at {
            self.join_round(now, &mut out);
        }
        if !self.left {
            self.advance_probe(now, &mut out);
            self.expire_relays(now, &mut out);
            self.expire_suspicions(now, &mut out);
            if self.config.push_pull_interval_ms > 0 && now >= self.next_push_pull_at {
                self.next_push_pull_at = now + self.push_pull_interval();
                if let Some(peer) = self.random_peers(1, None).first().copied() {
                    let members = self.full_state();
                    out.push(self.send(
                        peer,
                        Message::new(Kind::Sync {
                            reply: true,
                            members,
                        }),
                    ));
                }
            }
        }
        if !self.left && self.config.reconnect_interval_ms > 0 && now >= self.next_reconnect_at {
            self.next_reconnect_at = now + self.config.reconnect_interval_ms;
            let dead: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.state == State::Dead)
                .map(|(id, _)| *id)
                .collect();
            if !dead.is_empty() {
                let peer = dead[self.rng.below(dead.len() as u64) as usize];
                let members = self.full_state();
                out.push(Out::Send {
                    to: peer,
                    message: Message::new(Kind::Sync {
                        reply: true,
                        members,
                    }),
                });
            }
        }
        if now >= self.next_gossip_at {
            self.next_gossip_at = now + self.config.gossip_interval_ms;
            self.gossip_round(now, &mut out);
        }
        out
    }

    /// Handles one packet from `from` (authenticated by the packet layer).
    pub fn receive(&mut self, now: u64, from: NodeId, message: Message) -> Vec<Out> {
        let mut out = Vec::new();
        if from == self.id {
            return out;
        }
        self.observe_time(now);
        let claimed = match &message.kind {
            Kind::Ping { from, .. }
            | Kind::Ack { from, .. }
            | Kind::PingReq { from, .. }
            | Kind::Nack { from, .. } => Some(*from),
            _ => None,
        };
        if claimed.is_some_and(|c| c != from) {
            return out; // inner sender disagrees with the authenticated one
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.phi.heartbeat(now);
        }
        for update in message.updates {
            self.apply(now, update, false, &mut out);
        }
        match message.kind {
            Kind::Ping { seq, target, .. } => {
                if target == self.id {
                    let ack = Message::new(Kind::Ack { seq, from: self.id });
                    out.push(self.send(from, ack));
                }
            }
            Kind::Ack { seq, .. } => {
                if self
                    .probe
                    .as_ref()
                    .is_some_and(|p| p.seq == seq && p.target == from)
                {
                    self.probe = None;
                    self.local_health = self.local_health.saturating_sub(1);
                } else if let Some(relay) = self.relays.remove(&seq)
                    && relay.target == from
                {
                    let ack = Message::new(Kind::IndirectAck {
                        seq: relay.origin_seq,
                        target: relay.target,
                    });
                    out.push(self.send(relay.origin, ack));
                }
            }
            Kind::PingReq { seq, target, .. } => {
                if target != self.id && !self.left {
                    let relay_seq = self.next_seq();
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            origin: from,
                            origin_seq: seq,
                            target,
                            nack_at: now + self.config.probe_timeout_ms,
                            expires: now + self.config.probe_interval_ms * 2,
                        },
                    );
                    let ping = Message::new(Kind::Ping {
                        seq: relay_seq,
                        from: self.id,
                        target,
                    });
                    out.push(self.send(target, ping));
                }
            }
            Kind::IndirectAck { seq, target } => {
                if self
                    .probe
                    .as_ref()
                    .is_some_and(|p| p.seq == seq && p.target == target)
                {
                    self.probe = None;
                }
            }
            Kind::Nack { seq, .. } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Kind::Gossip => {}
            Kind::Sync { reply, members } => {
                for update in members {
                    self.apply(now, update, true, &mut out);
                }
                self.joined = true;
                if reply {
                    let members = self.full_state();
                    out.push(self.send(
                        from,
                        Message::new(Kind::Sync {
                            reply: false,
                            members,
                        }),
                    ));
                }
            }
        }
        if !self.joined && self.peers.values().any(|p| p.state == State::Alive) {
            self.joined = true;
        }
        // After the updates, so that a sender that introduced itself counts as heard too.
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.heard = Some(now);
        }
        out
    }

    // ---- time ----

    fn observe_time(&mut self, now: u64) {
        let Some(last) = self.last_seen_time else {
            self.last_seen_time = Some(now);
            return;
        };
        if now <= last {
            return;
        }
        self.last_seen_time = Some(now);
        let gap = now - last;
        if gap <= self.config.pause_threshold_ms {
            return;
        }
        // We were not running: nobody could reach us and we could not hear them, so the gap
        // is no evidence against anyone. Move every timer forward by it.
        for peer in self.peers.values_mut() {
            if let Some(s) = peer.suspicion.as_mut() {
                s.start += gap;
            }
            peer.phi.forgive(gap);
        }
        self.probe = None;
        self.relays.clear();
        self.next_probe_at = now + self.probe_interval();
        self.local_health = (self.local_health + 1).min(self.config.max_local_health);
    }

    fn scale(&self, ms: u64) -> u64 {
        ms * (1 + self.local_health as u64)
    }

    fn probe_interval(&self) -> u64 {
        self.scale(self.config.probe_interval_ms)
    }

    fn live_count(&self) -> usize {
        1 + self
            .peers
            .values()
            .filter(|p| matches!(p.state, State::Alive | State::Suspect))
            .count()
    }

    fn push_pull_interval(&self) -> u64 {
        // Like memberlist: beyond 32 nodes, slow down so the total sync traffic stays flat.
        let n = self.live_count() as f64;
        let factor = if n > 32.0 {
            (n.log2() - 32f64.log2()).ceil().max(1.0)
        } else {
            1.0
        };
        (self.config.push_pull_interval_ms as f64 * factor) as u64
    }

    fn retransmit_limit(&self) -> u64 {
        let n = self.live_count() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u64).max(1)
    }

    fn suspicion_bounds(&self) -> (u64, u64) {
        let n = self.live_count() as f64;
        let min = (self.config.suspicion_mult as f64
            * n.log10().max(1.0)
            * self.probe_interval() as f64) as u64;
        (min, min * self.config.suspicion_max_mult.max(1))
    }

    fn suspicion_timeout(&self, node: NodeId, now: u64, confirmations: usize) -> u64 {
        let (min, max) = self.suspicion_bounds();
        // Our own silence reading of the suspect counts as one more independent witness.
        let confirmations =
            confirmations + usize::from(self.phi(node, now) > self.config.phi_threshold);
        // Lifeguard: expected confirmations k; each independent one brings the deadline
        // logarithmically closer to the minimum.
        let k = (self.config.suspicion_mult.saturating_sub(2) as usize)
            .min(self.live_count().saturating_sub(2));
        if k == 0 {
            return min;
        }
        let c = confirmations.saturating_sub(1); // the first suspecter is not a confirmation
        let frac = ((c as f64 + 1.0).ln() / (k as f64 + 1.0).ln()).min(1.0);
        let t = max as f64 - frac * (max - min) as f64;
        (t as u64).max(min)
    }

    // ---- probing ----

    fn advance_probe(&mut self, now: u64, out: &mut Vec<Out>) {
        if let Some(probe) = self.probe.clone() {
            if !probe.indirect_sent && now >= probe.sent_at + probe.timeout {
                let relays = self.random_peers(self.config.indirect_probes, Some(probe.target));
                // Retry the direct path too (memberlist falls back to TCP here): a lost
                // datagram is far more common than a dead node.
                let retry = Message::new(Kind::Ping {
                    seq: probe.seq,
                    from: self.id,
                    target: probe.target,
                });
                out.push(self.send(probe.target, retry));
                for relay in &relays {
                    let req = Message::new(Kind::PingReq {
                        seq: probe.seq,
                        from: self.id,
                        target: probe.target,
                    });
                    out.push(self.send(*relay, req));
                }
                if let Some(p) = self.probe.as_mut() {
                    p.indirect_sent = true;
                    p.expected_nacks = relays.len();
                }
            }
            if now >= probe.deadline {
                let nacks = self.probe.as_ref().map_or(0, |p| p.nacks);
                let expected = self.probe.as_ref().map_or(0, |p| p.expected_nacks);
                self.probe = None;
                if nacks < expected {
                    // Relays did not even answer us: likely our own network is the problem.
                    self.local_health = (self.local_health + 1).min(self.config.max_local_health);
                }
                self.suspect_after_probe(now, probe.target, out);
            } else {
                return;
            }
        }
        if now < self.next_probe_at {
            return;
        }
        let interval = self.probe_interval();
        self.next_probe_at = now + interval;
        let Some(target) = self.next_target(now) else {
            return;
        };
        let seq = self.next_seq();
        self.probe = Some(Probe {
            seq,
            target,
            sent_at: now,
            timeout: self.scale(self.config.probe_timeout_ms),
            deadline: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        let ping = Message::new(Kind::Ping {
            seq,
            from: self.id,
            target,
        });
        out.push(self.send(target, ping));
    }

    fn suspect_after_probe(&mut self, now: u64, target: NodeId, out: &mut Vec<Out>) {
        let Some(peer) = self.peers.get(&target) else {
            return;
        };
        if !matches!(peer.state, State::Alive | State::Suspect) {
            return;
        }
        let update = Update {
            node: target,
            incarnation: peer.incarnation,
            state: State::Suspect,
            origin: self.id,
            meta: Vec::new(),
        };
        self.apply(now, update, false, out);
        // Tell the suspect directly (Lifeguard's buddy system) so it can refute at once.
        out.push(self.send(target, Message::new(Kind::Gossip)));
    }

    fn next_target(&mut self, now: u64) -> Option<NodeId> {
        // A peer gone unusually quiet is probed now instead of at its round-robin turn.
        let threshold = self.config.phi_threshold;
        let current = self.probe_order.get(self.probe_index).copied();
        if let Some((id, _)) = self
            .peers
            .iter()
            .filter(|(id, p)| p.state == State::Alive && Some(**id) != current)
            .map(|(id, p)| (*id, p.phi.phi(now)))
            .filter(|(_, phi)| *phi > threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
        {
            if let Some(p) = self.peers.get_mut(&id) {
                // Restart its history so a dead peer does not monopolise the probe slot.
                p.phi
                    .forgive(now.saturating_sub(p.phi.last_arrival().unwrap_or(now)));
            }
            return Some(id);
        }
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let id = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if self
                    .peers
                    .get(&id)
                    .is_some_and(|p| matches!(p.state, State::Alive | State::Suspect))
                {
                    return Some(id);
                }
            }
            // End of a round: reshuffle, dropping dead and departed peers.
            let peers = &self.peers;
            self.probe_order.retain(|id| {
                peers
                    .get(id)
                    .is_some_and(|p| matches!(p.state, State::Alive | State::Suspect))
            });
            for i in (1..self.probe_order.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.probe_order.swap(i, j);
            }
            self.probe_index = 0;
        }
        None
    }

    fn expire_relays(&mut self, now: u64, out: &mut Vec<Out>) {
        let mut nacks = Vec::new();
        self.relays.retain(|_, r| {
            if now >= r.nack_at && r.nack_at != u64::MAX {
                nacks.push((r.origin, r.origin_seq));
                r.nack_at = u64::MAX;
            }
            now < r.expires
        });
        for (origin, seq) in nacks {
            let nack = Message::new(Kind::Nack { seq, from: self.id });
            out.push(self.send(origin, nack));
        }
    }

    fn expire_suspicions(&mut self, now: u64, out: &mut Vec<Out>) {
        let suspects: Vec<(NodeId, u64, usize, u64)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| {
                p.suspicion
                    .as_ref()
                    .map(|s| (*id, s.start, s.confirmations.len(), p.incarnation))
            })
            .collect();
        let interval = self.probe_interval();
        for (node, start, confirmations, incarnation) in suspects {
            let deadline = start + self.suspicion_timeout(node, now, confirmations);
            if now < deadline {
                // Keep telling the suspect until it refutes: if every copy of the suspicion
                // were lost it could never answer and would be declared dead while alive.
                let told = self
                    .peers
                    .get_mut(&node)
                    .and_then(|p| p.suspicion.as_mut())
                    .filter(|s| now >= s.last_told + interval)
                    .map(|s| s.last_told = now)
                    .is_some();
                if told {
                    let mut nudge = Message::new(Kind::Gossip);
                    nudge.updates.push(Update {
                        node,
                        incarnation,
                        state: State::Suspect,
                        origin: self.id,
                        meta: Vec::new(),
                    });
                    out.push(self.send(node, nudge));
                }
                continue;
            }
            {
                let update = Update {
                    node,
                    incarnation,
                    state: State::Dead,
                    origin: self.id,
                    meta: Vec::new(),
                };
                self.apply(now, update, false, out);
            }
        }
    }

    // ---- joining and gossip ----

    fn join_round(&mut self, now: u64, out: &mut Vec<Out>) {
        self.next_join_at = now + self.config.join_retry_ms;
        let members = self.full_state();
        for seed in self.seeds.clone() {
            out.push(Out::Send {
                to: seed,
                message: Message::new(Kind::Sync {
                    reply: true,
                    members: members.clone(),
                }),
            });
        }
    }

    fn gossip_round(&mut self, _now: u64, out: &mut Vec<Out>) {
        if self.pending.is_empty() {
            return;
        }
        for peer in self.random_peers(self.config.gossip_nodes, None) {
            if self.pending.is_empty() {
                break;
            }
            out.push(self.send(peer, Message::new(Kind::Gossip)));
        }
    }

    fn full_state(&self) -> Vec<Update> {
        let mut members = vec![self.own_update()];
        members.extend(self.peers.iter().map(|(id, p)| Update {
            node: *id,
            incarnation: p.incarnation,
            state: p.state,
            origin: if p.state == State::Left { *id } else { self.id },
            meta: p.meta.clone(),
        }));
        members
    }

    fn own_update(&self) -> Update {
        Update {
            node: self.id,
            incarnation: self.incarnation,
            state: if self.left { State::Left } else { State::Alive },
            origin: self.id,
            meta: if self.left {
                Vec::new()
            } else {
                self.meta.clone()
            },
        }
    }

    /// Up to `n` distinct random peers that are alive or suspect, other than `except`.
    fn random_peers(&mut self, n: usize, except: Option<NodeId>) -> Vec<NodeId> {
        let mut chosen: Vec<NodeId> = Vec::with_capacity(n);
        let len = self.probe_order.len();
        if len == 0 || n == 0 {
            return chosen;
        }
        // Random picks from the probe list; fall back to a scan when most are unusable.
        for _ in 0..n * 4 {
            if chosen.len() == n {
                return chosen;
            }
            let id = self.probe_order[self.rng.below(len as u64) as usize];
            if self.usable(id, except) && !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        let start = self.rng.below(len as u64) as usize;
        for i in 0..len {
            if chosen.len() == n {
                break;
            }
            let id = self.probe_order[(start + i) % len];
            if self.usable(id, except) && !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        chosen
    }

    fn usable(&self, id: NodeId, except: Option<NodeId>) -> bool {
        Some(id) != except
            && self
                .peers
                .get(&id)
                .is_some_and(|p| matches!(p.state, State::Alive | State::Suspect))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Wraps `message` with as many pending updates as fit, fewest-sent first. Updates about
    /// the destination go first, so a suspect hears of its suspicion on every packet to it.
    fn send(&mut self, to: NodeId, mut message: Message) -> Out {
        if !self.pending.is_empty() {
            let limit = self.retransmit_limit();
            let mut candidates: Vec<(u64, std::cmp::Reverse<u64>, NodeId)> = self
                .pending
                .iter()
                .map(|(id, p)| {
                    let first = if *id == to { 0 } else { 1 };
                    (first * (p.transmits + 1), std::cmp::Reverse(p.order), *id)
                })
                .collect();
            candidates.sort_unstable();
            let mut budget = self.config.max_piggyback_bytes;
            for (_, _, id) in candidates {
                let Some(p) = self.pending.get_mut(&id) else {
                    continue;
                };
                if p.size > budget {
                    continue;
                }
                budget -= p.size;
                message.updates.push(p.update.clone());
                p.transmits += 1;
                if p.transmits >= limit {
                    self.pending.remove(&id);
                }
                if budget < 16 {
                    break;
                }
            }
        }
        Out::Send { to, message }
    }

    fn enqueue(&mut self, update: Update) {
        self.pending_order += 1;
        let size = update.encoded_len();
        // A newer fact about a node replaces the older one in the queue.
        self.pending.insert(
            update.node,
            Pending {
                update,
                size,
                transmits: 0,
                order: self.pending_order,
            },
        );
    }

    fn announce_alive(&mut self) {
        let update = self.own_update();
        self.enqueue(update);
    }

    // ---- the membership rules ----

    fn insert_peer(
        &mut self,
        now: u64,
        node: NodeId,
        incarnation: u64,
        state: State,
        meta: Vec<u8>,
    ) {
        self.peers.insert(
            node,
            Peer {
                incarnation,
                state,
                meta,
                since: now,
                suspicion: None,
                phi: PhiDetector::new(self.config.phi.clone()),
                heard: None,
            },
        );
        // Insert at a random place so that new members are not all probed last.
        let at = self.rng.below(self.probe_order.len() as u64 + 1) as usize;
        self.probe_order.insert(at, node);
        if at < self.probe_index {
            self.probe_index += 1;
        }
    }

    fn apply(&mut self, now: u64, update: Update, from_sync: bool, out: &mut Vec<Out>) {
        if update.node == self.id {
            self.apply_about_self(update, out);
            return;
        }
        match update.state {
            State::Alive => self.apply_alive(now, update, out),
            State::Suspect => self.apply_suspect(now, update, out),
            // Full-state syncs can be old: a remote "dead" only makes us suspect, so a node
            // that is in fact alive gets the chance to refute (as memberlist does).
            State::Dead if from_sync => {
                let suspect = Update {
                    state: State::Suspect,
                    ..update
                };
                self.apply_suspect(now, suspect, out);
            }
            State::Dead | State::Left => self.apply_dead(now, update, out),
        }
    }

    fn apply_about_self(&mut self, update: Update, out: &mut Vec<Out>) {
        if self.left {
            if update.state != State::Left && update.incarnation >= self.incarnation {
                self.incarnation = update.incarnation + 1;
                self.announce_alive(); // announces Left again
            }
            return;
        }
        let refute = match update.state {
            State::Alive => update.incarnation > self.incarnation,
            State::Suspect | State::Dead | State::Left => update.incarnation >= self.incarnation,
        };
        if !refute && update.state != State::Alive {
            // An accusation older than our incarnation: the accuser missed our last
            // refutation, so send it again (without a new incarnation).
            if !self.pending.contains_key(&self.id) {
                self.announce_alive();
            }
            if update.origin != self.id && self.peers.contains_key(&update.origin) {
                out.push(self.send(update.origin, Message::new(Kind::Gossip)));
            }
            return;
        }
        if refute {
            if update.state != State::Alive {
                // Being suspected is a hint that our own links or scheduling are degraded.
                self.local_health = (self.local_health + 1).min(self.config.max_local_health);
            }
            self.incarnation = update.incarnation + 1;
            self.announce_alive();
            if update.origin != self.id && self.peers.contains_key(&update.origin) {
                // Answer the accuser directly; gossip alone may reach it after its timeout.
                out.push(self.send(update.origin, Message::new(Kind::Gossip)));
            }
        }
    }

    fn changed(&mut self, now: u64, node: NodeId, out: &mut Vec<Out>) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.since = now;
            out.push(Out::Changed {
                node,
                incarnation: p.incarnation,
                state: p.state,
            });
        }
    }

    fn apply_alive(&mut self, now: u64, update: Update, out: &mut Vec<Out>) {
        if update.meta.len() > MAX_META_BYTES {
            return;
        }
        match self.peers.get_mut(&update.node) {
            None => {
                self.insert_peer(
                    now,
                    update.node,
                    update.incarnation,
                    State::Alive,
                    update.meta.clone(),
                );
            }
            Some(p) if update.incarnation > p.incarnation => {
                let was_listed = matches!(p.state, State::Alive | State::Suspect);
                p.incarnation = update.incarnation;
                p.state = State::Alive;
                p.meta = update.meta.clone();
                p.suspicion = None;
                if !was_listed && !self.probe_order.contains(&update.node) {
                    let at = self.rng.below(self.probe_order.len() as u64 + 1) as usize;
                    self.probe_order.insert(at, update.node);
                    if at < self.probe_index {
                        self.probe_index += 1;
                    }
                }
            }
            Some(_) => return,
        }
        let node = update.node;
        self.enqueue(update);
        self.changed(now, node, out);
    }

    fn apply_suspect(&mut self, now: u64, update: Update, out: &mut Vec<Out>) {
        let Some(p) = self.peers.get_mut(&update.node) else {
            return;
        };
        if update.incarnation < p.incarnation || matches!(p.state, State::Dead | State::Left) {
            return;
        }
        if p.state == State::Suspect && update.incarnation == p.incarnation {
            if let Some(s) = p.suspicion.as_mut()
                && s.confirmations.insert(update.origin)
            {
                self.enqueue(update); // pass the confirmation on
            }
            return;
        }
        // A new suspicion, or one of a newer incarnation: the node was alive at that newer
        // incarnation, so the older suspicion's clock does not carry over.
        p.incarnation = update.incarnation;
        p.state = State::Suspect;
        p.suspicion = Some(Suspicion {
            start: now,
            last_told: now,
            confirmations: BTreeSet::from([update.origin]),
        });
        let node = update.node;
        self.enqueue(update);
        self.changed(now, node, out);
    }

    fn apply_dead(&mut self, now: u64, update: Update, out: &mut Vec<Out>) {
        let Some(p) = self.peers.get_mut(&update.node) else {
            return;
        };
        if update.incarnation < p.incarnation || matches!(p.state, State::Dead | State::Left) {
            return;
        }
        p.incarnation = update.incarnation;
        p.state = if update.state == State::Left && update.origin == update.node {
            State::Left
        } else {
            State::Dead
        };
        p.suspicion = None;
        p.meta.clear();
        let node = update.node;
        self.enqueue(update);
        self.changed(now, node, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(out: &[Out]) -> Vec<(NodeId, &Message)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send { to, message } => Some((*to, message)),
                Out::Changed { .. } => None,
            })
            .collect()
    }

    #[test]
    fn answers_ping_with_ack() {
        let mut m = Member::with_peers(1, Config::default(), 7, 0, [1, 2, 3]);
        let out = m.receive(
            10,
            2,
            Message::new(Kind::Ping {
                seq: 5,
                from: 2,
                target: 1,
            }),
        );
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 2);
        assert_eq!(s[0].1.kind, Kind::Ack { seq: 5, from: 1 });
    }

    #[test]
    fn refutes_suspicion_with_higher_incarnation() {
        let mut m = Member::with_peers(1, Config::default(), 7, 0, [2, 3]);
        let mut msg = Message::new(Kind::Gossip);
        msg.updates.push(Update {
            node: 1,
            incarnation: 0,
            state: State::Suspect,
            origin: 2,
            meta: vec![],
        });
        m.receive(10, 2, msg);
        assert_eq!(m.incarnation(), 1);
        assert!(m.local_health() >= 1);
        // The refutation rides on the very next packet.
        let out = m.receive(
            20,
            3,
            Message::new(Kind::Ping {
                seq: 1,
                from: 3,
                target: 1,
            }),
        );
        let s = sends(&out);
        assert!(
            s[0].1
                .updates
                .iter()
                .any(|u| u.node == 1 && u.state == State::Alive && u.incarnation == 1)
        );
    }

    #[test]
    fn failed_probe_suspects_then_dead() {
        let cfg = Config::default();
        let mut m = Member::with_peers(1, cfg.clone(), 7, 0, [1, 2]);
        let mut t = 0;
        let mut suspected = None;
        let mut dead = None;
        while t < 20_000 && dead.is_none() {
            for o in m.tick(t) {
                if let Out::Changed { node: 2, state, .. } = o {
                    match state {
                        State::Suspect => suspected = Some(t),
                        State::Dead => dead = Some(t),
                        _ => {}
                    }
                }
            }
            t += 10;
        }
        let s = suspected.expect("suspected");
        let d = dead.expect("dead");
        assert!(s <= 2 * cfg.probe_interval_ms + 10, "suspected at {s}");
        assert!(d > s);
    }

    #[test]
    fn alive_with_higher_incarnation_clears_suspicion() {
        let mut m = Member::with_peers(1, Config::default(), 7, 0, [2, 3]);
        let upd = |state, incarnation| Update {
            node: 2,
            incarnation,
            state,
            origin: 3,
            meta: vec![],
        };
        let mut g = Message::new(Kind::Gossip);
        g.updates.push(upd(State::Suspect, 0));
        m.receive(1, 3, g.clone());
        assert_eq!(m.state_of(2), Some(State::Suspect));
        g.updates = vec![upd(State::Alive, 0)];
        m.receive(2, 3, g.clone());
        assert_eq!(
            m.state_of(2),
            Some(State::Suspect),
            "same incarnation does not refute"
        );
        g.updates = vec![upd(State::Alive, 1)];
        m.receive(3, 3, g);
        assert_eq!(m.state_of(2), Some(State::Alive));
    }

    #[test]
    fn mismatched_sender_is_ignored() {
        let mut m = Member::with_peers(1, Config::default(), 7, 0, [2, 3]);
        let out = m.receive(
            1,
            3,
            Message::new(Kind::Ping {
                seq: 1,
                from: 2,
                target: 1,
            }),
        );
        assert!(out.is_empty());
    }

    #[test]
    fn join_request_to_an_address_joins_both_sides() {
        // Node 2 knows node 1 only by address: it sends its join request there, node 1 answers
        // with a Sync addressed to node 2 (routed back on the same connection by the caller).
        let mut seed = Member::new(1, Config::default(), 7, 0);
        let mut joiner = Member::new(2, Config::default(), 7, 0);
        assert!(!seed.joined() && !joiner.joined());
        let request = joiner.join_request();
        assert!(request.needs_stream());
        let out = seed.receive(10, 2, request);
        assert_eq!(seed.state_of(2), Some(State::Alive));
        assert!(seed.joined());
        let answer = sends(&out)
            .into_iter()
            .find(|(to, m)| *to == 2 && m.needs_stream())
            .map(|(_, m)| m.clone())
            .expect("a Sync answer to the joiner");
        assert!(matches!(answer.kind, Kind::Sync { reply: false, .. }));
        joiner.receive(20, 1, answer);
        assert!(joiner.joined());
        assert_eq!(joiner.state_of(1), Some(State::Alive));
        assert_eq!(joiner.peer(1).unwrap().last_heard(), Some(20));
        assert_eq!(seed.peer(2).unwrap().last_heard(), Some(10));
    }

    #[test]
    fn rng_is_uniformish() {
        let mut r = SplitMix64::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4_000 {
            counts[r.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
    }
}

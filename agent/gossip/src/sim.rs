//! Deterministic simulator: the real `Member` code on virtual time, with one seeded PRNG
//! deciding loss, delay and jitter. Every packet is encoded and decoded as on the wire, so
//! byte counts are real (before sealing). Same config and same calls ⇒ identical trace.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::message::{Message, NodeId, State};
use crate::swim::{Config, Member, Out, SplitMix64};

/// Network and cluster shape.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    pub member: Config,
    /// Probability that a packet is lost (every link).
    pub loss: f64,
    /// One-way delay and uniform extra jitter.
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// Virtual time step between ticks.
    pub step_ms: u64,
    /// Packets to a paused node wait for it (a stopped process's socket buffer) instead of
    /// being dropped.
    pub queue_while_paused: bool,
    /// Start with every node knowing every other; otherwise nodes 2.. join through node 1.
    pub full_start: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 5,
            seed: 1,
            member: Config::default(),
            loss: 0.0,
            delay_ms: 1,
            jitter_ms: 2,
            step_ms: 10,
            queue_while_paused: true,
            full_start: true,
        }
    }
}

/// One change of one node's view, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at: u64,
    pub observer: NodeId,
    pub node: NodeId,
    pub incarnation: u64,
    pub state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Running,
    Paused,
    Crashed,
}

struct Node {
    member: Member,
    run: Run,
    inbox: Vec<(NodeId, Vec<u8>)>,
    group: u32,
    bytes_sent: u64,
    packets_sent: u64,
}

/// A simulated cluster. Node ids are 1..=N.
pub struct Sim {
    config: SimConfig,
    now: u64,
    rng: SplitMix64,
    nodes: Vec<Node>,
    in_flight: BinaryHeap<Reverse<(u64, u64, NodeId, NodeId)>>,
    payloads: BTreeMap<u64, Vec<u8>>,
    next_packet: u64,
    link_loss: BTreeMap<(NodeId, NodeId), f64>,
    trace: Vec<TraceEvent>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let ids: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let mut sim = Self {
            now: 0,
            rng: SplitMix64::new(config.seed),
            nodes: Vec::with_capacity(ids.len()),
            in_flight: BinaryHeap::new(),
            payloads: BTreeMap::new(),
            next_packet: 0,
            link_loss: BTreeMap::new(),
            trace: Vec::new(),
            config,
        };
        for &id in &ids {
            let member = if sim.config.full_start {
                Member::with_peers(
                    id,
                    sim.config.member.clone(),
                    sim.config.seed,
                    0,
                    ids.clone(),
                )
            } else {
                Member::new(id, sim.config.member.clone(), sim.config.seed, 0)
            };
            sim.nodes.push(Node {
                member,
                run: Run::Running,
                inbox: Vec::new(),
                group: 0,
                bytes_sent: 0,
                packets_sent: 0,
            });
        }
        if !sim.config.full_start {
            for &id in ids.iter().skip(1) {
                let out = sim.nodes[idx(id)].member.join(0, [1]);
                sim.handle(id, out);
            }
        }
        sim
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        1..=self.nodes.len() as NodeId
    }

    pub fn member(&self, id: NodeId) -> &Member {
        &self.nodes[idx(id)].member
    }

    /// `observer`'s view of `node`.
    pub fn state(&self, observer: NodeId, node: NodeId) -> Option<State> {
        self.member(observer).state_of(node)
    }

    pub fn trace(&self) -> &[TraceEvent] {
        &self.trace
    }

    pub fn bytes_sent(&self, id: NodeId) -> u64 {
        self.nodes[idx(id)].bytes_sent
    }

    pub fn packets_sent(&self, id: NodeId) -> u64 {
        self.nodes[idx(id)].packets_sent
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes[idx(id)].run == Run::Running
    }

    /// Stops `id` forever: no ticks, packets to it are lost.
    pub fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[idx(id)];
        node.run = Run::Crashed;
        node.inbox.clear();
    }

    /// Stops `id` until `resume` (SIGSTOP).
    pub fn pause(&mut self, id: NodeId) {
        if self.nodes[idx(id)].run == Run::Running {
            self.nodes[idx(id)].run = Run::Paused;
        }
    }

    pub fn resume(&mut self, id: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[idx(id)];
        if node.run != Run::Paused {
            return;
        }
        node.run = Run::Running;
        let inbox = std::mem::take(&mut node.inbox);
        for (from, bytes) in inbox {
            self.deliver(now, from, id, &bytes);
        }
    }

    /// Graceful leave of `id`.
    pub fn leave(&mut self, id: NodeId) {
        let out = self.nodes[idx(id)].member.leave(self.now);
        self.handle(id, out);
    }

    /// Splits the network: nodes in different groups cannot talk; nodes not listed form
    /// one more group together.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        for (g, members) in groups.iter().enumerate() {
            for &id in *members {
                self.nodes[idx(id)].group = g as u32 + 1;
            }
        }
    }

    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Loss on the link from `a` to `b` (one direction), overriding the global loss.
    pub fn set_link_loss(&mut self, a: NodeId, b: NodeId, loss: f64) {
        self.link_loss.insert((a, b), loss);
    }

    /// Runs to virtual time `until`.
    pub fn run_until(&mut self, until: u64) {
        while self.now < until {
            self.step();
        }
    }

    /// Runs until `done` holds (checked each step) or `until`; returns whether it held.
    pub fn run_until_cond(&mut self, until: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while self.now < until {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn step(&mut self) {
        self.now += self.config.step_ms.max(1);
        let now = self.now;
        while let Some(Reverse((at, packet, from, to))) = self.in_flight.peek().copied() {
            if at > now {
                break;
            }
            self.in_flight.pop();
            let bytes = self.payloads.remove(&packet).unwrap_or_default();
            match self.nodes[idx(to)].run {
                Run::Crashed => {}
                Run::Paused => {
                    if self.config.queue_while_paused {
                        self.nodes[idx(to)].inbox.push((from, bytes));
                    }
                }
                Run::Running => {
                    if self.nodes[idx(from)].group == self.nodes[idx(to)].group {
                        self.deliver(at, from, to, &bytes);
                    }
                }
            }
        }
        for id in 1..=self.nodes.len() as NodeId {
            if self.nodes[idx(id)].run == Run::Running {
                let out = self.nodes[idx(id)].member.tick(now);
                self.handle(id, out);
            }
        }
    }

    fn deliver(&mut self, at: u64, from: NodeId, to: NodeId, bytes: &[u8]) {
        // Paused nodes see the queued packets at resume time, not at arrival time.
        let at = at.max(self.now);
        let Ok(message) = Message::decode(bytes) else {
            return;
        };
        let out = self.nodes[idx(to)].member.receive(at, from, message);
        self.handle(to, out);
    }

    fn handle(&mut self, from: NodeId, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Changed {
                    node,
                    incarnation,
                    state,
                } => self.trace.push(TraceEvent {
                    at: self.now,
                    observer: from,
                    node,
                    incarnation,
                    state,
                }),
                Out::Send { to, message } => self.send(from, to, &message),
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: &Message) {
        if to == 0 || to as usize > self.nodes.len() {
            return;
        }
        let bytes = message.encode();
        let node = &mut self.nodes[idx(from)];
        node.bytes_sent += bytes.len() as u64;
        node.packets_sent += 1;
        let loss = self
            .link_loss
            .get(&(from, to))
            .copied()
            .unwrap_or(self.config.loss);
        // Always draw the same number of random values so that traces stay comparable.
        let lost = self.rng.unit() < loss;
        let jitter = self.rng.below(self.config.jitter_ms + 1);
        if lost {
            return;
        }
        let at = self.now + self.config.delay_ms + jitter;
        self.next_packet += 1;
        self.payloads.insert(self.next_packet, bytes);
        self.in_flight
            .push(Reverse((at, self.next_packet, from, to)));
    }
}

fn idx(id: NodeId) -> usize {
    (id - 1) as usize
}

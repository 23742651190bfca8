//! Gossip counters, and their Prometheus text next to the membership gauges.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_gossip::crypto::DropReason;

use super::handle::{MemberState, MemberView, Snapshot};

/// Label of packets that opened but did not decode as a gossip message (a peer of another
/// version or a bug: only key holders can produce them).
pub const MALFORMED: &str = "malformed";

/// Counters shared by the runtime's tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By [`DropReason`], in the order of [`DropReason::ALL`].
    dropped: [AtomicU64; DropReason::ALL.len()],
    malformed: AtomicU64,
    pub udp_packets_sent: AtomicU64,
    pub udp_bytes_sent: AtomicU64,
    pub udp_packets_received: AtomicU64,
    pub udp_bytes_received: AtomicU64,
    pub tcp_frames_sent: AtomicU64,
    pub tcp_bytes_sent: AtomicU64,
    pub tcp_frames_received: AtomicU64,
    pub tcp_bytes_received: AtomicU64,
    /// Datagrams the socket refused to send (buffer full, unreachable).
    pub send_failures: AtomicU64,
    /// Messages for a member whose address is not known (yet).
    pub unaddressable: AtomicU64,
    /// Stream exchanges that failed: could not connect, timed out, or broke off.
    pub stream_connect_failures: AtomicU64,
    pub stream_timeouts: AtomicU64,
    pub stream_io_errors: AtomicU64,
    /// Connections refused or dials skipped because too many were already open.
    pub stream_overload: AtomicU64,
    pub keyring_reloads: AtomicU64,
    pub keyring_errors: AtomicU64,
    pub seed_resolve_errors: AtomicU64,
}

impl Metrics {
    pub fn dropped(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// Packets dropped for `reason` (a [`DropReason`] label or [`MALFORMED`]).
    pub fn dropped_count(&self, reason: &str) -> u64 {
        if reason == MALFORMED {
            return self.malformed.load(Ordering::Relaxed);
        }
        DropReason::ALL
            .iter()
            .position(|r| r.as_str() == reason)
            .map_or(0, |i| self.dropped[i].load(Ordering::Relaxed))
    }

    /// One series per known member, labelled by node name: its state (1 for the state it is
    /// in), phi, and load figures; `tern_gossip_member_info` carries pool and version.
    fn render_members(&self, snapshot: &Snapshot, out: &mut String) {
        let name =
            |m: &MemberView| label(m.name.clone().unwrap_or_else(|| format!("node-{}", m.id)));
        section(
            out,
            "tern_gossip_member_info",
            "gauge",
            "1 per known member, with its node id, pool and agent version.",
        );
        for m in &snapshot.members {
            let _ = writeln!(
                out,
                "tern_gossip_member_info{{node=\"{}\",id=\"{}\",pool=\"{}\",version=\"{}\"}} 1",
                name(m),
                m.id,
                label(m.pool.clone().unwrap_or_default()),
                label(m.version.clone().unwrap_or_default()),
            );
        }
        section(
            out,
            "tern_gossip_member_state",
            "gauge",
            "1 for the gossip state each known member is in, 0 for the others.",
        );
        for m in &snapshot.members {
            for state in MemberState::ALL {
                let _ = writeln!(
                    out,
                    "tern_gossip_member_state{{node=\"{}\",state=\"{}\"}} {}",
                    name(m),
                    state.as_str(),
                    u8::from(m.state == state)
                );
            }
        }
        type Figure = (&'static str, &'static str, fn(&MemberView) -> f64);
        let figures: [Figure; 3] = [
            (
                "tern_gossip_member_phi",
                "Phi-accrual suspicion of each member as this node sees it (0 for itself).",
                |m| m.phi,
            ),
            (
                "tern_gossip_member_shards_held",
                "Shards each member says it holds.",
                |m| f64::from(m.shards_held),
            ),
            (
                "tern_gossip_member_shards_led",
                "Shards each member says it leads.",
                |m| f64::from(m.shards_led),
            ),
        ];
        for (metric, help, value) in figures {
            section(out, metric, "gauge", help);
            for m in &snapshot.members {
                let _ = writeln!(out, "{metric}{{node=\"{}\"}} {}", name(m), value(m));
            }
        }
    }

    /// Appends the gossip metrics in Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot, primary_key: u32, keys: usize, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        section(
            out,
            "tern_gossip_members",
            "gauge",
            "Members of the cluster this node knows, itself included, by gossip state.",
        );
        for state in MemberState::ALL {
            let n = snapshot.members.iter().filter(|m| m.state == state).count();
            let _ = writeln!(
                out,
                "tern_gossip_members{{state=\"{}\"}} {n}",
                state.as_str()
            );
        }
        self.render_members(snapshot, out);
        section(
            out,
            "tern_gossip_packets_dropped_total",
            "counter",
            "Received gossip packets and frames dropped, by reason; none changed any state.",
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tern_gossip_packets_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(&self.dropped[i])
            );
        }
        let _ = writeln!(
            out,
            "tern_gossip_packets_dropped_total{{reason=\"{MALFORMED}\"}} {}",
            load(&self.malformed)
        );
        type Pair<'a> = (&'a str, &'a str, [(&'a str, &'a AtomicU64); 2]);
        let traffic: [Pair; 4] = [
            (
                "tern_gossip_packets_sent_total",
                "Gossip datagrams (udp) and stream frames (tcp) sent.",
                [
                    ("udp", &self.udp_packets_sent),
                    ("tcp", &self.tcp_frames_sent),
                ],
            ),
            (
                "tern_gossip_bytes_sent_total",
                "Bytes of gossip datagrams and stream frames sent (sealed, with frame headers).",
                [("udp", &self.udp_bytes_sent), ("tcp", &self.tcp_bytes_sent)],
            ),
            (
                "tern_gossip_packets_received_total",
                "Gossip datagrams (udp) and stream frames (tcp) received, before any check.",
                [
                    ("udp", &self.udp_packets_received),
                    ("tcp", &self.tcp_frames_received),
                ],
            ),
            (
                "tern_gossip_bytes_received_total",
                "Bytes of gossip datagrams and stream frames received, before any check.",
                [
                    ("udp", &self.udp_bytes_received),
                    ("tcp", &self.tcp_bytes_received),
                ],
            ),
        ];
        for (name, help, values) in traffic {
            section(out, name, "counter", help);
            for (transport, counter) in values {
                let _ = writeln!(out, "{name}{{transport=\"{transport}\"}} {}", load(counter));
            }
        }
        section(
            out,
            "tern_gossip_stream_failures_total",
            "counter",
            "Gossip stream (TCP) exchanges that failed, by cause.",
        );
        for (cause, counter) in [
            ("connect", &self.stream_connect_failures),
            ("timeout", &self.stream_timeouts),
            ("io", &self.stream_io_errors),
            ("overload", &self.stream_overload),
        ] {
            let _ = writeln!(
                out,
                "tern_gossip_stream_failures_total{{cause=\"{cause}\"}} {}",
                load(counter)
            );
        }
        let counters = [
            (
                "tern_gossip_send_failures_total",
                "Gossip datagrams the socket could not send.",
                load(&self.send_failures),
            ),
            (
                "tern_gossip_unaddressable_total",
                "Gossip messages not sent because the member's address is not known yet.",
                load(&self.unaddressable),
            ),
            (
                "tern_gossip_keyring_reloads_total",
                "Changed keyring files taken into use.",
                load(&self.keyring_reloads),
            ),
            (
                "tern_gossip_keyring_errors_total",
                "Keyring files that could not be read or parsed (the keys in use were kept).",
                load(&self.keyring_errors),
            ),
            (
                "tern_gossip_seed_resolve_errors_total",
                "Seed names that did not resolve.",
                load(&self.seed_resolve_errors),
            ),
            (
                "tern_gossip_replay_evictions_total",
                "Senders evicted from the anti-replay table (non-zero: the table is smaller than the cluster).",
                snapshot.replay_evictions,
            ),
        ];
        for (name, help, value) in counters {
            section(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let gauges = [
            (
                "tern_gossip_joined",
                "1 once this node has joined the cluster's gossip.",
                u64::from(snapshot.joined),
            ),
            (
                "tern_gossip_local_health",
                "Lifeguard local health score (0 healthy; higher: slower probes, longer suspicion).",
                u64::from(snapshot.local_health),
            ),
            (
                "tern_gossip_incarnation",
                "This node's incarnation number.",
                snapshot.incarnation,
            ),
            (
                "tern_gossip_key_id",
                "Id of the keyring's primary key, the one this node seals with.",
                u64::from(primary_key),
            ),
            (
                "tern_gossip_keys",
                "Keys in the keyring (each opens packets).",
                keys as u64,
            ),
        ];
        for (name, help, value) in gauges {
            section(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

fn section(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: String) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value;
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

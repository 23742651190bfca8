//! Failure-detection figures from the deterministic simulator (issue 4 targets).
//! `cargo bench -p tern-gossip --bench detection`; prints a table.

use tern_gossip::message::{NodeId, State};
use tern_gossip::sim::{Sim, SimConfig};

/// Estimated sealing overhead per packet (version, key id, sender, counter, nonce, tag).
const SEAL_OVERHEAD: u64 = 48;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Time from crash until every live node marks the crashed one dead.
fn detection(n: usize, seeds: u64) -> (u64, u64, u64, usize) {
    let mut times = Vec::new();
    let mut missed = 0;
    for seed in 0..seeds {
        let mut sim = Sim::new(SimConfig {
            nodes: n,
            seed,
            ..SimConfig::default()
        });
        sim.run_until(5_000 + seed % 200);
        let victim = n as NodeId;
        let t0 = sim.now();
        sim.crash(victim);
        let all = |s: &Sim| (1..victim).all(|o| matches!(s.state(o, victim), Some(State::Dead)));
        if sim.run_until_cond(t0 + 30_000, all) {
            times.push(sim.now() - t0);
        } else {
            missed += 1;
        }
    }
    times.sort_unstable();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        *times.last().unwrap_or(&0),
        missed,
    )
}

/// Dead marks of live nodes under loss, jitter and one observer paused regularly.
fn false_positives(n: usize, minutes: u64, seed: u64, pause_ms: u64) -> (usize, usize, f64) {
    let mut sim = Sim::new(SimConfig {
        nodes: n,
        seed,
        loss: 0.2,
        delay_ms: 2,
        jitter_ms: 20,
        ..SimConfig::default()
    });
    let observer: NodeId = 1;
    let end = minutes * 60_000;
    let mut t = 0;
    while t < end {
        t += 30_000;
        sim.run_until(t);
        sim.pause(observer);
        sim.run_until(t + pause_ms);
        sim.resume(observer);
    }
    sim.run_until(end);
    let dead = |e: &&tern_gossip::sim::TraceEvent| e.state == State::Dead;
    let of_others = sim
        .trace()
        .iter()
        .filter(dead)
        .filter(|e| e.node != observer)
        .count();
    let of_observer = sim
        .trace()
        .iter()
        .filter(dead)
        .filter(|e| e.node == observer)
        .count();
    let node_hours = n as f64 * minutes as f64 / 60.0;
    (of_others, of_observer, of_others as f64 / node_hours)
}

/// Time for a graceful leave to reach 99% of the other nodes.
fn convergence(n: usize, seed: u64) -> Option<u64> {
    let mut sim = Sim::new(SimConfig {
        nodes: n,
        seed,
        ..SimConfig::default()
    });
    sim.run_until(3_000);
    let leaver = n as NodeId;
    let t0 = sim.now();
    sim.leave(leaver);
    let need = ((n - 1) as f64 * 0.99).ceil() as usize;
    let reached = |s: &Sim| {
        (1..leaver)
            .filter(|o| s.state(*o, leaver) == Some(State::Left))
            .count()
            >= need
    };
    sim.run_until_cond(t0 + 30_000, reached)
        .then(|| sim.now() - t0)
}

fn bandwidth(n: usize) -> (f64, f64) {
    let mut sim = Sim::new(SimConfig {
        nodes: n,
        seed: 3,
        ..SimConfig::default()
    });
    let secs = 120;
    sim.run_until(secs * 1_000);
    let bytes: u64 = sim.ids().map(|i| sim.bytes_sent(i)).sum();
    let packets: u64 = sim.ids().map(|i| sim.packets_sent(i)).sum();
    let per_node = |b: u64| b as f64 / n as f64 / secs as f64;
    (per_node(bytes), per_node(bytes + packets * SEAL_OVERHEAD))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = |what: &str| {
        !args.iter().any(|a| a.starts_with("--only"))
            || args.iter().any(|a| a == &format!("--only={what}"))
    };
    let seeds = if quick { 50 } else { 300 };
    println!("| figure | setting | result | target |");
    println!("|---|---|---|---|");
    for n in [5, 20].into_iter().filter(|_| only("detect")) {
        let (p50, p99, max, missed) = detection(n, seeds);
        println!(
            "| crash detection (all live nodes mark dead) | N={n}, {seeds} seeds, no loss | p50 {p50} ms, p99 {p99} ms, max {max} ms, undetected {missed} | p99 < 2000 ms |"
        );
    }
    let minutes = if quick { 10 } else { 30 };
    for n in [5, 10, 20].into_iter().filter(|_| only("fp")) {
        let (others, observer, rate) = false_positives(n, minutes, 11, 400);
        println!(
            "| false positives | N={n}, {minutes} min, 20% loss, 2+0..20 ms delay, node 1 paused 400 ms every 30 s | {others} dead marks of live nodes ({rate:.2}/node-hour); paused node marked dead {observer}× | 0 |"
        );
    }
    if only("fp") {
        let (others, observer, rate) = false_positives(5, minutes, 12, 3_000);
        println!(
            "| false positives | N=5, {minutes} min, 20% loss, node 1 paused 3 s every 30 s | {others} dead marks of other nodes ({rate:.2}/node-hour); paused node marked dead {observer}× (expected: 3 s > suspicion timeout) | 0 for the others |"
        );
    }
    for n in [5, 100, 1000].into_iter().filter(|_| only("conv")) {
        let runs: u64 = match n {
            1000 => 3,
            100 => 10,
            _ => 30,
        };
        let mut times: Vec<u64> = (0..runs).filter_map(|s| convergence(n, s)).collect();
        times.sort_unstable();
        println!(
            "| convergence of a leave to 99% | N={n}, {runs} seeds | p50 {} ms, max {} ms ({} of {runs} converged) | N=1000 < 3000 ms |",
            percentile(&times, 0.5),
            times.last().unwrap_or(&0),
            times.len()
        );
    }
    if !only("bw") {
        return;
    }
    let (raw, sealed) = bandwidth(5);
    println!(
        "| bytes sent per node | N=5, steady state, 120 s | {raw:.0} B/s payload, {sealed:.0} B/s with {SEAL_OVERHEAD} B/packet sealing | <= 2048 B/s |"
    );
}

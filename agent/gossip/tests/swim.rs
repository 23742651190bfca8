//! Membership behaviour in the deterministic simulator. A failing seed replays exactly.

use tern_gossip::message::{NodeId, State};
use tern_gossip::sim::{Sim, SimConfig, TraceEvent};

fn sim(nodes: usize, seed: u64, loss: f64) -> Sim {
    Sim::new(SimConfig {
        nodes,
        seed,
        loss,
        delay_ms: 2,
        jitter_ms: if loss > 0.0 { 20 } else { 2 },
        ..SimConfig::default()
    })
}

fn dead_marks(trace: &[TraceEvent], except: &[NodeId]) -> Vec<TraceEvent> {
    trace
        .iter()
        .filter(|e| e.state == State::Dead && !except.contains(&e.node))
        .cloned()
        .collect()
}

#[test]
fn crashed_node_is_declared_dead_by_everyone_within_two_seconds() {
    for (n, seed) in [(5, 1), (5, 2), (8, 3), (12, 4)] {
        let mut s = sim(n, seed, 0.0);
        s.run_until(4_000);
        let victim = 2;
        let t0 = s.now();
        s.crash(victim);
        let all_dead = |s: &Sim| {
            s.ids()
                .filter(|o| *o != victim)
                .all(|o| s.state(o, victim) == Some(State::Dead))
        };
        assert!(
            s.run_until_cond(t0 + 2_000, all_dead),
            "N={n} seed={seed}: not everyone marked node {victim} dead within 2 s"
        );
        assert!(dead_marks(s.trace(), &[victim]).is_empty());
    }
}

#[test]
fn no_false_positive_with_twenty_percent_loss() {
    for (n, seed) in [(5, 21), (10, 22), (20, 23)] {
        let mut s = sim(n, seed, 0.2);
        s.run_until(3 * 60_000);
        let marks = dead_marks(s.trace(), &[]);
        assert!(marks.is_empty(), "N={n} seed={seed}: {:?}", &marks[..1]);
        // Every node still sees every other as alive or (transiently) suspect.
        for o in s.ids() {
            for t in s.ids().filter(|t| *t != o) {
                assert!(matches!(s.state(o, t), Some(State::Alive | State::Suspect)));
            }
        }
    }
}

#[test]
fn paused_node_is_suspected_then_refutes() {
    let mut s = sim(5, 31, 0.0);
    s.run_until(3_000);
    let paused = 3;
    s.pause(paused);
    s.run_until(3_600); // longer than a probe, shorter than the suspicion timeout
    s.resume(paused);
    s.run_until(8_000);
    let suspected = s
        .trace()
        .iter()
        .any(|e| e.node == paused && e.state == State::Suspect);
    assert!(suspected, "a 600 ms pause should be noticed");
    assert!(dead_marks(s.trace(), &[]).is_empty());
    assert!(
        s.member(paused).incarnation() >= 1,
        "refuted with a higher incarnation"
    );
    for o in s.ids().filter(|o| *o != paused) {
        assert_eq!(s.state(o, paused), Some(State::Alive));
        assert!(s.member(o).peer(paused).unwrap().incarnation >= 1);
    }
    // The paused node itself did not turn its own pause into suspicions of others.
    assert!(
        !s.trace()
            .iter()
            .any(|e| e.observer == paused && e.state == State::Dead)
    );
}

#[test]
fn long_pause_is_declared_dead_and_rejoins_with_higher_incarnation() {
    let mut s = sim(5, 32, 0.0);
    s.run_until(3_000);
    s.pause(4);
    s.run_until(9_000);
    assert!(
        s.ids()
            .filter(|o| *o != 4)
            .all(|o| s.state(o, 4) == Some(State::Dead))
    );
    s.resume(4);
    s.run_until(12_000);
    for o in s.ids().filter(|o| *o != 4) {
        assert_eq!(s.state(o, 4), Some(State::Alive), "observer {o}");
    }
    assert!(dead_marks(s.trace(), &[4]).is_empty());
}

#[test]
fn leave_propagates_without_any_dead_mark() {
    let mut s = sim(8, 41, 0.0);
    s.run_until(3_000);
    s.leave(8);
    s.run_until(4_000);
    for o in 1..8 {
        assert_eq!(s.state(o, 8), Some(State::Left), "observer {o}");
    }
    s.crash(8); // the process exits after leaving
    s.run_until(15_000);
    assert!(dead_marks(s.trace(), &[]).is_empty());
    assert!((1..8).all(|o| s.state(o, 8) == Some(State::Left)));
}

#[test]
fn join_through_a_seed() {
    let mut s = Sim::new(SimConfig {
        nodes: 10,
        seed: 51,
        full_start: false,
        ..SimConfig::default()
    });
    s.run_until(5_000);
    for o in s.ids() {
        assert!(s.member(o).joined());
        for t in s.ids().filter(|t| *t != o) {
            assert_eq!(s.state(o, t), Some(State::Alive), "{o} about {t}");
        }
    }
}

#[test]
fn partition_heals_and_converges() {
    let mut s = sim(6, 61, 0.0);
    s.run_until(3_000);
    s.partition(&[&[1, 2, 3], &[4, 5, 6]]);
    s.run_until(15_000);
    assert_eq!(s.state(1, 5), Some(State::Dead));
    assert_eq!(s.state(5, 1), Some(State::Dead));
    s.heal();
    let converged = |s: &Sim| {
        s.ids().all(|o| {
            s.ids()
                .filter(|t| *t != o)
                .all(|t| s.state(o, t) == Some(State::Alive))
        })
    };
    assert!(
        s.run_until_cond(45_000, converged),
        "not converged 30 s after heal"
    );
}

#[test]
fn same_seed_same_trace() {
    let script = |seed| {
        let mut s = sim(7, seed, 0.2);
        s.run_until(5_000);
        s.pause(2);
        s.run_until(6_000);
        s.resume(2);
        s.crash(5);
        s.partition(&[&[1, 3]]);
        s.run_until(12_000);
        s.heal();
        s.run_until(20_000);
        let bytes: Vec<u64> = s.ids().map(|i| s.bytes_sent(i)).collect();
        (s.trace().to_vec(), bytes)
    };
    let a = script(71);
    assert!(!a.0.is_empty());
    assert_eq!(a, script(71));
    assert_ne!(a, script(72));
}

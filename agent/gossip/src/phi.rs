//! Phi-accrual failure detection (Hayashibara et al.): instead of a yes/no timeout, each peer
//! gets a suspicion level `phi` that grows with silence relative to how regularly that peer has
//! been heard from. phi = 8 means "a silence this long happens about once in 10^8 intervals".

use std::collections::VecDeque;

/// Tuning of one detector.
#[derive(Clone, Debug, PartialEq)]
pub struct PhiConfig {
    /// How many inter-arrival times are remembered.
    pub window: usize,
    /// Lower bound of the standard deviation: perfectly regular arrivals would otherwise make
    /// the smallest delay look impossible (a hair trigger).
    pub min_std_ms: f64,
    /// Slack added to the mean, for pauses that are normal for the transport.
    pub acceptable_pause_ms: f64,
    /// phi stays 0 until this many intervals are known: one sample says nothing about jitter.
    pub min_samples: usize,
}

impl Default for PhiConfig {
    fn default() -> Self {
        Self {
            window: 100,
            min_std_ms: 50.0,
            acceptable_pause_ms: 0.0,
            min_samples: 3,
        }
    }
}

/// Inter-arrival history of one peer.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<u64>,
}

impl PhiDetector {
    pub fn new(config: PhiConfig) -> Self {
        Self {
            intervals: VecDeque::with_capacity(config.window.min(1024)),
            config,
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    /// Something arrived from the peer at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last {
            if now_ms < last {
                return; // out-of-order clock reading; keep the newer arrival
            }
            let interval = (now_ms - last) as f64;
            self.intervals.push_back(interval);
            self.sum += interval;
            self.sum_sq += interval * interval;
            while self.intervals.len() > self.config.window.max(1) {
                if let Some(old) = self.intervals.pop_front() {
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
        }
        self.last = Some(now_ms);
    }

    /// Time of the last arrival.
    pub fn last_arrival(&self) -> Option<u64> {
        self.last
    }

    /// Number of remembered intervals.
    pub fn samples(&self) -> usize {
        self.intervals.len()
    }

    /// Mean and (floored) standard deviation of the remembered intervals.
    pub fn mean_std(&self) -> Option<(f64, f64)> {
        if self.intervals.is_empty() {
            return None;
        }
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        Some((mean, var.sqrt().max(self.config.min_std_ms)))
    }

    /// Moves the last arrival forward by `ms`: the observer itself was paused, so that stretch
    /// of silence says nothing about the peer.
    pub fn forgive(&mut self, ms: u64) {
        if let Some(last) = self.last.as_mut() {
            *last = last.saturating_add(ms);
        }
    }

    /// Suspicion level at `now_ms`; 0 while too little history is known.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        if self.intervals.len() < self.config.min_samples.max(1) {
            return 0.0;
        }
        let Some((mean, std)) = self.mean_std() else {
            return 0.0;
        };
        let elapsed = now_ms.saturating_sub(last) as f64;
        let y = (elapsed - mean - self.config.acceptable_pause_ms) / std;
        // Logistic approximation of the normal CDF (as Akka/Cassandra use):
        // P(later) = 1/(1+e^a), a = y(1.5976 + 0.070566 y²), so
        // phi = -log10 P(later) = log10(1 + e^a), computed without overflow or underflow.
        let a = y * (1.5976 + 0.070566 * y * y);
        let softplus = a.max(0.0) + (-a.abs()).exp().ln_1p();
        softplus / std::f64::consts::LN_10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut PhiDetector, intervals: impl IntoIterator<Item = u64>) -> u64 {
        let mut t = 1_000;
        d.heartbeat(t);
        for i in intervals {
            t += i;
            d.heartbeat(t);
        }
        t
    }

    #[test]
    fn phi_grows_with_silence() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t = feed(&mut d, [200; 20]);
        let mut prev = d.phi(t);
        for silence in (50..3_000).step_by(50) {
            let phi = d.phi(t + silence);
            assert!(phi >= prev, "phi fell from {prev} to {phi} at {silence} ms");
            prev = phi;
        }
        assert!(d.phi(t + 1_000) > 8.0);
        assert!(d.phi(t + 100_000).is_finite());
    }

    #[test]
    fn regular_arrivals_with_jitter_stay_low() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let mut x: u64 = 0x9e37_79b9;
        let mut t = 0;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let interval = 180 + x % 41; // 200 ± 20 ms
            // Just before each arrival phi must be far below any sane threshold.
            if d.samples() >= 3 {
                assert!(d.phi(t + interval) < 3.0, "phi {}", d.phi(t + interval));
            }
            t += interval;
            d.heartbeat(t);
        }
        assert_eq!(d.samples(), 100, "window is bounded");
    }

    #[test]
    fn std_floor_prevents_hair_trigger() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t = feed(&mut d, [100; 50]);
        // Zero variance: without the floor 1 ms late would be "impossible".
        assert!(d.phi(t + 110) < 1.0, "phi {}", d.phi(t + 110));
        assert!(d.phi(t + 150) < 2.0);
        let mut no_floor = PhiDetector::new(PhiConfig {
            min_std_ms: 0.1,
            ..PhiConfig::default()
        });
        let t = feed(&mut no_floor, [100; 50]);
        assert!(no_floor.phi(t + 110) > 8.0);
    }

    #[test]
    fn no_history_means_no_suspicion() {
        let mut d = PhiDetector::new(PhiConfig::default());
        assert_eq!(d.phi(10_000), 0.0);
        d.heartbeat(0);
        d.heartbeat(100);
        assert_eq!(d.phi(100_000), 0.0);
    }

    #[test]
    fn forgive_moves_last_arrival() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t = feed(&mut d, [100; 10]);
        let high = d.phi(t + 2_000);
        d.forgive(1_900);
        assert!(d.phi(t + 2_000) < high);
        assert!(d.phi(t + 2_000) < 1.0);
    }
}

//! Anti-replay: each sender's sequence numbers are accepted at most once.
//!
//! # Design
//!
//! Every sealed packet carries the sender's node id and a 64-bit sequence number that the
//! sender increases by one per packet ([`SequenceCounter`]). Receivers keep, per sender, the
//! highest sequence seen and a bitmap of the [`WINDOW`] sequences below it (the IPsec/RFC 4303
//! sliding window): a sequence above the highest moves the window forward, one inside the
//! window is accepted if its bit is clear, one below the window is refused. Reordering of up
//! to `WINDOW` packets is tolerated, which UDP on a cluster network never exceeds.
//!
//! # Restarts
//!
//! A restarted sender has lost its counter, so the sequence is
//! `boot epoch (Unix seconds, high 32 bits) ‖ per-boot counter (low 32 bits)`. The next boot
//! starts above everything the previous boot sent as long as it starts in a later wall-clock
//! second than the previous boot and the previous boot sent fewer than 2³² packets per second
//! of its uptime (the counter carries into the epoch bits, so it borrows from later
//! seconds; at gossip rates that never happens). Receivers therefore need no reset and keep
//! refusing the old boot's packets: they are below the new window.
//!
//! If a node's clock is stepped backwards across a restart, its new packets fall below the
//! window and are refused (as [`ReplayError::TooOld`], counted separately in metrics) until the
//! clock passes the old boot time. That costs availability of one node, never security:
//! packet nonces are random (see `crypto`), so a repeated sequence never repeats a nonce.
//!
//! # Memory
//!
//! A [`ReplayTable`] holds at most `capacity` senders (136 bytes each) and evicts the least
//! recently seen one. Only authenticated packets create entries, so only key holders can fill
//! it. An evicted sender's old packets could be accepted once more, so the capacity must
//! exceed the number of members (the default, 4096, does); evictions are counted so an
//! operator can see the table is too small.
//!
//! Not covered: a receiver that starts fresh (no table) accepts a recording of an old packet
//! from a sender once. Membership messages carry incarnation numbers, so such a packet only
//! repeats stale news that the SWIM layer already ignores.

use std::collections::{BTreeMap, HashMap};

/// How many sequence numbers below the highest one seen are remembered per sender.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Default number of senders a [`ReplayTable`] remembers.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplayError {
    /// This sequence was already accepted from this sender.
    #[error("sequence number already seen from this sender")]
    Replayed,
    /// This sequence is below the sender's window: a replay, or a sender restarted with its
    /// clock behind its previous boot.
    #[error("sequence number older than the replay window")]
    TooOld,
}

/// The sequence numbers a sender stamps on its packets: boot epoch ‖ counter.
#[derive(Debug, Clone)]
pub struct SequenceCounter {
    next: u64,
}

impl SequenceCounter {
    /// Starts the counter for a process that booted at `boot_unix_secs` (wall-clock seconds
    /// since the Unix epoch; values beyond `u32::MAX`, the year 2106, are clamped).
    pub fn starting_at(boot_unix_secs: u64) -> Self {
        let epoch = boot_unix_secs.min(u64::from(u32::MAX));
        Self { next: epoch << 32 }
    }

    /// Starts the counter from a wall-clock time (a clock before 1970 counts as epoch 0).
    pub fn starting_at_time(boot: std::time::SystemTime) -> Self {
        let secs = boot
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::starting_at(secs)
    }

    /// The sequence number for the next packet. Saturates at `u64::MAX` (after the year
    /// 2106); receivers then refuse repeats, which is safe because nonces are random.
    pub fn next_sequence(&mut self) -> u64 {
        let sequence = self.next;
        self.next = self.next.saturating_add(1);
        sequence
    }

    /// The boot epoch a sequence number was stamped in (its high 32 bits).
    pub fn epoch_of(sequence: u64) -> u32 {
        (sequence >> 32) as u32
    }
}

/// One sender's sliding window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderWindow {
    highest: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when `highest - i` was accepted.
    seen: [u64; WORDS],
}

impl SenderWindow {
    /// A window that has accepted exactly `sequence`.
    pub fn new(sequence: u64) -> Self {
        let mut seen = [0; WORDS];
        seen[0] = 1;
        Self {
            highest: sequence,
            seen,
        }
    }

    /// The highest sequence accepted so far.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether `sequence` would be accepted, without recording it.
    pub fn check(&self, sequence: u64) -> Result<(), ReplayError> {
        if sequence > self.highest {
            return Ok(());
        }
        let age = self.highest - sequence;
        if age >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        if self.bit(age) {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Accepts `sequence` if it is new, and records it.
    pub fn accept(&mut self, sequence: u64) -> Result<(), ReplayError> {
        self.check(sequence)?;
        if sequence > self.highest {
            self.advance(sequence - self.highest);
            self.highest = sequence;
            self.seen[0] |= 1;
        } else {
            let age = self.highest - sequence;
            self.seen[(age / 64) as usize] |= 1 << (age % 64);
        }
        Ok(())
    }

    fn bit(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    /// Ages every remembered sequence by `by` (bits move towards higher indices).
    fn advance(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let lower = i.checked_sub(words).map_or(0, |j| self.seen[j]);
            let carry = match i.checked_sub(words + 1) {
                Some(j) if bits > 0 => self.seen[j] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = (lower << bits) | carry;
        }
    }
}

#[derive(Debug)]
struct Slot {
    window: SenderWindow,
    last_seen: u64,
}

/// The sliding windows of all senders, bounded in size (least recently seen evicted).
#[derive(Debug)]
pub struct ReplayTable {
    capacity: usize,
    senders: HashMap<u64, Slot>,
    /// `last_seen` tick → sender, for finding the least recently seen sender.
    by_age: BTreeMap<u64, u64>,
    tick: u64,
    evictions: u64,
}

impl Default for ReplayTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ReplayTable {
    /// A table remembering at most `capacity` senders (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            senders: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
            evictions: 0,
        }
    }

    /// Whether `sequence` from `sender` would be accepted, without recording it. Lets the
    /// packet opener drop replays before spending a decryption on them.
    pub fn check(&self, sender: u64, sequence: u64) -> Result<(), ReplayError> {
        self.senders
            .get(&sender)
            .map_or(Ok(()), |slot| slot.window.check(sequence))
    }

    /// Accepts `sequence` from `sender` at most once. Call only for authenticated packets.
    pub fn accept(&mut self, sender: u64, sequence: u64) -> Result<(), ReplayError> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.senders.get_mut(&sender) {
            slot.window.accept(sequence)?;
            self.by_age.remove(&slot.last_seen);
            slot.last_seen = tick;
            self.by_age.insert(tick, sender);
            return Ok(());
        }
        if self.senders.len() >= self.capacity
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.senders.remove(&oldest);
            self.evictions += 1;
        }
        self.senders.insert(
            sender,
            Slot {
                window: SenderWindow::new(sequence),
                last_seen: tick,
            },
        );
        self.by_age.insert(tick, sender);
        Ok(())
    }

    /// The window kept for `sender`, if any.
    pub fn window(&self, sender: u64) -> Option<&SenderWindow> {
        self.senders.get(&sender).map(|slot| &slot.window)
    }

    /// Number of senders remembered.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The most senders this table remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many senders were evicted to make room (a metric: non-zero means the capacity is
    /// below the cluster size).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_once_each() {
        let mut w = SenderWindow::new(10);
        assert_eq!(w.accept(10), Err(ReplayError::Replayed));
        for s in 11..3000 {
            assert_eq!(w.accept(s), Ok(()));
            assert_eq!(w.accept(s), Err(ReplayError::Replayed));
        }
        assert_eq!(w.accept(2999 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.accept(2999 - WINDOW + 1), Err(ReplayError::Replayed));
    }

    #[test]
    fn out_of_order_inside_window() {
        let mut w = SenderWindow::new(1000);
        assert_eq!(w.accept(1500), Ok(()));
        // 1000 is now 500 behind; 1001..1499 never seen.
        for s in (1001..1500).rev() {
            assert_eq!(w.accept(s), Ok(()), "{s}");
        }
        for s in 1000..=1500 {
            assert_eq!(w.accept(s), Err(ReplayError::Replayed), "{s}");
        }
        assert_eq!(w.accept(1500 - WINDOW), Err(ReplayError::TooOld));
    }

    #[test]
    fn shifts_across_word_boundaries() {
        for by in [
            1,
            63,
            64,
            65,
            127,
            128,
            129,
            1000,
            1023,
            1024,
            1025,
            u64::MAX / 2,
        ] {
            let mut w = SenderWindow::new(5);
            assert_eq!(w.accept(5 + by), Ok(()));
            if by < WINDOW {
                assert_eq!(w.accept(5), Err(ReplayError::Replayed), "by {by}");
                if by > 1 {
                    assert_eq!(w.accept(6), Ok(()), "by {by}");
                }
            } else {
                assert_eq!(w.accept(5), Err(ReplayError::TooOld), "by {by}");
            }
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut w = SenderWindow::new(0);
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.accept(0), Err(ReplayError::TooOld));
        assert_eq!(w.accept(u64::MAX - 1), Ok(()));
    }

    #[test]
    fn table_is_bounded_and_evicts_least_recently_seen() {
        let mut t = ReplayTable::new(3);
        t.accept(1, 100).unwrap();
        t.accept(2, 100).unwrap();
        t.accept(3, 100).unwrap();
        t.accept(1, 101).unwrap(); // 2 is now the least recently seen
        t.accept(4, 100).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.evictions(), 1);
        assert!(t.window(2).is_none());
        assert_eq!(t.accept(1, 101), Err(ReplayError::Replayed));
        assert_eq!(t.accept(3, 100), Err(ReplayError::Replayed));
        for sender in 10..1000 {
            t.accept(sender, 0).unwrap();
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.by_age.len(), 3);
    }

    #[test]
    fn refused_packets_do_not_touch_state() {
        let mut t = ReplayTable::new(2);
        t.accept(1, 5000).unwrap();
        let before = t.window(1).cloned();
        assert_eq!(t.accept(1, 5000), Err(ReplayError::Replayed));
        assert_eq!(t.accept(1, 1), Err(ReplayError::TooOld));
        assert_eq!(t.window(1).cloned(), before);
    }

    #[test]
    fn restarted_sender_continues_and_old_boot_stays_refused() {
        let mut t = ReplayTable::default();
        let mut first_boot = SequenceCounter::starting_at(1_700_000_000);
        let old: Vec<u64> = (0..50).map(|_| first_boot.next_sequence()).collect();
        for &s in &old {
            t.accept(7, s).unwrap();
        }
        // The pod restarts three seconds later with a fresh counter.
        let mut second_boot = SequenceCounter::starting_at(1_700_000_003);
        for _ in 0..50 {
            assert_eq!(t.accept(7, second_boot.next_sequence()), Ok(()));
        }
        for &s in &old {
            assert_eq!(t.accept(7, s), Err(ReplayError::TooOld));
        }
        assert_eq!(
            SequenceCounter::epoch_of(second_boot.next_sequence()),
            1_700_000_003
        );
    }
}

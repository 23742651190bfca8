//! The gossip envelope as a peer sees it: sealing, opening, replay, clusters and rotation.

use proptest::prelude::*;
use tern_gossip::crypto::{DropReason, HEADER_LEN, Header, OVERHEAD, open, seal};
use tern_gossip::keyring::{KEY_LEN, KeyId, Keyring, encode_base64};
use tern_gossip::replay::{ReplayTable, SequenceCounter};

const OLD: [u8; KEY_LEN] = [0x11; KEY_LEN];
const NEW: [u8; KEY_LEN] = [0x22; KEY_LEN];

fn keyring_file(primary: u32, keys: &[(u32, [u8; KEY_LEN])]) -> String {
    let mut text = format!("# test keyring\nprimary {primary}\n");
    for (id, key) in keys {
        text.push_str(&format!("{id} {}\n", encode_base64(key)));
    }
    text
}

fn single(cluster: &str) -> Keyring {
    Keyring::parse(cluster, &keyring_file(1, &[(1, OLD)])).unwrap()
}

fn header(sender: u64, sequence: u64) -> Header {
    Header { sender, sequence }
}

#[test]
fn round_trip() {
    let keyring = single("mail");
    let mut replay = ReplayTable::default();
    let packet = seal(&keyring, &header(7, 99), b"ping").unwrap();
    let opened = open(&keyring, &mut replay, &packet).unwrap();
    assert_eq!(
        (
            opened.sender,
            opened.sequence,
            opened.key_id,
            &opened.plaintext[..]
        ),
        (7, 99, KeyId(1), &b"ping"[..])
    );
    // Empty plaintexts are fine too.
    let packet = seal(&keyring, &header(7, 100), b"").unwrap();
    assert_eq!(packet.len(), OVERHEAD);
    assert!(
        open(&keyring, &mut replay, &packet)
            .unwrap()
            .plaintext
            .is_empty()
    );
}

#[test]
fn replayed_packet_is_dropped() {
    let keyring = single("mail");
    let mut replay = ReplayTable::default();
    let packet = seal(&keyring, &header(7, 1), b"alive").unwrap();
    assert!(open(&keyring, &mut replay, &packet).is_ok());
    assert_eq!(
        open(&keyring, &mut replay, &packet),
        Err(DropReason::Replayed)
    );
}

#[test]
fn forged_packets_do_not_move_the_window() {
    let keyring = single("mail");
    let mut replay = ReplayTable::default();
    let genuine = seal(&keyring, &header(7, 10), b"x").unwrap();
    // An attacker rewrites the sequence far ahead: authentication fails, window untouched.
    let mut forged = genuine.clone();
    forged[15..23].copy_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(
        open(&keyring, &mut replay, &forged),
        Err(DropReason::AuthFailed)
    );
    assert!(replay.window(7).is_none());
    assert!(open(&keyring, &mut replay, &genuine).is_ok());
}

#[test]
fn another_cluster_cannot_talk_even_with_the_same_key() {
    let a = single("cluster-a");
    let b = single("cluster-b");
    let packet = seal(&a, &header(1, 1), b"join").unwrap();
    assert_eq!(
        open(&b, &mut ReplayTable::default(), &packet),
        Err(DropReason::AuthFailed)
    );
    assert!(open(&a, &mut ReplayTable::default(), &packet).is_ok());
}

#[test]
fn another_key_is_unknown_or_fails_authentication() {
    let ours = single("mail");
    let same_id_other_key = Keyring::parse("mail", &keyring_file(1, &[(1, NEW)])).unwrap();
    let other_id = Keyring::parse("mail", &keyring_file(5, &[(5, NEW)])).unwrap();
    let mut replay = ReplayTable::default();
    let p = seal(&same_id_other_key, &header(1, 1), b"x").unwrap();
    assert_eq!(open(&ours, &mut replay, &p), Err(DropReason::AuthFailed));
    let p = seal(&other_id, &header(1, 2), b"x").unwrap();
    assert_eq!(open(&ours, &mut replay, &p), Err(DropReason::UnknownKey));
}

#[test]
fn header_checks_are_reported_separately() {
    let keyring = single("mail");
    let mut replay = ReplayTable::default();
    let packet = seal(&keyring, &header(1, 1), b"x").unwrap();
    let mut bad_magic = packet.clone();
    bad_magic[0] = b'X';
    let mut bad_version = packet.clone();
    bad_version[2] = 2;
    assert_eq!(
        open(&keyring, &mut replay, &bad_magic),
        Err(DropReason::BadMagic)
    );
    assert_eq!(
        open(&keyring, &mut replay, &bad_version),
        Err(DropReason::UnsupportedVersion)
    );
    assert_eq!(
        open(&keyring, &mut replay, &packet[..OVERHEAD - 1]),
        Err(DropReason::TooShort)
    );
    let labels: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), DropReason::ALL.len());
}

#[test]
fn restarted_sender_is_heard_and_its_old_packets_stay_refused() {
    let keyring = single("mail");
    let mut receiver = ReplayTable::default();
    let mut boot1 = SequenceCounter::starting_at(1_750_000_000);
    let old: Vec<Vec<u8>> = (0..20)
        .map(|_| seal(&keyring, &header(3, boot1.next_sequence()), b"old").unwrap())
        .collect();
    for p in &old {
        assert!(open(&keyring, &mut receiver, p).is_ok());
    }
    // Restart: the counter is gone, the clock has moved on.
    let mut boot2 = SequenceCounter::starting_at(1_750_000_030);
    for _ in 0..20 {
        let p = seal(&keyring, &header(3, boot2.next_sequence()), b"new").unwrap();
        assert_eq!(open(&keyring, &mut receiver, &p).unwrap().plaintext, b"new");
    }
    for p in &old {
        assert_eq!(open(&keyring, &mut receiver, p), Err(DropReason::TooOld));
    }
}

/// Rotation stages: only old → install new → use new → remove old.
fn rotation_stages() -> [Keyring; 4] {
    let file = [
        keyring_file(1, &[(1, OLD)]),
        keyring_file(1, &[(1, OLD), (2, NEW)]),
        keyring_file(2, &[(1, OLD), (2, NEW)]),
        keyring_file(2, &[(2, NEW)]),
    ];
    file.map(|text| Keyring::parse("mail", &text).unwrap())
}

#[test]
fn rotation_keeps_nodes_one_step_apart_talking() {
    let stages = rotation_stages();
    let mut sequence = 0;
    let mut exchange = |from: &Keyring, to: &Keyring, replay: &mut ReplayTable| {
        sequence += 1;
        let p = seal(from, &header(1, sequence), b"probe").unwrap();
        open(to, replay, &p).map(|o| o.plaintext)
    };
    for step in 0..3 {
        let (behind, ahead) = (&stages[step], &stages[step + 1]);
        let mut replay = ReplayTable::default();
        assert_eq!(
            exchange(behind, ahead, &mut replay).as_deref(),
            Ok(&b"probe"[..]),
            "stage {step} → {}",
            step + 1
        );
        assert_eq!(
            exchange(ahead, behind, &mut replay).as_deref(),
            Ok(&b"probe"[..]),
            "stage {} → {step}",
            step + 1
        );
    }
    // Skipping a step is what breaks: a node still on the old key alone cannot open the new.
    let mut replay = ReplayTable::default();
    assert_eq!(
        exchange(&stages[2], &stages[0], &mut replay),
        Err(DropReason::UnknownKey)
    );
}

#[test]
fn keys_never_reach_debug_output() {
    let keyring = rotation_stages().into_iter().nth(2).unwrap();
    let debug = format!("{keyring:?}");
    for key in [OLD, NEW] {
        assert!(!debug.contains(&encode_base64(&key)), "{debug}");
    }
    assert!(
        !debug.contains("17, 17") && !debug.contains("34, 34"),
        "{debug}"
    );
}

fn sealed_packet() -> impl Strategy<Value = (Vec<u8>, u64, u64)> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_open(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        prefix in any::<bool>(),
    ) {
        let keyring = single("mail");
        let mut replay = ReplayTable::default();
        let mut input = bytes;
        if prefix && input.len() >= HEADER_LEN {
            // Get past the cheap checks so the AEAD itself sees garbage.
            input[..7].copy_from_slice(b"TG\x01\x00\x00\x00\x01");
        }
        prop_assert!(open(&keyring, &mut replay, &input).is_err());
        prop_assert!(replay.is_empty());
    }

    #[test]
    fn any_single_bit_flip_is_rejected(
        (plaintext, sender, sequence) in sealed_packet(),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let keyring = single("mail");
        let mut packet = seal(&keyring, &header(sender, sequence), &plaintext).unwrap();
        let at = position.index(packet.len());
        packet[at] ^= 1 << bit;
        prop_assert!(open(&keyring, &mut ReplayTable::default(), &packet).is_err());
    }

    #[test]
    fn truncated_or_extended_packets_are_rejected(
        (plaintext, sender, sequence) in sealed_packet(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        let keyring = single("mail");
        let packet = seal(&keyring, &header(sender, sequence), &plaintext).unwrap();
        let at = cut.index(packet.len());
        prop_assert!(open(&keyring, &mut ReplayTable::default(), &packet[..at]).is_err());
        let mut longer = packet.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(open(&keyring, &mut ReplayTable::default(), &longer).is_err());
    }

    #[test]
    fn sealed_packets_open_once_and_only_in_their_cluster(
        (plaintext, sender, sequence) in sealed_packet(),
        cluster in "[a-z][a-z0-9-]{0,20}",
        other in "[a-z][a-z0-9-]{0,20}",
    ) {
        let ours = single(&cluster);
        let mut replay = ReplayTable::default();
        let packet = seal(&ours, &header(sender, sequence), &plaintext).unwrap();
        if other != cluster {
            prop_assert_eq!(
                open(&single(&other), &mut ReplayTable::default(), &packet),
                Err(DropReason::AuthFailed)
            );
        }
        let opened = open(&ours, &mut replay, &packet).unwrap();
        prop_assert_eq!(opened.plaintext, plaintext);
        prop_assert_eq!(open(&ours, &mut replay, &packet), Err(DropReason::Replayed));
    }

    #[test]
    fn keyring_parser_never_panics(text in "(primary [0-9]{1,3}\n|[0-9+-]{0,3} [A-Za-z0-9+/=]{0,48}\n|#.*\n| *\n){0,6}") {
        let _ = Keyring::parse("mail", &text);
    }
}

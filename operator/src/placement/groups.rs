//! User groups → shards.
//!
//! A group is the unit of mail placement: moving one copies all its users' mail, so groups stay
//! where they are unless pinned elsewhere, and balancing moves at most one group per epoch (as
//! Dovecot Palomar's controller does), never a group still cooling down from its last move.

use std::collections::BTreeMap;

use tern_crds::Assignment;
use tern_crds::assignment::default_group_name;

use super::{BALANCE_RATIO, GroupInput, PlacementInput};

/// The group-related part of the next assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPlacement {
    /// Group → shard.
    pub groups: BTreeMap<String, u32>,
    /// Lower-cased member address → group.
    pub members: BTreeMap<String, String>,
    /// Lower-cased domain → group.
    pub domains: BTreeMap<String, String>,
}

/// Groups whose `spec.shard` names no existing shard, by name, with that pin. Such a group is
/// placed as if unpinned; the controller reports the list in a condition.
pub fn invalid_pins(input: &PlacementInput) -> Vec<(String, u32)> {
    all_groups(input)
        .into_values()
        .filter_map(|g| {
            g.pin
                .filter(|&pin| !pin_valid(pin, input.shards))
                .map(|pin| (g.name, pin))
        })
        .collect()
}

fn pin_valid(pin: u32, shards: u32) -> bool {
    (1..=shards).contains(&pin)
}

/// The automatic groups and every UserGroup, by name; a UserGroup named like an automatic group
/// is that group (with its pin and size).
fn all_groups(input: &PlacementInput) -> BTreeMap<String, GroupInput> {
    let mut all: BTreeMap<String, GroupInput> = (1..=input.default_groups)
        .map(|k| {
            let name = default_group_name(k);
            (
                name.clone(),
                GroupInput {
                    name,
                    ..Default::default()
                },
            )
        })
        .collect();
    for group in &input.groups {
        all.insert(group.name.clone(), group.clone());
    }
    all
}

/// What a shard carries, compared users first, then bytes, then number of groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Load {
    users: u64,
    bytes: u64,
    groups: u64,
}

impl Load {
    fn add(&mut self, g: &GroupInput) {
        self.users += g.users;
        self.bytes += g.bytes;
        self.groups += 1;
    }
}

/// What balancing compares: the most precise size any group reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Bytes,
    Users,
    Groups,
}

impl Metric {
    fn of(groups: &BTreeMap<String, GroupInput>) -> Self {
        if groups.values().any(|g| g.bytes > 0) {
            Self::Bytes
        } else if groups.values().any(|g| g.users > 0) {
            Self::Users
        } else {
            Self::Groups
        }
    }

    fn weight(self, g: &GroupInput) -> u64 {
        match self {
            Self::Bytes => g.bytes,
            Self::Users => g.users,
            Self::Groups => 1,
        }
    }
}

/// Places every group on a shard `1..=input.shards` (none when there are no shards).
pub fn place_groups(previous: Option<&Assignment>, input: &PlacementInput) -> GroupPlacement {
    let all = all_groups(input);
    let mut out = GroupPlacement::default();
    for group in all.values() {
        for member in &group.members {
            out.members
                .entry(member.to_lowercase())
                .or_insert_with(|| group.name.clone());
        }
        if let Some(domain) = &group.domain {
            out.domains
                .entry(domain.to_lowercase())
                .or_insert_with(|| group.name.clone());
        }
    }
    if input.shards == 0 {
        return out;
    }

    let pin = |g: &GroupInput| g.pin.filter(|&p| pin_valid(p, input.shards));
    let mut unplaced: Vec<&GroupInput> = Vec::new();
    for group in all.values() {
        let before = previous.and_then(|p| p.groups.get(&group.name)).copied();
        match pin(group).or(before.filter(|&s| pin_valid(s, input.shards))) {
            Some(shard) => {
                out.groups.insert(group.name.clone(), shard);
            }
            None => unplaced.push(group),
        }
    }

    let mut loads: BTreeMap<u32, Load> = (1..=input.shards).map(|s| (s, Load::default())).collect();
    for (name, shard) in &out.groups {
        loads
            .get_mut(shard)
            .expect("placed on an existing shard")
            .add(&all[name]);
    }
    // Heaviest first, so the big groups spread before small ones fill the gaps.
    unplaced.sort_by(|a, b| (b.users, b.bytes, &a.name).cmp(&(a.users, a.bytes, &b.name)));
    for group in unplaced {
        let (&shard, load) = loads
            .iter_mut()
            .min_by_key(|(s, l)| (**l, **s))
            .expect("at least one shard");
        load.add(group);
        out.groups.insert(group.name.clone(), shard);
    }

    if let Some((name, to)) = rebalance_move(&all, &out.groups, input, &|g| pin(g).is_some()) {
        out.groups.insert(name, to);
    }
    out
}

/// The one group to move this epoch, if shard loads differ by more than [`BALANCE_RATIO`].
///
/// A group moves from a heaviest shard to the lightest only when it is lighter than the gap
/// between them: the pair's difference then strictly shrinks, the overall spread never grows,
/// and the sum of squared loads falls, so repeated epochs settle instead of swapping a group
/// back and forth. Of the groups that qualify, the one that best evens the pair moves.
fn rebalance_move(
    all: &BTreeMap<String, GroupInput>,
    placed: &BTreeMap<String, u32>,
    input: &PlacementInput,
    pinned: &dyn Fn(&GroupInput) -> bool,
) -> Option<(String, u32)> {
    let metric = Metric::of(all);
    let mut loads: BTreeMap<u32, u64> = (1..=input.shards).map(|s| (s, 0)).collect();
    for (name, shard) in placed {
        *loads.get_mut(shard)? += metric.weight(&all[name]);
    }
    let (&light, &light_load) = loads.iter().min_by_key(|(s, l)| (**l, **s))?;
    let heavy_load = *loads.values().max()?;
    let unbalanced = heavy_load as f64 > BALANCE_RATIO * light_load as f64;
    if !unbalanced {
        return None;
    }
    let gap = heavy_load - light_load;
    let heavies = loads
        .iter()
        .filter(|(_, l)| **l == heavy_load)
        .map(|(s, _)| *s);
    for heavy in heavies {
        let best = placed
            .iter()
            .filter(|(name, shard)| **shard == heavy && !input.cooling_down.contains(*name))
            .map(|(name, _)| &all[name])
            .filter(|g| !pinned(g))
            .map(|g| (metric.weight(g), g))
            .filter(|(w, _)| *w > 0 && *w < gap)
            .min_by_key(|(w, g)| ((gap - w).abs_diff(*w), &g.name));
        if let Some((_, group)) = best {
            return Some((group.name.clone(), light));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::testkit::{input, voters};
    use proptest::prelude::*;

    fn groups_input(shards: u32, default_groups: u32) -> PlacementInput {
        let mut inp = input(voters("mail", 3), shards, 3);
        inp.default_groups = default_groups;
        inp
    }

    fn with_groups(g: &GroupPlacement) -> Assignment {
        Assignment {
            groups: g.groups.clone(),
            ..Default::default()
        }
    }

    fn counts(g: &GroupPlacement, shards: u32) -> Vec<usize> {
        (1..=shards)
            .map(|s| g.groups.values().filter(|&&x| x == s).count())
            .collect()
    }

    fn group(name: &str) -> GroupInput {
        GroupInput {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn new_default_groups_spread_evenly() {
        let g = place_groups(None, &groups_input(4, 16));
        assert_eq!(g.groups.len(), 16);
        assert_eq!(counts(&g, 4), vec![4, 4, 4, 4]);
        assert!(g.groups.contains_key("default-16"));
    }

    #[test]
    fn heavy_groups_are_placed_first_on_the_lightest_shard() {
        let mut inp = groups_input(2, 0);
        inp.groups = vec![
            GroupInput {
                users: 10,
                ..group("small")
            },
            GroupInput {
                users: 100,
                ..group("big")
            },
            GroupInput {
                users: 50,
                ..group("mid")
            },
            GroupInput {
                users: 40,
                ..group("mid2")
            },
        ];
        let g = place_groups(None, &inp);
        // big → 1; mid → 2 (50); mid2 → 2 (90); small → 2 (100).
        assert_eq!(g.groups["big"], 1);
        assert_eq!(g.groups["mid"], 2);
        assert_eq!(g.groups["mid2"], 2);
        assert_eq!(g.groups["small"], 2);
    }

    #[test]
    fn pins_are_respected_and_bad_pins_reported() {
        let mut inp = groups_input(3, 4);
        inp.groups = vec![
            GroupInput {
                pin: Some(3),
                ..group("vip")
            },
            GroupInput {
                pin: Some(9),
                ..group("lost")
            },
            GroupInput {
                pin: Some(0),
                ..group("zero")
            },
        ];
        let g = place_groups(None, &inp);
        assert_eq!(g.groups["vip"], 3);
        assert!((1..=3).contains(&g.groups["lost"]));
        assert_eq!(
            invalid_pins(&inp),
            vec![("lost".to_string(), 9), ("zero".to_string(), 0)]
        );
        // A pin wins over the previous shard.
        let mut prev = with_groups(&g);
        prev.groups.insert("vip".into(), 1);
        assert_eq!(place_groups(Some(&prev), &inp).groups["vip"], 3);
    }

    #[test]
    fn members_and_domains_are_indexed_lower_case() {
        let mut inp = groups_input(1, 1);
        inp.groups = vec![
            GroupInput {
                members: vec!["CEO@Example.com".into()],
                ..group("a-vip")
            },
            GroupInput {
                members: vec!["ceo@example.com".into(), "cfo@example.com".into()],
                ..group("b-board")
            },
            GroupInput {
                domain: Some("Corp.Example".into()),
                ..group("corp")
            },
        ];
        let g = place_groups(None, &inp);
        assert_eq!(
            g.members["ceo@example.com"], "a-vip",
            "the first group by name wins a contested address"
        );
        assert_eq!(g.members["cfo@example.com"], "b-board");
        assert_eq!(g.domains["corp.example"], "corp");
    }

    #[test]
    fn groups_stay_put_and_move_off_removed_shards() {
        let inp = groups_input(4, 8);
        let first = place_groups(None, &inp);
        let again = place_groups(Some(&with_groups(&first)), &inp);
        assert_eq!(first, again);
        let fewer = groups_input(2, 8);
        let shrunk = place_groups(Some(&with_groups(&first)), &fewer);
        for (name, shard) in &first.groups {
            if *shard <= 2 {
                assert_eq!(shrunk.groups[name], *shard);
            } else {
                assert!(shrunk.groups[name] <= 2);
            }
        }
        assert_eq!(counts(&shrunk, 2), vec![4, 4]);
    }

    #[test]
    fn growing_shards_fills_them_one_move_per_epoch() {
        let mut prev = with_groups(&place_groups(None, &groups_input(1, 16)));
        let inp = groups_input(4, 16);
        let mut epochs = 0;
        loop {
            let next = place_groups(Some(&prev), &inp);
            let moved = prev
                .groups
                .iter()
                .filter(|(n, s)| next.groups[*n] != **s)
                .count();
            assert!(moved <= 1, "one move per epoch");
            if moved == 0 {
                break;
            }
            epochs += 1;
            assert!(
                epochs <= 12,
                "settles: 12 moves fill 3 new shards with 4 each"
            );
            prev = with_groups(&next);
        }
        let c = counts(&place_groups(Some(&prev), &inp), 4);
        assert_eq!(c, vec![4, 4, 4, 4]);
        assert_eq!(epochs, 12);
    }

    #[test]
    fn cooling_down_groups_never_move() {
        let mut prev = with_groups(&place_groups(None, &groups_input(1, 6)));
        let mut inp = groups_input(2, 6);
        inp.cooling_down = [
            "default-1",
            "default-2",
            "default-3",
            "default-4",
            "default-5",
        ]
        .map(String::from)
        .into();
        for _ in 0..5 {
            prev = with_groups(&place_groups(Some(&prev), &inp));
        }
        assert_eq!(
            prev.groups["default-6"], 2,
            "the one group free to move did"
        );
        assert!((1..=5).all(|k| prev.groups[&default_group_name(k)] == 1));
    }

    #[test]
    fn bytes_decide_when_reported_and_the_best_fitting_group_moves() {
        let mut inp = groups_input(1, 0);
        inp.groups = vec![
            GroupInput {
                bytes: 600,
                ..group("a")
            },
            GroupInput {
                bytes: 300,
                ..group("b")
            },
            GroupInput {
                bytes: 100,
                ..group("c")
            },
            GroupInput {
                pin: Some(1),
                bytes: 1000,
                ..group("pinned")
            },
        ];
        let prev = with_groups(&place_groups(None, &inp));
        inp.shards = 2;
        let g = place_groups(Some(&prev), &inp);
        // 2000 vs 0: moving a (600) leaves 1400/600, b 1700/300; a evens the pair best.
        assert_eq!(g.groups["a"], 2);
        assert_eq!(g.groups["pinned"], 1);
        assert_eq!(counts(&g, 2), vec![3, 1]);
    }

    #[test]
    fn within_ratio_nothing_moves() {
        let mut inp = groups_input(2, 0);
        inp.groups = vec![
            GroupInput {
                users: 110,
                ..group("a")
            },
            GroupInput {
                users: 100,
                ..group("b")
            },
            GroupInput {
                users: 5,
                ..group("c")
            },
        ];
        let prev = Assignment {
            groups: [("a".into(), 1), ("b".into(), 2), ("c".into(), 2)].into(),
            ..Default::default()
        };
        assert_eq!(place_groups(Some(&prev), &inp).groups, prev.groups);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random groups over a growing or shrinking number of shards: every group lands on an
        /// existing shard, valid pins hold, at most one unpinned group moves per epoch, cooling
        /// groups only move off removed shards, and repeated epochs settle.
        #[test]
        fn groups_settle_one_move_at_a_time(
            sizes in prop::collection::vec((0u64..1000, prop::option::of(0u32..6), any::<bool>()), 0..12),
            defaults in 0u32..10,
            shards_before in 1u32..5,
            shards_after in 1u32..6,
        ) {
            let mut inp = groups_input(shards_before, defaults);
            inp.groups = sizes.iter().enumerate().map(|(i, (users, pin, _))| GroupInput { users: *users, pin: *pin, ..group(&format!("g{i}")) }).collect();
            let mut prev = with_groups(&place_groups(None, &inp));
            inp.shards = shards_after;
            inp.cooling_down = sizes.iter().enumerate().filter(|(_, s)| s.2).map(|(i, _)| format!("g{i}")).collect();
            let mut settled = false;
            for _ in 0..64 {
                let next = place_groups(Some(&prev), &inp);
                prop_assert_eq!(next.groups.len(), defaults as usize + sizes.len());
                let mut moved = 0;
                for (name, shard) in &next.groups {
                    prop_assert!((1..=shards_after).contains(shard));
                    let g = inp.groups.iter().find(|g| &g.name == name);
                    if let Some(pin) = g.and_then(|g| g.pin).filter(|p| (1..=shards_after).contains(p)) {
                        prop_assert_eq!(*shard, pin);
                        continue;
                    }
                    let before = prev.groups[name];
                    if before <= shards_after && before != *shard {
                        moved += 1;
                        prop_assert!(!inp.cooling_down.contains(name), "{} was cooling down", name);
                    }
                }
                prop_assert!(moved <= 1);
                if next.groups == prev.groups {
                    settled = true;
                    break;
                }
                prev = with_groups(&next);
            }
            prop_assert!(settled, "placement settles");
        }
    }
}

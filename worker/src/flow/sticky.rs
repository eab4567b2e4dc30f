//! Consistent choice of a backend instance per key (rendezvous, or highest
//! random weight, hashing): each (key, instance URL) pair gets a score and the
//! key goes to the instance with the highest. Adding or removing an instance
//! moves only the keys that go to, or were on, that instance. Without a key,
//! instances take turns.

use std::sync::atomic::{AtomicUsize, Ordering};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The finaliser of MurmurHash3 (fmix64): spreads FNV's weak low bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A stable 64-bit score of (key, instance): the same on every build and
/// platform, so every worker process picks alike.
pub fn score(key: &str, instance: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, key.as_bytes());
    // The length keeps ("ab", "c") and ("a", "bc") apart.
    let h = fnv1a(h, &(key.len() as u64).to_le_bytes());
    mix(fnv1a(h, instance.as_bytes()))
}

/// Index of the instance for `key`: the highest [`score`], ties to the lower
/// index. Without a key, round-robin on `round_robin`. 0 when `instances` is
/// empty (the caller should not ask then).
pub fn pick(instances: &[String], key: Option<&str>, round_robin: &AtomicUsize) -> usize {
    if instances.len() <= 1 {
        return 0;
    }
    match key {
        Some(key) => {
            let mut best = 0;
            let mut best_score = score(key, &instances[0]);
            for (i, instance) in instances.iter().enumerate().skip(1) {
                let s = score(key, instance);
                if s > best_score {
                    best = i;
                    best_score = s;
                }
            }
            best
        }
        None => round_robin.fetch_add(1, Ordering::Relaxed) % instances.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("http://{n}:8080")).collect()
    }

    fn keys() -> Vec<String> {
        (0..1000).map(|i| format!("customer-{i}")).collect()
    }

    #[test]
    fn the_hash_is_stable() {
        // FNV-1a test vectors, then fixed values of the score: a change here
        // would move keys between instances across releases.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(score("k", "http://a"), score("k", "http://a"));
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[test]
    fn the_same_key_always_gets_the_same_instance() {
        let instances = urls(&["a", "b", "c"]);
        let rr = AtomicUsize::new(0);
        for key in keys().iter().take(50) {
            let first = pick(&instances, Some(key), &rr);
            for _ in 0..10 {
                assert_eq!(pick(&instances, Some(key), &rr), first);
            }
        }
        assert_eq!(
            rr.load(Ordering::Relaxed),
            0,
            "keyed picks leave the turn alone"
        );
    }

    #[test]
    fn keys_spread_evenly() {
        let instances = urls(&["a", "b", "c"]);
        let rr = AtomicUsize::new(0);
        let mut counts = [0usize; 3];
        for key in keys() {
            counts[pick(&instances, Some(&key), &rr)] += 1;
        }
        for c in counts {
            assert!((250..=420).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn removing_an_instance_moves_only_its_keys() {
        let three = urls(&["a", "b", "c"]);
        let two = urls(&["a", "c"]);
        let rr = AtomicUsize::new(0);
        let mut moved = 0;
        for key in keys() {
            let before = &three[pick(&three, Some(&key), &rr)];
            let after = &two[pick(&two, Some(&key), &rr)];
            if before == "http://b:8080" {
                moved += 1;
            } else {
                assert_eq!(before, after, "{key} moved although its instance stayed");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn adding_an_instance_moves_keys_only_to_it() {
        let three = urls(&["a", "b", "c"]);
        let four = urls(&["a", "b", "c", "d"]);
        let rr = AtomicUsize::new(0);
        let mut moved = 0;
        for key in keys() {
            let before = &three[pick(&three, Some(&key), &rr)];
            let after = &four[pick(&four, Some(&key), &rr)];
            if before != after {
                assert_eq!(after, "http://d:8080");
                moved += 1;
            }
        }
        // About a quarter of the keys.
        assert!((180..=320).contains(&moved), "moved {moved}");
    }

    #[test]
    fn without_a_key_instances_take_turns() {
        let instances = urls(&["a", "b", "c"]);
        let rr = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..7).map(|_| pick(&instances, None, &rr)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(pick(&[], Some("k"), &rr), 0);
        assert_eq!(pick(&urls(&["only"]), None, &rr), 0);
    }
}

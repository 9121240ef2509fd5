//! Which server holds a session: rendezvous (highest-random-weight) hashing.
//!
//! For a routing key `k` (the session's store key, *not* the full item key, so a session
//! and its flash item always land on the same server) every server `s` gets the score
//! `u64::from_be_bytes(SHA-256(name(s) ‖ 0x00 ‖ k)[..8])`, where `name(s)` is the server
//! exactly as written in `store.storage.servers`; the highest score wins (a tie, which
//! needs a 64-bit collision, goes to the server listed first).
//!
//! Why this scheme:
//! - stable across builds, toolchains and machines: SHA-256 is fixed by its standard, unlike
//!   `std`'s `DefaultHasher`, whose algorithm may change between Rust releases (two
//!   sidecars built differently would otherwise disagree on where a session lives);
//! - minimal movement: adding an n+1st server moves only the keys for which the new server
//!   now scores highest, ≈ 1/(n+1) of them; removing one moves only its own keys;
//! - independent of list order: reordering `servers` moves nothing (scores depend on the
//!   names, not positions); renaming a server (e.g. IP ↔ hostname) counts as replacing it.
//!
//! The cost is one SHA-256 of ~60 bytes per server and request: microseconds.

use sha2::{Digest, Sha256};

/// The server names, in configuration order.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    names: Vec<String>,
}

impl Ring {
    pub(crate) fn new(names: Vec<String>) -> Ring {
        Ring { names }
    }

    /// Index (into the configured list) of the server that owns `key`. With no server at
    /// all (prevented by the config) this answers 0, and the caller's lookup fails.
    pub(crate) fn pick(&self, key: &str) -> usize {
        let mut best = 0;
        let mut best_score = 0u64;
        for (i, name) in self.names.iter().enumerate() {
            let s = score(name, key);
            if i == 0 || s > best_score {
                best = i;
                best_score = s;
            }
        }
        best
    }
}

fn score(server: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(server.as_bytes());
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    h.update([0u8]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    fn key(i: usize) -> String {
        // Shaped like store keys (base64url of 32 bytes), deterministic.
        format!("k{i:042}")
    }

    #[test]
    fn adding_a_fourth_server_moves_about_a_quarter() {
        let three = Ring::new(names(3));
        let four = Ring::new(names(4));
        let n = 10_000;
        let mut moved = 0;
        let mut counts = [0usize; 4];
        for i in 0..n {
            let k = key(i);
            let (a, b) = (three.pick(&k), four.pick(&k));
            counts[b] += 1;
            if a != b {
                moved += 1;
                // Keys only ever move to the new server.
                assert_eq!(b, 3, "key {i} moved between old servers");
            }
        }
        let fraction = moved as f64 / n as f64;
        assert!((0.15..=0.35).contains(&fraction), "moved {fraction}");
        for c in counts {
            assert!((2_000..=3_000).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn order_of_the_list_does_not_matter() {
        let a = Ring::new(names(3));
        let mut reversed = names(3);
        reversed.reverse();
        let b = Ring::new(reversed);
        for i in 0..1_000 {
            let k = key(i);
            assert_eq!(a.names[a.pick(&k)], b.names[b.pick(&k)]);
        }
    }

    /// Pinned: a change here would silently move every deployed session.
    #[test]
    fn golden_mapping() {
        let ring = Ring::new(names(3));
        let got: Vec<usize> = [
            "",
            "a",
            "k000000000000000000000000000000000000000000",
            "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo",
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",
            "session-sidecar",
        ]
        .iter()
        .map(|k| ring.pick(k))
        .collect();
        assert_eq!(got, GOLDEN);
        assert_eq!(
            score("10.0.0.1:11211", "a"),
            GOLDEN_SCORE,
            "score function changed"
        );
    }

    const GOLDEN: [usize; 6] = [2, 2, 0, 2, 1, 0];
    const GOLDEN_SCORE: u64 = 3_711_486_056_818_631_424;

    #[test]
    fn one_server_takes_everything() {
        let ring = Ring::new(names(1));
        assert!((0..100).all(|i| ring.pick(&key(i)) == 0));
    }
}

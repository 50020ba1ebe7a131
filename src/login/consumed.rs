//! The login states whose callback already ran, so that a replayed
//! callback is refused even while the browser still has the login cookie.
//!
//! A state needs remembering only while its login cookie can still be
//! accepted: one login lifetime after the login began. So states are kept
//! in two generations, the current one and the one before it, and the one
//! before is dropped whole when the current one is a lifetime old. Each
//! state is remembered for at least one lifetime (at most two), as a
//! 16-byte digest in a hash set: 20 to 40 bytes a login, where a cache
//! entry holding the state's text cost about ten times that (a burst of
//! logins is paid for until it is a lifetime old).
//!
//! A generation holds a bounded number of states. A flood of callbacks past
//! it starts the next generation early, which forgets the oldest states
//! sooner (their codes are still refused by the provider, which redeems
//! each code once) and keeps memory bounded.

use std::collections::HashSet;
use std::mem;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// States per generation before the next one starts early.
const MAX_PER_GENERATION: usize = 100_000;

pub(super) struct Consumed {
    generations: Mutex<Generations>,
    lifetime: Duration,
    max: usize,
}

struct Generations {
    current: HashSet<[u8; 16]>,
    previous: HashSet<[u8; 16]>,
    /// When `current` started.
    since: Instant,
}

// === impl Consumed ===

impl Consumed {
    /// Remembers each state for at least `lifetime`.
    pub(super) fn new(lifetime: Duration) -> Self {
        Self::bounded(lifetime, MAX_PER_GENERATION)
    }

    fn bounded(lifetime: Duration, max: usize) -> Self {
        Consumed {
            generations: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                since: Instant::now(),
            }),
            lifetime,
            max,
        }
    }

    /// Records `state` as used; false when it was used before.
    pub(super) fn first_use(&self, state: &str) -> bool {
        self.first_use_at(state, Instant::now())
    }

    fn first_use_at(&self, state: &str, now: Instant) -> bool {
        let digest = digest(state);
        // Held for a lookup and an insert; a callback never waits under it.
        let mut g = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let age = now.saturating_duration_since(g.since);
        if age >= self.lifetime * 2 {
            g.previous.clear();
            g.current.clear();
            g.since = now;
        } else if age >= self.lifetime || g.current.len() >= self.max {
            g.previous = mem::take(&mut g.current);
            g.since = now;
        }
        !g.previous.contains(&digest) && g.current.insert(digest)
    }
}

fn digest(state: &str) -> [u8; 16] {
    let full = Sha256::digest(state.as_bytes());
    let mut short = [0; 16];
    short.copy_from_slice(&full[..16]);
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME: Duration = Duration::from_secs(600);

    #[test]
    fn a_state_is_accepted_once() {
        let c = Consumed::new(LIFETIME);
        let now = Instant::now();
        assert!(c.first_use_at("state-a", now));
        assert!(!c.first_use_at("state-a", now), "replayed");
        assert!(c.first_use_at("state-b", now), "another state");
    }

    #[test]
    fn a_state_is_remembered_for_at_least_one_lifetime_and_then_forgotten() {
        let c = Consumed::new(LIFETIME);
        let start = Instant::now();
        // Used just before the generation turns over...
        assert!(c.first_use_at("late", start + LIFETIME - Duration::from_secs(1)));
        // ...it is still refused a lifetime after its use, in the previous one.
        let later = start + LIFETIME * 2 - Duration::from_secs(2);
        assert!(c.first_use_at("other", later), "turns the generation over");
        assert!(!c.first_use_at("late", later));
        // Two generations on, it is gone, and memory with it.
        assert!(c.first_use_at("late", later + LIFETIME * 2));
    }

    #[test]
    fn a_flood_past_the_bound_starts_the_next_generation_early() {
        let c = Consumed::bounded(LIFETIME, 3);
        let now = Instant::now();
        for n in 0..3 {
            assert!(c.first_use_at(&format!("s{n}"), now));
        }
        // The fourth starts a new generation; the first three are still known.
        assert!(c.first_use_at("s3", now));
        assert!(!c.first_use_at("s0", now));
        for n in 4..7 {
            assert!(c.first_use_at(&format!("s{n}"), now));
        }
        // Another generation on, the first three are forgotten.
        assert!(c.first_use_at("s0", now));
        let g = c.generations.lock().unwrap();
        assert!(g.current.len() + g.previous.len() <= 6, "bounded");
    }
}

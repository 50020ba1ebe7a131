//! Counts that every serving thread adds to in memory of its own.
//!
//! An atomic addition to a number that both cores add to moves the cache
//! line that holds it from one core to the other on nearly every request,
//! a wait of the order of a hundred nanoseconds each time. Here each
//! serving thread (see `server::workers`) adds to its own slot, a cache
//! line that no other thread writes; every other thread shares slot 0. A
//! scrape adds the slots up, which is the only time a core reads another's.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Atomic;

use crate::server::{serving_thread, serving_threads};

/// `N` numbers per thread, each thread's on cache lines of their own (128
/// bytes: some cores fetch lines in pairs).
#[derive(Debug)]
pub(super) struct PerThread<const N: usize> {
    slots: Box<[Slot<N>]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Slot<const N: usize>([AtomicU64; N]);

// === impl PerThread ===

impl<const N: usize> PerThread<N> {
    pub(super) fn new() -> Self {
        let slots = (0..=serving_threads())
            .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        PerThread { slots }
    }

    /// Adds `n` to number `i` of this thread; returns what this thread's
    /// share was before.
    pub(super) fn add(&self, i: usize, n: u64) -> u64 {
        let slot = &self.slots[serving_thread() % self.slots.len()];
        slot.0[i].fetch_add(n, Ordering::Relaxed)
    }

    /// Number `i` over all threads.
    pub(super) fn sum(&self, i: usize) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.0[i].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl<const N: usize> Default for PerThread<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of a prometheus-client counter kept per thread. `inc` and
/// `inc_by` return the calling thread's share before the addition, not
/// the total, which only a scrape needs.
impl Atomic<u64> for PerThread<1> {
    fn inc(&self) -> u64 {
        self.add(0, 1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        self.add(0, v)
    }

    fn get(&self) -> u64 {
        self.sum(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_what_every_thread_added() {
        let counts = std::sync::Arc::new(PerThread::<2>::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counts.add(0, 1);
                    }
                    counts.add(1, t);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counts.sum(0), 4000);
        assert_eq!(counts.sum(1), 1 + 2 + 3);
    }

    #[test]
    fn each_slot_is_a_cache_line_pair_of_its_own() {
        let counts = PerThread::<1>::new();
        assert!(counts.slots.len() >= 2);
        let first = &counts.slots[0] as *const Slot<1> as usize;
        let second = &counts.slots[1] as *const Slot<1> as usize;
        assert_eq!(second - first, 128);
        assert_eq!(first % 128, 0);
    }
}

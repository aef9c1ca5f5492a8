//! Bounded "top N" counters: memory stays fixed however many distinct
//! names or clients are seen. When full, a newcomer replaces the least
//! counted of a few sampled keys, so frequent keys stay and each update
//! costs O(1).

use std::borrow::Borrow;
use std::hash::Hash;

use indexmap::IndexMap;
use parking_lot::Mutex;

/// Keys sampled to pick one to forget when full.
const EVICTION_SAMPLES: usize = 8;

#[derive(Debug)]
struct Counts<K> {
    map: IndexMap<K, u64, foldhash::fast::RandomState>,
    /// xorshift state for sampling.
    rng: u64,
}

/// Counts keys, keeping at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct TopCounter<K> {
    counts: Mutex<Counts<K>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> TopCounter<K> {
    /// A counter keeping at most `capacity` keys.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            counts: Mutex::new(Counts {
                map: IndexMap::default(),
                rng: 0x9e37_79b9_7f4a_7c15,
            }),
            capacity: capacity.max(1),
        }
    }

    /// Counts one occurrence; allocates only for a key not yet tracked.
    pub(crate) fn add<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.map.get_mut(key) {
            *count += 1;
            return;
        }
        if counts.map.len() >= self.capacity {
            let mut victim = counts.next_index();
            for _ in 1..EVICTION_SAMPLES {
                let candidate = counts.next_index();
                if counts.map[candidate] < counts.map[victim] {
                    victim = candidate;
                }
            }
            counts.map.swap_remove_index(victim);
        }
        counts.map.insert(key.to_owned(), 1);
    }

    /// The `n` most frequent keys, most frequent first.
    pub(crate) fn top(&self, n: usize) -> Vec<(K, u64)> {
        let counts = self.counts.lock();
        let mut all: Vec<(K, u64)> = counts
            .map
            .iter()
            .map(|(key, &count)| (key.clone(), count))
            .collect();
        all.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        all.truncate(n);
        all
    }
}

impl<K> Counts<K> {
    fn next_index(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % self.map.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_frequent_keys() {
        let top: TopCounter<Vec<u8>> = TopCounter::new(100);
        for round in 0..50 {
            top.add(b"popular".as_slice());
            top.add(b"second".as_slice());
            top.add(b"second".as_slice());
            for index in 0..20 {
                top.add(format!("rare-{round}-{index}").as_bytes());
            }
        }
        assert!(top.counts.lock().map.len() <= 100);
        let best = top.top(2);
        assert_eq!((&*best[0].0, best[0].1), (b"second".as_slice(), 100));
        assert_eq!((&*best[1].0, best[1].1), (b"popular".as_slice(), 50));
    }
}

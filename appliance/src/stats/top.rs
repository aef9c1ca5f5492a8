//! Bounded "top N" counters: memory stays fixed however many distinct
//! names or clients are seen; rare ones are forgotten first.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;

/// Counts keys, keeping at most `capacity` of them.
#[derive(Debug)]
pub struct TopCounter<K> {
    counts: Mutex<HashMap<K, u64>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> TopCounter<K> {
    /// A counter keeping at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Counts one occurrence; allocates only for a key not yet tracked.
    pub fn add<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(key) {
            *count += 1;
            return;
        }
        if counts.len() >= self.capacity {
            // Age everything: halve counts and forget the ones that reach zero.
            while counts.len() >= self.capacity {
                counts.retain(|_, count| {
                    *count /= 2;
                    *count > 0
                });
            }
        }
        counts.insert(key.to_owned(), 1);
    }

    /// The `n` most frequent keys, most frequent first.
    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut all: Vec<(K, u64)> = self
            .counts
            .lock()
            .iter()
            .map(|(key, &count)| (key.clone(), count))
            .collect();
        all.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        all.truncate(n);
        all
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
            for index in 0..20 {
                top.add(format!("rare-{round}-{index}").as_bytes());
            }
        }
        assert!(top.counts.lock().len() <= 100);
        assert_eq!(&*top.top(1)[0].0, b"popular");
    }
}

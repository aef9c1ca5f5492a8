//! Bounded places, keyed by peer: at most so many held in all and so many
//! per key (a client address). What every listener an unauthenticated
//! device can reach uses to cap its connections; the map holds an entry only
//! while its key holds a place, so it is bounded by the total.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a place was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The key holds its share.
    PerKey,
    /// Every place is held.
    Total,
}

/// The places and their bounds.
#[derive(Debug)]
pub(crate) struct Places<K: Eq + Hash> {
    held: Arc<Mutex<Held<K>>>,
    total: usize,
    per_key: usize,
}

#[derive(Debug)]
struct Held<K> {
    by_key: HashMap<K, usize>,
    total: usize,
}

/// One held place; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct Place<K: Eq + Hash> {
    held: Arc<Mutex<Held<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Places<K> {
    /// At most `total` places, `per_key` of them for one key.
    pub(crate) fn new(total: usize, per_key: usize) -> Self {
        Self {
            held: Arc::new(Mutex::new(Held {
                by_key: HashMap::new(),
                total: 0,
            })),
            total,
            per_key,
        }
    }

    /// A place for `key`, if the bounds allow.
    pub(crate) fn take(&self, key: K) -> Result<Place<K>, Refused> {
        let mut held = self.held.lock();
        if held.total >= self.total {
            return Err(Refused::Total);
        }
        let count = held.by_key.entry(key.clone()).or_default();
        if *count >= self.per_key {
            return Err(Refused::PerKey);
        }
        *count += 1;
        held.total += 1;
        Ok(Place {
            held: Arc::clone(&self.held),
            key,
        })
    }

    /// Places held now.
    pub(crate) fn held(&self) -> usize {
        self.held.lock().total
    }
}

impl<K: Eq + Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        held.total -= 1;
        if let Some(count) = held.by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_past_its_share_is_refused_and_others_are_not() {
        let places = Places::new(3, 2);
        let first = [places.take("a").unwrap(), places.take("a").unwrap()];
        assert_eq!(places.take("a").unwrap_err(), Refused::PerKey);
        let other = places.take("b").unwrap();
        assert_eq!(places.take("c").unwrap_err(), Refused::Total);
        drop(first);
        assert_eq!(places.held(), 1);
        assert!(places.take("a").is_ok());
        drop(other);
        assert!(
            places.held.lock().by_key.is_empty(),
            "emptied keys are forgotten"
        );
    }
}

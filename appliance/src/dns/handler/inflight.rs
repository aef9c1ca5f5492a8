//! The misses under way, bounded: how many questions are being fetched
//! upstream (each holds a socket), how many queries wait for them, and how
//! many of those one client may have. A miss beyond a bound is shed, so a
//! flood of random names under a slow zone costs Moat a fixed amount of
//! memory and descriptors, and one client cannot take every slot.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::dns::wire::QuestionKey;

/// How many misses may be under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MissLimits {
    /// Questions fetched upstream at once.
    pub questions: usize,
    /// Queries one client address may have waiting.
    pub per_client: usize,
}

impl MissLimits {
    /// Queries waiting in all, whichever client: a few per question.
    fn waiting(self) -> usize {
        self.questions.saturating_mul(4)
    }
}

/// Why a miss was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The client already has its share waiting.
    Client,
    /// Every slot is taken.
    Full,
}

/// A waiting query's place; giving it back (drop) frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket<T> {
    table: Arc<Mutex<InFlight<T>>>,
    client: IpAddr,
}

impl<T> Drop for Ticket<T> {
    fn drop(&mut self) {
        self.table.lock().leave(self.client);
    }
}

/// Whether an admitted query starts the fetch for its question or joins one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// No fetch was under way: the caller starts it.
    First,
    /// It waits on the fetch under way.
    Joined,
}

/// The questions being fetched, with the answer channels waiting on each.
#[derive(Debug)]
pub(crate) struct InFlight<T> {
    questions: HashMap<QuestionKey, Vec<oneshot::Sender<T>>>,
    clients: HashMap<IpAddr, usize>,
    waiting: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self {
            questions: HashMap::new(),
            clients: HashMap::new(),
            waiting: 0,
        }
    }
}

impl<T> InFlight<T> {
    /// Puts `waiter` in line for `key`'s answer on `client`'s behalf, if the
    /// limits allow.
    pub(crate) fn admit(
        table: &Arc<Mutex<Self>>,
        key: &QuestionKey,
        client: IpAddr,
        waiter: oneshot::Sender<T>,
        limits: MissLimits,
    ) -> Result<(Ticket<T>, Role), Shed> {
        let mut this = table.lock();
        let mine = this.clients.get(&client).copied().unwrap_or(0);
        if mine >= limits.per_client {
            return Err(Shed::Client);
        }
        if this.waiting >= limits.waiting() {
            return Err(Shed::Full);
        }
        let questions_full = this.questions.len() >= limits.questions;
        let role = match this.questions.entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push(waiter);
                Role::Joined
            }
            Entry::Vacant(_) if questions_full => {
                return Err(Shed::Full);
            }
            Entry::Vacant(slot) => {
                slot.insert(vec![waiter]);
                Role::First
            }
        };
        this.waiting += 1;
        *this.clients.entry(client).or_default() += 1;
        let ticket = Ticket {
            table: Arc::clone(table),
            client,
        };
        Ok((ticket, role))
    }

    /// Starts a fetch nobody waits on (a refresh), if none is under way for
    /// `key` and a question slot is free.
    pub(crate) fn start_unwaited(&mut self, key: &QuestionKey, limits: MissLimits) -> bool {
        if self.questions.len() >= limits.questions || self.questions.contains_key(key) {
            return false;
        }
        self.questions.insert(key.clone(), Vec::new());
        true
    }

    /// Ends the fetch for `key`: the channels that waited on it.
    pub(crate) fn land(&mut self, key: &QuestionKey) -> Vec<oneshot::Sender<T>> {
        self.questions.remove(key).unwrap_or_default()
    }

    fn leave(&mut self, client: IpAddr) {
        self.waiting = self.waiting.saturating_sub(1);
        if let Entry::Occupied(mut count) = self.clients.entry(client) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MissLimits = MissLimits {
        questions: 2,
        per_client: 3,
    };

    fn key(name: &[u8]) -> QuestionKey {
        QuestionKey {
            name: heapless::Vec::from_slice(name).unwrap(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    type Table = Arc<Mutex<InFlight<u8>>>;

    fn admit(table: &Table, name: &[u8], client: IpAddr) -> Result<(Ticket<u8>, Role), Shed> {
        InFlight::admit(table, &key(name), client, oneshot::channel().0, LIMITS)
    }

    #[test]
    fn a_client_past_its_share_is_shed_and_others_are_not() {
        let table = Table::default();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(admit(&table, b"\x01a\x00", ip(2)).unwrap());
        }
        assert_eq!(
            admit(&table, b"\x01a\x00", ip(2)).unwrap_err(),
            Shed::Client
        );
        let (_ticket, role) = admit(&table, b"\x01a\x00", ip(3)).unwrap();
        assert_eq!(role, Role::Joined);
        held.pop();
        assert!(
            admit(&table, b"\x01a\x00", ip(2)).is_ok(),
            "a freed slot is free"
        );
    }

    #[test]
    fn questions_past_the_bound_are_shed_until_one_lands() {
        let table = Table::default();
        let (_a, first) = admit(&table, b"\x01a\x00", ip(2)).unwrap();
        let (_b, _) = admit(&table, b"\x01b\x00", ip(3)).unwrap();
        assert_eq!(first, Role::First);
        assert_eq!(admit(&table, b"\x01c\x00", ip(4)).unwrap_err(), Shed::Full);
        assert!(!table.lock().start_unwaited(&key(b"\x01c\x00"), LIMITS));
        assert_eq!(table.lock().land(&key(b"\x01a\x00")).len(), 1);
        assert_eq!(admit(&table, b"\x01c\x00", ip(4)).unwrap().1, Role::First);
        assert_eq!(table.lock().questions.len(), 2);
    }

    #[test]
    fn waiting_queries_are_bounded_across_clients() {
        let table = Table::default();
        let mut held = Vec::new();
        for client in 0..LIMITS.waiting() {
            held.push(admit(&table, b"\x01a\x00", ip(client as u8)).unwrap());
        }
        assert_eq!(
            admit(&table, b"\x01a\x00", ip(200)).unwrap_err(),
            Shed::Full
        );
        drop(held);
        let this = table.lock();
        assert_eq!((this.waiting, this.clients.len()), (0, 0));
    }
}

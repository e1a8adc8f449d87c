//! The gateway's per-credential caps on calls in flight, in this process:
//! a count per credential with calls in flight, kept under one short lock
//! and forgotten when its last call ends (so the map holds only what is in
//! flight, and no call walks it). The cap is the whole deployment's: each
//! of the live replicas (counted by their heartbeats in the store) allows
//! its share, `cap / replicas` (at least one).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::ids::CredentialId;

type Counts = Arc<Mutex<HashMap<CredentialId, usize>>>;

/// The per-credential caps of this process's gateway.
#[derive(Debug)]
pub struct GatewaySlots {
    /// Calls in flight through one credential at the most, on all the
    /// replicas together.
    cap: usize,
    /// Live replicas, this one included, as its last heartbeat counted.
    replicas: AtomicUsize,
    inflight: Counts,
}

/// One call's place under its credential's cap, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    inflight: Counts,
    id: CredentialId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.inflight.lock().expect("not poisoned");
        if let Entry::Occupied(mut entry) = counts.entry(self.id.clone()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

impl GatewaySlots {
    /// At most `cap` calls at once through each credential.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            replicas: AtomicUsize::new(1),
            inflight: Counts::default(),
        }
    }

    /// `replicas` serve the gateway now, this one included.
    pub fn set_replicas(&self, replicas: usize) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    /// Live replicas, as this one last counted them.
    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Calls in flight through one credential this replica allows: its
    /// share of the cap (at least one).
    pub fn share(&self) -> usize {
        (self.cap / self.replicas()).max(1)
    }

    /// A slot for a call through `id`, held until the answer's body has
    /// streamed; `None` when the credential's calls are at the cap.
    pub fn try_take(&self, id: &CredentialId) -> Option<Slot> {
        let share = self.share();
        let mut counts = self.inflight.lock().expect("not poisoned");
        let count = counts.entry(id.clone()).or_insert(0);
        if *count >= share {
            return None;
        }
        *count += 1;
        Some(Slot {
            inflight: Arc::clone(&self.inflight),
            id: id.clone(),
        })
    }

    /// Credentials with a call in flight.
    pub fn credentials_in_flight(&self) -> usize {
        self.inflight.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_takes_up_to_its_cap_and_is_forgotten_when_its_last_call_ends() {
        let slots = GatewaySlots::new(2);
        let (a, b) = (CredentialId::generate(), CredentialId::generate());

        let first = slots.try_take(&a).expect("a slot");
        let second = slots.try_take(&a).expect("a second slot");
        let third = slots.try_take(&a);
        let other = slots.try_take(&b).expect("another credential's own cap");
        let counted = slots.credentials_in_flight();
        drop(first);
        let again = slots.try_take(&a);
        let freed = again.is_some();
        drop((second, again, other));

        assert!(third.is_none(), "at the cap");
        assert!(freed, "a call that ends gives its slot back");
        assert_eq!(counted, 2);
        assert_eq!(
            slots.credentials_in_flight(),
            0,
            "nothing kept once nothing is in flight"
        );
    }

    #[test]
    fn each_replica_allows_its_share_of_the_cap() {
        let slots = GatewaySlots::new(5);
        let a = CredentialId::generate();
        slots.set_replicas(2);

        let held: Vec<_> = std::iter::from_fn(|| slots.try_take(&a)).take(10).collect();
        slots.set_replicas(9);
        let share_of_nine = slots.share();
        slots.set_replicas(0);

        assert_eq!(held.len(), 2, "5 / 2 replicas");
        assert_eq!(share_of_nine, 1, "never less than one");
        assert_eq!(slots.replicas(), 1, "this replica at least");
    }
}

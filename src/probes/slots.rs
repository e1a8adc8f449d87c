//! How many probes run at once: a cap per kind of probe for the whole
//! process and a smaller one per organization.
//!
//! Any role can aim a probe at a server of its choosing, and such a server
//! can hold a probe until its time limit. The global cap bounds what all
//! probes together take (blocking threads, sockets, memory); the cap per
//! organization keeps one tenant's stuck probes from taking every slot, so
//! the other tenants' probes still run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The kinds of probes that share a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// SFTP: each probe holds a blocking thread doing SSH.
    Ssh,
    /// PostgreSQL: a socket and a connection's buffers each.
    Postgres,
    /// LLM and Telegram: HTTP requests through the guarded client.
    Http,
    /// SMTP and IMAP: a socket and a few kilobytes of buffers each.
    Mail,
}

impl Pool {
    /// (at once in the process, at once per organization).
    pub const fn limits(self) -> (usize, usize) {
        match self {
            // A blocking thread each: few, so that a burst of SFTP probes
            // cannot take every core from the API.
            Self::Ssh => (8, 4),
            Self::Postgres => (32, 8),
            Self::Http => (32, 8),
            Self::Mail => (32, 8),
        }
    }
}

/// The slots of one pool.
#[derive(Debug)]
pub(super) struct Slots {
    global: Arc<Semaphore>,
    per_org: usize,
    /// One semaphore per organization that has a probe running or waiting.
    orgs: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Slots {
    pub(super) fn new(pool: Pool) -> Self {
        let (global, per_org) = pool.limits();
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_org,
            orgs: Mutex::default(),
        }
    }

    /// Waits for a slot of `org`, then for a global one: a probe waiting
    /// for its organization's turn holds nothing the others need.
    pub(super) async fn acquire(&self, org: &str, deadline: Instant) -> Slot {
        let mine = {
            let mut orgs = self.orgs.lock().expect("the slot map is never poisoned");
            // An entry only the map holds has no permit out and no waiter
            // (both own a clone): dropping it keeps the map as small as the
            // set of organizations with probes in flight.
            orgs.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
            let semaphore = orgs
                .entry(org.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_org)));
            Arc::clone(semaphore)
        };
        let org_permit = mine.acquire_owned().await.expect("never closed");
        let global_permit = Arc::clone(&self.global).acquire_owned().await.expect("never closed");
        Slot {
            _org: org_permit,
            _global: global_permit,
            deadline,
        }
    }

    /// Slots free right now, for tests and metrics.
    pub(super) fn available(&self) -> usize {
        self.global.available_permits()
    }
}

/// A probe's right to run, held until its work has truly ended (for SFTP,
/// until its blocking thread returns), and the moment its time is up.
#[derive(Debug)]
pub struct Slot {
    _org: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    deadline: Instant,
}

impl Slot {
    /// When the probe's total time limit runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn org_entries(slots: &Slots) -> Vec<String> {
        let mut orgs: Vec<String> = slots.orgs.lock().unwrap().keys().cloned().collect();
        orgs.sort();
        orgs
    }

    #[tokio::test]
    async fn the_map_keeps_only_organizations_with_probes_in_flight() {
        let slots = Slots::new(Pool::Ssh);
        let deadline = Instant::now() + Duration::from_secs(1);

        let first = slots.acquire("org-a", deadline).await;
        drop(first);
        let _second = slots.acquire("org-b", deadline).await;

        assert_eq!(org_entries(&slots), ["org-b"]);
    }

    #[tokio::test]
    async fn an_organization_waits_at_its_own_cap_while_another_proceeds() {
        let slots = Slots::new(Pool::Ssh);
        let deadline = Instant::now() + Duration::from_secs(1);
        let (_, per_org) = Pool::Ssh.limits();
        let mut held = Vec::new();
        for _ in 0..per_org {
            held.push(slots.acquire("org-a", deadline).await);
        }

        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.acquire("org-a", deadline)).await;
        let other = tokio::time::timeout(Duration::from_millis(50), slots.acquire("org-b", deadline)).await;

        assert!(waiting.is_err(), "a fifth slot for org-a");
        assert!(other.is_ok(), "org-b waited for org-a");
    }
}

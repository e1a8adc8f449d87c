//! Reads of the same listing page, or of the same total, that meet in this
//! process: the first one reads; the others wait for it, then look at what
//! it kept (checked as any kept page is) before reading themselves. After a
//! change, 32 requests of 20 pages read 20 pages and count once, not 32
//! times each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as Turn, OwnedMutexGuard};

/// A key's turn, and how many callers hold or await it.
type Entry = (Arc<Turn<()>>, usize);

/// The keys being read (an entry goes with its last caller): as many
/// entries as callers at most.
#[derive(Debug, Default)]
pub(in crate::store) struct Flights(Mutex<HashMap<String, Entry>>);

/// A caller's place at a key, given up when dropped (also when its future
/// is dropped while it waits).
#[derive(Debug)]
struct Place<'a> {
    flights: &'a Flights,
    key: String,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, callers)) = map.get_mut(&self.key) {
            *callers -= 1;
            if *callers == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The read of a key no other caller was reading; the others wait until
/// it is dropped.
#[derive(Debug)]
pub(in crate::store) struct Lead<'a> {
    // Released before the place: a caller that then takes the turn finds
    // the entry still there.
    _turn: OwnedMutexGuard<()>,
    _place: Place<'a>,
}

impl Flights {
    /// `Some` when no other caller is reading `key`: read, and hold it
    /// until what was read is kept. `None` once the read that was running
    /// is over: look at what it kept.
    pub(super) async fn lead_or_wait(&self, key: &str) -> Option<Lead<'_>> {
        let turn = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let (turn, callers) = map.entry(key.to_owned()).or_default();
            *callers += 1;
            turn.clone()
        };
        let place = Place {
            flights: self,
            key: key.to_owned(),
        };
        match turn.clone().try_lock_owned() {
            Ok(turn) => Some(Lead {
                _turn: turn,
                _place: place,
            }),
            Err(_) => {
                drop(turn.lock().await);
                drop(place);
                None
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_caller_of_a_key_reads_the_others_wait_for_it_and_nothing_is_left_behind() {
        let flights = Flights::default();
        let lead = flights.lead_or_wait("a").await.expect("nobody reads a");
        // Another key is not held up.
        assert!(flights.lead_or_wait("b").await.is_some());
        assert_eq!(flights.len(), 1, "b's entry went with its caller");

        let waiting = flights.lead_or_wait("a");
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "a second caller of a waits while a is read"
        );
        drop(lead);
        let after = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("it goes on once the read is over");
        assert!(after.is_none(), "and looks at what was kept");
        assert_eq!(flights.len(), 0);

        // A caller that gives up while waiting leaves nothing behind.
        let lead = flights.lead_or_wait("a").await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), flights.lead_or_wait("a")).await;
        assert!(gave_up.is_err());
        assert_eq!(flights.len(), 1);
        drop(lead);
        assert_eq!(flights.len(), 0);
        assert!(flights.lead_or_wait("a").await.is_some(), "and the next caller reads");
    }
}

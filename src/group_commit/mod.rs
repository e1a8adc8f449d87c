//! Group commit: writes that must each be durable before their request is
//! answered, committed many to a transaction (and, the same way, reads
//! many to a statement). Committing each alone costs a
//! transaction (an fsync) per request, and creates in one organization wait
//! for each other's commit on the counter row they share. Requests hand
//! their write to one writer per kind, which writes whatever has queued up
//! meanwhile in one transaction and answers every waiter when it commits.
//!
//! - Uses ([`UseLog`]): every resolve's audit event is durable before its
//!   secret is returned; a group the store cannot commit fails every
//!   request of it (503): none is ever answered without its event. A group
//!   the database refuses for one use is written again one by one. A use
//!   decided on an earlier read is written only while that read is current
//!   (`store::ReadAt`), and its request is told when it was not.
//! - Gateway calls' outcomes ([`OutcomeLog`]): nobody waits for them, so
//!   each group takes whatever came in 25 ms; a group the store cannot
//!   take waits for it.
//! - Creates ([`CreateLog`]): each create is checked on its own (key
//!   version, the provider's limit) inside the group's transaction; one the
//!   database refuses is written again alone, so it fails alone.
//! - Refreshed tokens ([`RefreshLog`]): each written only over the
//!   secrets its refresh read, under its lease, with its audit event; one
//!   the database refuses is written again alone. A token endpoint that
//!   rotates refresh tokens makes every refresh a write whose loss is not
//!   allowed: a commit per refresh was most of the worker's cost.
//! - Credential reads ([`ReadGroup`]): the access check's read of a
//!   credential and the caller's grant, for every request waiting, in one
//!   statement started after each of them asked (never an older answer
//!   than a read of its own). A read per request cost each its own round
//!   trip, and its connection's release (a second one). Reads that queued
//!   while a group found the store unavailable fail with it (503), and so
//!   do uses. A use of a credential this process has read before needs no
//!   read at all (`context::RecentReads`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{CredentialRead, Found, PendingCreate, PendingRefresh, Store, StoreError, UseRecord};

mod outcomes;
pub use outcomes::Outcomes;

/// Writes (or reads) one group; the outcomes are one per item, in order.
pub trait Writer: Send + Sync + 'static {
    type Item: Send + 'static;
    /// What each item's request gets back.
    type Output: Send + 'static;
    /// Items written in one transaction at most.
    const MAX_BATCH: usize;
    /// When a whole group found the store unavailable, the items that
    /// queued up meanwhile fail with it (and new ones try again), instead of
    /// each waiting through an attempt of its own after it: with one group
    /// at a time, an outage would otherwise answer them only after two
    /// acquire timeouts.
    const SHARES_OUTAGE: bool = true;
    /// How long the writer waits, after a group's first item, for more
    /// (for writes nobody waits for).
    const LINGER: Duration = Duration::ZERO;
    fn write(&self, items: Vec<Self::Item>) -> impl Future<Output = Vec<Result<Self::Output, StoreError>>> + Send;
}

/// Items waiting for the writer at most; more wait to enqueue.
pub const QUEUE: usize = 8192;

type Waiter<O> = oneshot::Sender<Result<O, StoreError>>;
/// An item queued, its waiter, and whether it counts as queued without a
/// waiter (see [`GroupCommit::settled`]).
type Queued<T, O> = (T, Waiter<O>, bool);
/// Where items wait for the writer, each with its waiter.
type Queue<T, O> = mpsc::Sender<Queued<T, O>>;

/// The group commit of one kind of write in one process; cheap to clone.
/// The writer task starts with the first item (inside the runtime).
pub struct GroupCommit<W: Writer> {
    writer: Arc<W>,
    queue: Arc<OnceLock<Queue<W::Item, W::Output>>>,
    /// Items enqueued (nobody waiting for them) and not yet written.
    unwritten: Arc<AtomicUsize>,
}

impl<W: Writer> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            queue: self.queue.clone(),
            unwritten: self.unwritten.clone(),
        }
    }
}

impl<W: Writer> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("started", &self.queue.get().is_some())
            .finish()
    }
}

impl<W: Writer> GroupCommit<W> {
    /// Group commits through `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer: Arc::new(writer),
            queue: Arc::default(),
            unwritten: Arc::default(),
        }
    }

    fn sender(&self) -> &Queue<W::Item, W::Output> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_groups(self.writer.clone(), rx, self.unwritten.clone()));
            tx
        })
    }

    /// Writes `item`; returns once it is committed (with the others of its
    /// group), or with its own outcome's error.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output, StoreError> {
        let stopped = || StoreError::Unavailable(sqlx::Error::WorkerCrashed);
        let (done, committed) = oneshot::channel();
        self.sender().send((item, done, false)).await.map_err(|_| stopped())?;
        committed.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues `item` without waiting for its commit (only, when the queue
    /// is full, for room in it): for writes whose request need not wait.
    /// Dropped before it returns, it has queued nothing.
    pub async fn enqueue(&self, item: W::Item) {
        self.promise().enqueue(item).await;
    }

    /// An item to be [`enqueue`](Self::enqueue)d later, from another task:
    /// counted as unwritten from now on, so that [`settled`](Self::settled)
    /// waits for it; no longer once the promise is dropped unkept.
    pub fn promise(&self) -> Promised<W> {
        self.unwritten.fetch_add(1, Ordering::SeqCst);
        Promised(Some(self.clone()))
    }

    /// Items [`enqueue`](Self::enqueue)d and not yet written (nor failed).
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::SeqCst)
    }

    /// Waits, at most `within`, until every item [`enqueue`](Self::enqueue)d
    /// so far is written (or failed); whether they all were. A stopping
    /// server calls it once its requests are done, so that what they
    /// queued is not lost with the process.
    pub async fn settled(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.unwritten.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// An item promised to a [`GroupCommit`]'s queue (see
/// [`GroupCommit::promise`]).
pub struct Promised<W: Writer>(Option<GroupCommit<W>>);

impl<W: Writer> Promised<W> {
    /// Queues `item` (see [`GroupCommit::enqueue`]), which keeps the promise.
    pub async fn enqueue(mut self, item: W::Item) {
        let Some(log) = self.0.take() else {
            return;
        };
        let (done, _) = oneshot::channel();
        // Counted back down if it never reaches the queue (the writer is
        // gone, or this request was dropped while the queue was full).
        let unsent = Unsent(&log.unwritten);
        if log.sender().send((item, done, true)).await.is_err() {
            tracing::warn!("the writer has stopped; a queued write is lost");
            return;
        }
        std::mem::forget(unsent);
    }
}

impl<W: Writer> Drop for Promised<W> {
    fn drop(&mut self) {
        if let Some(log) = self.0.take() {
            log.unwritten.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Counts an enqueued item back down when it was never sent.
struct Unsent<'a>(&'a AtomicUsize);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer: takes the first item waiting, then everything else already
/// queued (up to `W::MAX_BATCH`), writes them together, answers each.
async fn write_groups<W: Writer>(
    writer: Arc<W>,
    mut queue: mpsc::Receiver<Queued<W::Item, W::Output>>,
    unwritten: Arc<AtomicUsize>,
) {
    let mut group = Vec::with_capacity(W::MAX_BATCH);
    while let Some(first) = queue.recv().await {
        group.push(first);
        if !W::LINGER.is_zero() {
            tokio::time::sleep(W::LINGER).await;
        }
        while group.len() < W::MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let counted = group.iter().filter(|(_, _, counted)| *counted).count();
        let (items, waiters): (Vec<W::Item>, Vec<Waiter<W::Output>>) =
            group.drain(..).map(|(item, waiter, _)| (item, waiter)).unzip();
        let outcomes = writer.write(items).await;
        unwritten.fetch_sub(counted, Ordering::SeqCst);
        let outage = match outcomes.first() {
            Some(Err(e @ StoreError::Unavailable(_)))
                if W::SHARES_OUTAGE && outcomes.iter().all(|o| matches!(o, Err(StoreError::Unavailable(_)))) =>
            {
                Some(e.duplicate())
            }
            _ => None,
        };
        for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
            // A waiter that gave up (its request was dropped) needs no answer.
            let _ = waiter.send(outcome);
        }
        if let Some(e) = outage {
            while let Ok((_, waiter, counted)) = queue.try_recv() {
                let _ = waiter.send(Err(e.duplicate()));
                unwritten.fetch_sub(usize::from(counted), Ordering::SeqCst);
            }
        }
    }
}

/// Resolves' use events: all of a group commit together or not at all.
/// Each request gets its event's id (`None`: its use was decided on a read
/// no longer current, and not written).
#[derive(Debug)]
pub struct Uses(pub Store);

impl Writer for Uses {
    type Item = UseRecord;
    type Output = Option<i64>;
    const MAX_BATCH: usize = 512;
    // A use decided on an earlier read comes here with no read before it:
    // in an outage, the uses queued behind a group that found the store
    // unavailable fail with it (503), not each after an attempt of its own.
    const SHARES_OUTAGE: bool = true;

    async fn write(&self, uses: Vec<UseRecord>) -> Vec<Result<Option<i64>, StoreError>> {
        match self.0.record_uses(&uses).await {
            Ok(ids) => ids.into_iter().map(Ok).collect(),
            // The database refused one of them (an organization deleted
            // meanwhile): each is written again alone, so it fails alone.
            Err(StoreError::Database(e)) if uses.len() > 1 => {
                tracing::warn!(error = %e, uses = uses.len(), "a group of uses was refused; writing them one by one");
                let mut outcomes = Vec::with_capacity(uses.len());
                for one in &uses {
                    let written = self.0.record_uses(std::slice::from_ref(one)).await;
                    outcomes.push(written.map(|ids| ids.first().copied().flatten()));
                }
                outcomes
            }
            Err(e) => {
                tracing::warn!(error = %e, uses = uses.len(), "a group of uses was not recorded");
                uses.iter().map(|_| Err(e.duplicate())).collect()
            }
        }
    }
}

/// Created credentials, each with its own outcome.
#[derive(Debug)]
pub struct Creates(pub Store);

impl Writer for Creates {
    type Item = PendingCreate;
    type Output = ();
    const MAX_BATCH: usize = 64;

    async fn write(&self, creates: Vec<PendingCreate>) -> Vec<Result<(), StoreError>> {
        match self
            .0
            .timed(async { Ok(self.0.insert_credentials(&creates).await) })
            .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => creates.iter().map(|_| Err(e.duplicate())).collect(),
        }
    }
}

/// Refreshed tokens, each with its own outcome (written, or lost to a
/// newer write).
#[derive(Debug)]
pub struct Refreshes(pub Store);

impl Writer for Refreshes {
    type Item = PendingRefresh;
    type Output = bool;
    const MAX_BATCH: usize = 64;

    async fn write(&self, refreshes: Vec<PendingRefresh>) -> Vec<Result<bool, StoreError>> {
        match self
            .0
            .timed(async { Ok(self.0.store_refreshed(&refreshes).await) })
            .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => refreshes.iter().map(|_| Err(e.duplicate())).collect(),
        }
    }
}

/// Credential reads, each with the reader's own grant.
#[derive(Debug)]
pub struct Reads(pub Store);

impl Writer for Reads {
    type Item = CredentialRead;
    type Output = Option<Found>;
    const MAX_BATCH: usize = 64;
    const SHARES_OUTAGE: bool = true;

    async fn write(&self, reads: Vec<CredentialRead>) -> Vec<Result<Self::Output, StoreError>> {
        match self.0.credentials_with_grants(&reads).await {
            Ok(found) => found,
            Err(e) => reads.iter().map(|_| Err(e.duplicate())).collect(),
        }
    }
}

/// Resolves' use events, committed in groups.
pub type UseLog = GroupCommit<Uses>;
/// Gateway calls' outcomes, committed in groups.
pub type OutcomeLog = GroupCommit<Outcomes>;
/// Creates, committed in groups.
pub type CreateLog = GroupCommit<Creates>;
/// Refreshed tokens, committed in groups.
pub type RefreshLog = GroupCommit<Refreshes>;
/// Credential reads, grouped.
pub type ReadGroup = GroupCommit<Reads>;

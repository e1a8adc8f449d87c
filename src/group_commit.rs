//! Group commit: writes that must each be durable before their request is
//! answered, committed many to a transaction. Committing each alone costs a
//! transaction (an fsync) per request, and creates in one organization wait
//! for each other's commit on the counter row they share. Requests hand
//! their write to one writer per kind, which writes whatever has queued up
//! meanwhile in one transaction and answers every waiter when it commits.
//!
//! - Uses ([`UseLog`]): every resolve's audit event is durable before its
//!   secret is returned; a failed commit fails every request of its group
//!   (503): none is ever answered without its event.
//! - Creates ([`CreateLog`]): each create is checked on its own (key
//!   version, the provider's limit) inside the group's transaction; one the
//!   database refuses is written again alone, so it fails alone.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::store::{PendingCreate, Store, StoreError, UseRecord};

/// Writes one group; the outcomes are one per item, in order.
pub trait Writer: Send + Sync + 'static {
    type Item: Send + 'static;
    /// Items written in one transaction at most.
    const MAX_BATCH: usize;
    fn write(&self, items: Vec<Self::Item>) -> impl Future<Output = Vec<Result<(), StoreError>>> + Send;
}

/// Items waiting for the writer at most; more wait to enqueue.
const QUEUE: usize = 8192;

type Waiter = oneshot::Sender<Result<(), StoreError>>;
/// Where items wait for the writer, each with its waiter.
type Queue<T> = mpsc::Sender<(T, Waiter)>;

/// The group commit of one kind of write in one process; cheap to clone.
/// The writer task starts with the first item (inside the runtime).
pub struct GroupCommit<W: Writer> {
    writer: Arc<W>,
    queue: Arc<OnceLock<Queue<W::Item>>>,
}

impl<W: Writer> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            queue: self.queue.clone(),
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
        }
    }

    fn sender(&self) -> &Queue<W::Item> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_groups(self.writer.clone(), rx));
            tx
        })
    }

    /// Writes `item`; returns once it is committed (with the others of its
    /// group), or with its own outcome's error.
    pub async fn submit(&self, item: W::Item) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable(sqlx::Error::WorkerCrashed);
        let (done, committed) = oneshot::channel();
        self.sender().send((item, done)).await.map_err(|_| stopped())?;
        committed.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The writer: takes the first item waiting, then everything else already
/// queued (up to `W::MAX_BATCH`), writes them together, answers each.
async fn write_groups<W: Writer>(writer: Arc<W>, mut queue: mpsc::Receiver<(W::Item, Waiter)>) {
    let mut group = Vec::with_capacity(W::MAX_BATCH);
    while let Some(first) = queue.recv().await {
        group.push(first);
        while group.len() < W::MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (items, waiters): (Vec<W::Item>, Vec<Waiter>) = group.drain(..).unzip();
        let outcomes = writer.write(items).await;
        for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
            // A waiter that gave up (its request was dropped) needs no answer.
            let _ = waiter.send(outcome);
        }
    }
}

/// Resolves' use events: all of a group commit together or not at all.
#[derive(Debug)]
pub struct Uses(pub Store);

impl Writer for Uses {
    type Item = UseRecord;
    const MAX_BATCH: usize = 512;

    async fn write(&self, uses: Vec<UseRecord>) -> Vec<Result<(), StoreError>> {
        match self.0.record_uses(&uses).await {
            Ok(()) => uses.iter().map(|_| Ok(())).collect(),
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
    const MAX_BATCH: usize = 64;

    async fn write(&self, creates: Vec<PendingCreate>) -> Vec<Result<(), StoreError>> {
        self.0.insert_credentials(&creates).await
    }
}

/// Resolves' use events, committed in groups.
pub type UseLog = GroupCommit<Uses>;
/// Creates, committed in groups.
pub type CreateLog = GroupCommit<Creates>;

//! Group commit for uses: every resolve's audit event must be durable before
//! its secret is returned, and committing each alone costs a transaction
//! (an fsync) per request. Resolves hand their use to one writer, which
//! writes whatever has queued up meanwhile in one transaction and answers
//! every waiter of that batch when it commits — or fails them all (503):
//! none is ever answered without its event.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::store::{Store, StoreError, UseRecord};

/// Uses written in one transaction at most.
pub const MAX_BATCH: usize = 512;
/// Uses waiting for the writer at most; more wait to enqueue.
const QUEUE: usize = 8192;

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// The use log of one process; cheap to clone. The writer task starts with
/// the first use (inside the runtime).
#[derive(Debug, Clone)]
pub struct UseLog {
    store: Store,
    queue: Arc<OnceLock<mpsc::Sender<(UseRecord, Waiter)>>>,
}

impl UseLog {
    /// A log writing to `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: Arc::default(),
        }
    }

    fn sender(&self) -> &mpsc::Sender<(UseRecord, Waiter)> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.store.clone(), rx));
            tx
        })
    }

    /// Records `use_`; returns once it is committed (with the others of its
    /// batch). A failed commit is the store's error, as for a lone write.
    pub async fn record(&self, use_: UseRecord) -> Result<(), Error> {
        let (done, committed) = oneshot::channel();
        self.sender()
            .send((use_, done))
            .await
            .map_err(|_| Error::internal(anyhow::anyhow!("the use log's writer stopped")))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(shared_error(&e)),
            Err(_) => Err(Error::internal(anyhow::anyhow!("the use log's writer stopped"))),
        }
    }
}

/// The domain error for one waiter of a failed batch.
fn shared_error(e: &StoreError) -> Error {
    match e {
        StoreError::Unavailable(inner) => Error::StoreUnavailable(StoreError::Unavailable(sqlx::Error::Io(
            std::io::Error::other(inner.to_string()),
        ))),
        other => Error::internal(anyhow::anyhow!("recording uses failed: {other}")),
    }
}

/// The writer: takes the first use waiting, then everything else already
/// queued (up to [`MAX_BATCH`]), commits them together, answers each.
async fn write_batches(store: Store, mut queue: mpsc::Receiver<(UseRecord, Waiter)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (uses, waiters): (Vec<UseRecord>, Vec<Waiter>) = batch.drain(..).unzip();
        let outcome = store.record_uses(&uses).await.map_err(Arc::new);
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, uses = uses.len(), "a batch of uses was not recorded");
        }
        for waiter in waiters {
            // A waiter that gave up (its request was dropped) needs no answer.
            let _ = waiter.send(outcome.clone());
        }
    }
}

//! Creating credentials in groups (the group commit behind
//! `crate::group_commit::CreateLog`): one transaction writes every create of
//! a group that passes its own checks, the organization's current data key
//! and the provider's limit, and refuses the others one by one. A group the
//! database refuses (a statement fails) is written again one create at a
//! time, so only the create at fault fails; one it cannot write at all (it
//! is unavailable) fails every create in it, and none is written.

use super::audit::Usage;
use super::audit::{self, AuditEvent};
use super::credentials::{insert_rows, NewCredential};
use super::idempotency::{self, IdempotencyRecord};
use super::outbox::{self, Notification};
use super::quota::{reserve, reserve_many};
use super::{check_key, current_key, Store, StoreError};

/// A credential to create, with its audit event and notification.
#[derive(Debug, Clone)]
pub struct PendingCreate {
    pub new: NewCredential,
    /// The provider's limit unless the organization has its own.
    pub default_limit: i64,
    pub event: AuditEvent,
    pub notify: Notification,
    /// The `Idempotency-Key` it came with, kept in its transaction.
    pub idempotency: Option<IdempotencyRecord>,
}

impl Store {
    /// Inserts a credential unless the organization's limit for its provider
    /// is reached: its counter row is raised in the statement that checks
    /// the limit, so concurrent creates on any replica count exactly.
    pub async fn insert_credential(&self, create: &PendingCreate) -> Result<(), StoreError> {
        self.timed(async move {
            let PendingCreate {
                new,
                default_limit,
                event,
                notify,
                idempotency,
            } = create;
            let mut tx = self.begin_write().await?;
            check_key(&mut tx, self.dialect, &new.org_id, new.key_version).await?;
            let t = self.now();
            insert_rows(&mut tx, &[new], t).await?;
            if let Some(record) = idempotency {
                idempotency::keep(&mut tx, &new.org_id, &new.id, record, t).await?;
            }
            audit::insert(&mut tx, event, t).await?;
            outbox::insert(&mut tx, notify, t).await?;
            // Counted last: the counter row, which every create of this provider
            // in this organization waits for, is locked only from here to the
            // commit. A refusal rolls back what was written before it.
            reserve(&mut tx, &new.org_id, &new.provider, *default_limit).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Writes `creates`; one outcome each, in order.
    pub async fn insert_credentials(&self, creates: &[PendingCreate]) -> Vec<Result<(), StoreError>> {
        if creates.len() > 1 {
            match self.insert_together(creates).await {
                Ok(outcomes) => return outcomes,
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::warn!(error = %e, creates = creates.len(), "a group of creates was not written");
                    return creates.iter().map(|_| Err(e.duplicate())).collect();
                }
                Err(e) => {
                    tracing::info!(error = %e, creates = creates.len(), "a group of creates failed; writing each alone");
                }
            }
        }
        let mut outcomes = Vec::with_capacity(creates.len());
        for create in creates {
            outcomes.push(self.insert_credential(create).await);
        }
        outcomes
    }

    /// One transaction for the whole group. Locks are taken in one order on
    /// every replica: organizations (share), then counter rows, then the
    /// new rows and, at commit, the listing versions, all by organization
    /// and provider.
    async fn insert_together(&self, creates: &[PendingCreate]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let key = |i: &usize| (&creates[*i].new.org_id, &creates[*i].new.provider);
        let mut order: Vec<usize> = (0..creates.len()).collect();
        // Stable: within an organization and provider, the first come are
        // the first counted.
        order.sort_by(|a, b| key(a).cmp(&key(b)));
        let mut outcomes: Vec<Result<(), StoreError>> = creates.iter().map(|_| Ok(())).collect();
        let mut tx = self.begin_write().await?;
        let t = self.now();
        for org in order.chunk_by(|a, b| creates[*a].new.org_id == creates[*b].new.org_id) {
            let current = current_key(&mut tx, self.dialect, &creates[org[0]].new.org_id).await?;
            for &i in org {
                match current {
                    None => outcomes[i] = Err(StoreError::NotFound),
                    Some(v) if v != creates[i].new.key_version => outcomes[i] = Err(StoreError::KeyRotated),
                    Some(_) => {}
                }
            }
        }
        let admitted: Vec<usize> = order.iter().copied().filter(|i| outcomes[*i].is_ok()).collect();
        for group in admitted.chunk_by(|a, b| key(a) == key(b)) {
            let NewCredential { org_id, provider, .. } = &creates[group[0]].new;
            let wanted = group.len() as i64;
            let (fit, limit, count) =
                reserve_many(&mut tx, org_id, provider, creates[group[0]].default_limit, wanted).await?;
            for &i in &group[fit as usize..] {
                outcomes[i] = Err(StoreError::QuotaExceeded { limit, count });
            }
        }
        let written: Vec<&PendingCreate> = order
            .into_iter()
            .filter(|i| outcomes[*i].is_ok())
            .map(|i| &creates[i])
            .collect();
        let news: Vec<&NewCredential> = written.iter().map(|c| &c.new).collect();
        insert_rows(&mut tx, &news, t).await?;
        let events: Vec<(&AuditEvent, Option<&Usage>)> = written.iter().map(|c| (&c.event, None)).collect();
        audit::insert_many(&mut tx, &events, t).await?;
        let notes: Vec<&Notification> = written.iter().map(|c| &c.notify).collect();
        outbox::insert_many(&mut tx, &notes, t).await?;
        // A key taken meanwhile fails the group, which is then written one
        // create at a time: only the create at fault fails.
        for create in &written {
            if let Some(record) = &create.idempotency {
                idempotency::keep(&mut tx, &create.new.org_id, &create.new.id, record, t).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

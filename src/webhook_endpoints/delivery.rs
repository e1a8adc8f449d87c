//! Sending an endpoint its deliveries: the dispatcher that every serving
//! process runs, and one attempt (signed with the endpoint's secrets,
//! through the egress guard).

use futures::StreamExt;
use secrecy::SecretString;
use url::Url;

use super::{CURRENT, GROUP, PREVIOUS};
use crate::context::Context;
use crate::egress::EgressError;
use crate::error::Error;
use crate::ids::{OrgId, WebhookId};
use crate::metrics::DeliveryLabels;
use crate::store::{Attempt, DeliveryRow, DueDelivery, EndpointRow, StoreError};
use crate::vault::webhook_subject as subject;
use crate::webhooks::{backoff, dispatch, standard_signature, GIVE_UP_AFTER_SECS};

/// A delivery lease: past the HTTP time limit, so a live holder keeps it.
pub(super) const LEASE_SECS: i64 = 60;
/// Deliveries in flight per process (each to a different endpoint).
const CONCURRENCY: usize = 16;

/// Where an endpoint's secrets are sealed.
pub(super) struct Sealed<'a> {
    org_id: &'a OrgId,
    id: &'a WebhookId,
    secret_ct: &'a str,
    key_version: i64,
    previous_until: Option<i64>,
}

impl<'a> Sealed<'a> {
    pub(super) fn of(row: &'a EndpointRow) -> Self {
        Self {
            org_id: &row.org_id,
            id: &row.id,
            secret_ct: &row.secret_ct,
            key_version: row.key_version,
            previous_until: row.previous_until,
        }
    }

    fn of_due(due: &'a DueDelivery) -> Self {
        Self {
            org_id: &due.org_id,
            id: &due.delivery.endpoint_id,
            secret_ct: &due.secret_ct,
            key_version: due.key_version,
            previous_until: due.previous_until,
        }
    }
}

/// The current secret and, while it still signs, the previous one.
pub(super) async fn secrets_of(
    ctx: &Context,
    sealed: Sealed<'_>,
) -> Result<(SecretString, Option<SecretString>), Error> {
    let mut groups = ctx
        .vault
        .open(
            sealed.org_id,
            &subject(sealed.org_id, sealed.id),
            sealed.secret_ct,
            sealed.key_version,
        )
        .await?;
    let mut map = groups.remove(GROUP).unwrap_or_default();
    let current = map
        .0
        .remove(CURRENT)
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("webhook endpoint {} has no sealed secret", sealed.id)))?;
    let previous = map
        .0
        .remove(PREVIOUS)
        .filter(|_| sealed.previous_until.is_some_and(|until| until > ctx.now()));
    Ok((current, previous))
}

/// How an attempt went: its metric label, the endpoint's HTTP status (if
/// it answered) and whether it was taken.
type Sent = (&'static str, Option<i64>, Result<(), String>);

/// Sends one delivery (counted in `credgate_webhook_deliveries_total`): the
/// endpoint's HTTP status, if it answered, and whether it was taken.
pub(super) async fn send(
    ctx: &Context,
    url: &str,
    sealed: Sealed<'_>,
    delivery: &DeliveryRow,
) -> (Option<i64>, Result<(), String>) {
    let (outcome, status, taken) = attempt(ctx, url, sealed, delivery).await;
    ctx.metrics
        .webhook_deliveries
        .get_or_create(&DeliveryLabels { outcome })
        .inc();
    (status, taken)
}

async fn attempt(ctx: &Context, url: &str, sealed: Sealed<'_>, delivery: &DeliveryRow) -> Sent {
    let endpoint = sealed.id.clone();
    let (current, previous) = match secrets_of(ctx, sealed).await {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(webhook = %endpoint, error = %e, "a webhook endpoint's secret could not be opened");
            return (
                "unreadable",
                None,
                Err("the endpoint's secret could not be opened".into()),
            );
        }
    };
    let denied = || {
        (
            "denied",
            None,
            Err("the address is not allowed by credgate's egress policy".to_owned()),
        )
    };
    let Ok(url) = Url::parse(url) else { return denied() };
    if ctx.probes.egress.check_url(&url).is_err() {
        return denied();
    }
    let now = ctx.now();
    let body = delivery.payload.as_bytes();
    let mut signature = standard_signature(&current, &delivery.event_id, now, body);
    if let Some(previous) = &previous {
        signature.push(' ');
        signature.push_str(&standard_signature(previous, &delivery.event_id, now, body));
    }
    let sent = ctx
        .guarded_http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .header("x-credgate-event", &delivery.kind)
        .body(delivery.payload.clone())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => ("delivered", Some(i64::from(r.status().as_u16())), Ok(())),
        Ok(r) => {
            let status = r.status().as_u16();
            tracing::info!(status, webhook = %endpoint, event = %delivery.event_id, "a webhook endpoint refused");
            (
                "refused",
                Some(i64::from(status)),
                Err(format!("the endpoint answered HTTP {status}")),
            )
        }
        Err(e) => {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if s.downcast_ref::<EgressError>()
                    .is_some_and(|e| matches!(e, EgressError::Denied { .. }))
                {
                    return denied();
                }
                source = s.source();
            }
            let timed_out = e.is_timeout();
            tracing::info!(error = %e.without_url(), webhook = %endpoint, "a webhook endpoint was unreachable");
            let why = if timed_out {
                "the endpoint did not answer in time"
            } else {
                "the endpoint could not be reached"
            };
            ("unreachable", None, Err(why.into()))
        }
    }
}

/// One dispatcher step: leases due deliveries (one per endpoint), sends
/// them and records the outcomes; returns how many were attempted.
pub async fn deliver_due(ctx: &Context, owner: &str) -> Result<usize, StoreError> {
    if !ctx.store.deliveries_due().await? {
        return Ok(0);
    }
    let due = ctx.store.claim_deliveries(owner, 64, ctx.now() + LEASE_SECS).await?;
    let attempted = due.len();
    let outcomes: Vec<Result<(), StoreError>> = futures::stream::iter(due)
        .map(|due| async move {
            let (status, outcome) = send(ctx, &due.url, Sealed::of_due(&due), &due.delivery).await;
            let failure = outcome.err().map(|error| {
                let next = ctx.now() + backoff(due.delivery.attempts);
                let give_up = next > due.delivery.created_at + GIVE_UP_AFTER_SECS;
                if give_up {
                    ctx.metrics
                        .webhook_deliveries
                        .get_or_create(&DeliveryLabels { outcome: "given_up" })
                        .inc();
                    tracing::warn!(webhook = %due.delivery.endpoint_id, event = %due.delivery.event_id,
                        "a webhook delivery was given up after 25 hours");
                }
                (error, (!give_up).then_some(next))
            });
            let attempt = Attempt {
                status,
                failure: failure.as_ref().map(|(e, next)| (e.as_str(), *next)),
            };
            ctx.store.record_webhook_attempt(due.delivery.id, owner, attempt).await
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(attempted)
}

/// Delivers until `stop` turns true: right after this process writes a
/// notification, and every half second for retries and other replicas'.
pub async fn run_dispatcher(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("credgate-endpoints-{}", uuid::Uuid::new_v4().simple());
    let wake = ctx.webhooks.endpoints_wake();
    let (ctx, owner) = (&ctx, owner.as_str());
    dispatch(move || deliver_due(ctx, owner), &wake, "webhook endpoint", &mut stop).await;
}

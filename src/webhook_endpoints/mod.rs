//! An organization's own webhook endpoints (admin only): each gets the
//! organization's notifications of the types it names, signed the Standard
//! Webhooks way with its own `whsec_` secret, shown once and sealed under
//! the organization's data key. A rotation keeps the previous secret
//! signing beside the new one for 24 hours.
//!
//! Delivery: a notification becomes one delivery per endpoint in the
//! transaction that writes it (the store's `fan_out`); a dispatcher on
//! every serving process leases an endpoint's oldest pending delivery, sends
//! it through the egress guard and records the outcome, so each endpoint
//! gets its notifications in order and at least once, retried with the
//! operator endpoint's backoff for 25 hours.

mod delivery;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use secrecy::SecretString;
use url::Url;

use crate::context::Context;
use crate::crypto::SecretMap;
use crate::egress::EgressError;
use crate::error::Error;
use crate::ids::WebhookId;
use crate::model::{Principal, Role};
use crate::providers::FieldError;
use crate::store::{Attempt, DeliveryRow, EndpointPut, EndpointRow, StoreError};
use crate::vault::webhook_subject as subject;
pub use delivery::{deliver_due, run_dispatcher};
use delivery::{secrets_of, send, Sealed, LEASE_SECS};

/// Most endpoints one organization may hold.
pub const MAX_ENDPOINTS: i64 = 20;
/// How long the previous secret signs beside a new one.
pub const ROTATION_OVERLAP_SECS: i64 = 24 * 3600;
/// The notification types an endpoint may ask for (`webhook.test` is sent
/// on request only).
pub const EVENT_TYPES: &[&str] = &[
    "credential.created",
    "credential.deleted",
    "credential.refresh_failed",
    "credential.needs_reauth",
    "credential.recovered",
    "credential.expiring",
    "oauth_app.secret_expiring",
];
/// Deliveries shown per endpoint.
pub const DELIVERY_LOG: i64 = 100;

const MAX_URL: usize = 2048;
/// How long resolving a new endpoint's host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DESCRIPTION: usize = 500;
/// The sealed map of an endpoint's secrets: the current one, and after a
/// rotation the previous one.
const GROUP: &str = "webhook";
const CURRENT: &str = "secret";
const PREVIOUS: &str = "previous";

/// What an admin sends to create an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointInput {
    pub url: String,
    /// `None`: every type, those added later included.
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// What an admin changes on an endpoint; `None` leaves a value as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    /// `Some(None)`: every type, those added later included.
    pub events: Option<Option<Vec<String>>>,
    pub description: Option<String>,
}

/// An endpoint as the API shows it: never its secret.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub id: WebhookId,
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: String,
    pub created_at: i64,
    /// While a rotated-out secret still signs: until when.
    pub previous_secret_until: Option<i64>,
}

fn admin(who: &Principal) -> Result<(), Error> {
    if who.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Validation(vec![FieldError::new(field, message)])
}

fn view(row: EndpointRow, now: i64) -> EndpointView {
    let events = (!row.events.is_empty()).then(|| {
        row.events
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    });
    EndpointView {
        id: row.id,
        url: row.url,
        events,
        description: row.description,
        created_at: row.created_at,
        previous_secret_until: row.previous_until.filter(|until| *until > now),
    }
}

/// A new `whsec_` secret: 32 random bytes, base64.
fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    SecretString::from(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// Checks the URL and that it resolves only to addresses the egress guard
/// admits: an organization cannot make credgate call inside its network.
async fn check_url(ctx: &Context, raw: &str) -> Result<Url, Error> {
    if raw.len() > MAX_URL {
        return Err(invalid("url", format!("must be at most {MAX_URL} characters")));
    }
    let url = Url::parse(raw).map_err(|_| invalid("url", "must be an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url", "must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("url", "must not carry a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(invalid("url", "must not have a fragment"));
    }
    let Some(host) = url.host_str() else {
        return Err(invalid("url", "must name a host"));
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, ctx.probes.egress.resolve(host, port)).await;
    match resolved.unwrap_or_else(|_| Err(EgressError::Url("timed out".into()))) {
        Ok(_) => Ok(url),
        Err(EgressError::Denied { host, addr }) => {
            tracing::info!(%host, %addr, "a webhook endpoint's address was refused by the egress policy");
            Err(invalid(
                "url",
                "resolves to an address credgate is not allowed to call (its egress policy)",
            ))
        }
        Err(_) => Err(invalid("url", "the host could not be resolved")),
    }
}

fn check_description(description: String) -> Result<String, Error> {
    if description.chars().count() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
        return Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters, without control characters"),
        ));
    }
    Ok(description)
}

fn check_events(events: Option<Vec<String>>) -> Result<String, Error> {
    let Some(events) = events else { return Ok(String::new()) };
    if events.is_empty() {
        return Err(invalid(
            "events",
            "must name at least one type, or be left out for every type",
        ));
    }
    let mut kept: Vec<&str> = Vec::new();
    for kind in &events {
        let Some(known) = EVENT_TYPES.iter().find(|t| **t == kind.as_str()) else {
            return Err(invalid(
                "events",
                format!("types are among: {}", EVENT_TYPES.join(", ")),
            ));
        };
        if !kept.contains(known) {
            kept.push(known);
        }
    }
    Ok(format!(",{},", kept.join(",")))
}

/// Creates an endpoint (admin); returns it and its secret, shown this once.
pub async fn create(
    ctx: &Context,
    who: &Principal,
    input: EndpointInput,
) -> Result<(EndpointView, SecretString), Error> {
    admin(who)?;
    let description = check_description(input.description.unwrap_or_default())?;
    let events = check_events(input.events)?;
    let url = check_url(ctx, &input.url).await?;
    let org_id = &who.org_id;
    let id = WebhookId::generate();
    let secret = new_secret();
    let mut map = SecretMap::default();
    map.insert(CURRENT, secret.clone());
    let actor = who.actor();
    for attempt in 0..3 {
        let (secret_ct, key_version) = ctx.vault.seal(org_id, &subject(org_id, &id), &[(GROUP, &map)]).await?;
        let put = EndpointPut {
            id: &id,
            url: url.as_str(),
            events: &events,
            description: &description,
            secret_ct: &secret_ct,
            key_version,
            actor: &actor,
            limit: MAX_ENDPOINTS,
        };
        match ctx.store.create_webhook(org_id, &put).await {
            Ok(row) => return Ok((view(row, ctx.now()), secret)),
            Err(StoreError::KeyRotated) if attempt < 2 => continue,
            Err(StoreError::QuotaExceeded { limit, .. }) => {
                return Err(Error::Conflict(
                    "quota_exceeded",
                    format!("the organization already has {limit} webhook endpoints, the most allowed"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::KeyRotated.into())
}

/// The organization's endpoints (admin), oldest first.
pub async fn list(ctx: &Context, who: &Principal) -> Result<Vec<EndpointView>, Error> {
    admin(who)?;
    let now = ctx.now();
    Ok(ctx
        .store
        .webhooks(&who.org_id)
        .await?
        .into_iter()
        .map(|row| view(row, now))
        .collect())
}

/// Deletes an endpoint and its pending deliveries (admin).
pub async fn delete(ctx: &Context, who: &Principal, id: &WebhookId) -> Result<(), Error> {
    admin(who)?;
    if ctx.store.delete_webhook(&who.org_id, id, &who.actor()).await? {
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}

/// Changes an endpoint's URL, types or description (admin), each checked
/// as on create; its secret, and its deliveries still pending (to go to the
/// new URL), stay.
pub async fn update(
    ctx: &Context,
    who: &Principal,
    id: &WebhookId,
    changes: EndpointChanges,
) -> Result<EndpointView, Error> {
    admin(who)?;
    let description = changes.description.map(check_description).transpose()?;
    let events = changes.events.map(check_events).transpose()?;
    let url = match &changes.url {
        Some(raw) => Some(check_url(ctx, raw).await?.to_string()),
        None => None,
    };
    let put = (url.as_deref(), events.as_deref(), description.as_deref());
    if !ctx.store.update_webhook(&who.org_id, id, put, &who.actor()).await? {
        return Err(Error::NotFound);
    }
    Ok(view(endpoint(ctx, who, id).await?, ctx.now()))
}

async fn endpoint(ctx: &Context, who: &Principal, id: &WebhookId) -> Result<EndpointRow, Error> {
    admin(who)?;
    ctx.store.webhook(&who.org_id, id).await?.ok_or(Error::NotFound)
}

/// Gives an endpoint a new secret (admin), shown this once; the one it
/// replaces signs too for 24 hours.
pub async fn rotate(ctx: &Context, who: &Principal, id: &WebhookId) -> Result<(EndpointView, SecretString), Error> {
    let secret = new_secret();
    for _ in 0..3 {
        let row = endpoint(ctx, who, id).await?;
        let (current, _) = secrets_of(ctx, Sealed::of(&row)).await?;
        let mut map = SecretMap::default();
        map.insert(CURRENT, secret.clone());
        map.insert(PREVIOUS, current);
        let (secret_ct, key_version) = ctx
            .vault
            .seal(&row.org_id, &subject(&row.org_id, id), &[(GROUP, &map)])
            .await?;
        let until = ctx.now() + ROTATION_OVERLAP_SECS;
        match ctx
            .store
            .rotate_webhook(
                &row.org_id,
                id,
                (&row.secret_ct, &secret_ct),
                (key_version, until),
                &who.actor(),
            )
            .await
        {
            Ok(true) => {
                let row = endpoint(ctx, who, id).await?;
                return Ok((view(row, ctx.now()), secret));
            }
            // Another rotation or a key rotation came first: read again.
            Ok(false) | Err(StoreError::KeyRotated) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(
        "conflict",
        "the endpoint's secret changed meanwhile; try again".into(),
    ))
}

/// Sends a `webhook.test` notification to the endpoint now (admin) and
/// returns its delivery (delivered or failed; never retried).
pub async fn test(ctx: &Context, who: &Principal, id: &WebhookId) -> Result<DeliveryRow, Error> {
    let row = endpoint(ctx, who, id).await?;
    let event_id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::json!({
        "id": event_id,
        "type": "webhook.test",
        "org_id": row.org_id,
        "webhook_id": row.id,
        "at": chrono::DateTime::from_timestamp(ctx.now(), 0).unwrap_or_default(),
        "detail": {},
    })
    .to_string();
    let owner = format!("credgate-test-{}", uuid::Uuid::new_v4().simple());
    let delivery = ctx
        .store
        .insert_test_delivery(&row, (&event_id, &payload), (&owner, ctx.now() + LEASE_SECS))
        .await?;
    let (status, outcome) = send(ctx, &row.url, Sealed::of(&row), &delivery).await;
    let attempt = Attempt {
        status,
        failure: outcome.as_ref().err().map(|e| (e.as_str(), None)),
    };
    ctx.store.record_webhook_attempt(delivery.id, &owner, attempt).await?;
    ctx.store
        .webhook_delivery(&row.org_id, delivery.id)
        .await?
        .ok_or(Error::NotFound)
}

/// An endpoint's recent deliveries, newest first (admin).
pub async fn deliveries(ctx: &Context, who: &Principal, id: &WebhookId) -> Result<Vec<DeliveryRow>, Error> {
    let row = endpoint(ctx, who, id).await?;
    Ok(ctx.store.webhook_deliveries(&row.org_id, id, DELIVERY_LOG).await?)
}

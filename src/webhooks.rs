//! Outgoing notifications (`CREDGATE_WEBHOOK_URL`) from the outbox: each
//! change writes its notification in its own transaction (see `store`);
//! a dispatcher on every serving process leases due events, POSTs them and
//! records the outcome — at least once, retried with jittered exponential
//! backoff for 25 hours, one holder at a time per event.
//!
//! Each POST carries the Standard Webhooks headers (`webhook-id`, stable
//! across attempts for idempotency; `webhook-timestamp`; `webhook-signature:
//! v1,BASE64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, the key being the
//! base64 after `whsec_` when the secret has that form, else its bytes) and
//! `X-Credgate-Signature: t=TIMESTAMP,v1=HEX(HMAC-SHA256(secret, "{timestamp}.{body}"))`.
//! Bodies never carry a secret.
//!
//! An organization's own endpoints, with their own secrets, are in
//! `webhook_endpoints`, which signs the same way.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::store::{OutboxEvent, Store, StoreError};

/// Give up on an event this long after it was written.
pub const GIVE_UP_AFTER_SECS: i64 = 25 * 3600;
/// Longest pause between two attempts.
const MAX_BACKOFF_SECS: i64 = 3600;
/// A delivery lease: past the HTTP timeout (10 s by default), so a live
/// holder keeps it; short, so a crashed holder's events wait little.
const LEASE_SECS: i64 = 30;
/// Deliveries in flight per process.
const CONCURRENCY: usize = 16;

struct Target {
    url: String,
    secret: SecretString,
    http: reqwest::Client,
}

/// The notification sender; inert when no URL is configured.
#[derive(Clone, Default)]
pub struct Webhooks {
    target: Option<Arc<Target>>,
    wake: Arc<Notify>,
    endpoints_wake: Arc<Notify>,
    owner: Arc<String>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &self.target.as_ref().map(|t| t.url.as_str()))
            .finish_non_exhaustive()
    }
}

/// `t=…,v1=…` for `body` sent at `timestamp` (`X-Credgate-Signature`).
pub fn signature(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v1,…` for the Standard Webhooks `webhook-signature` header.
pub fn standard_signature(secret: &SecretString, id: &str, timestamp: i64, body: &[u8]) -> String {
    let raw = secret.expose_secret();
    let key = raw
        .strip_prefix("whsec_")
        .and_then(|b| STANDARD.decode(b).ok())
        .unwrap_or_else(|| raw.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Seconds before attempt `attempts + 1`: 1 s doubling to an hour, jittered.
pub(crate) fn backoff(attempts: i64) -> i64 {
    let exp = 1i64.saturating_mul(1 << attempts.clamp(0, 20)).min(MAX_BACKOFF_SECS);
    exp + rand::thread_rng().gen_range(0..=exp / 4)
}

impl Webhooks {
    /// A sender to `url` signing with `secret`; inert without a URL.
    pub fn new(url: Option<String>, secret: SecretString, http: reqwest::Client) -> Self {
        Self {
            target: url.map(|url| Arc::new(Target { url, secret, http })),
            wake: Arc::default(),
            endpoints_wake: Arc::default(),
            owner: Arc::new(format!("credgate-webhooks-{}", uuid::Uuid::new_v4().simple())),
        }
    }

    /// Is a URL configured?
    pub fn configured(&self) -> bool {
        self.target.is_some()
    }

    /// Tells this process's dispatchers that new events were written.
    pub fn wake(&self) {
        self.wake.notify_one();
        self.endpoints_wake.notify_one();
    }

    /// What wakes the organizations' endpoints' dispatcher.
    pub(crate) fn endpoints_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.endpoints_wake)
    }

    /// One dispatcher step: leases due events and delivers them; returns
    /// how many were attempted.
    pub async fn deliver_due(&self, store: &Store) -> Result<usize, StoreError> {
        let Some(target) = &self.target else { return Ok(0) };
        let events = store.claim_events(&self.owner, 64, store.now() + LEASE_SECS).await?;
        let attempted = events.len();
        let outcomes: Vec<Result<(), StoreError>> = futures::stream::iter(events)
            .map(|event| async move {
                let outcome = send(target, &event, store.now()).await;
                let next = |error: String| {
                    let next = store.now() + backoff(event.attempts);
                    let give_up = next > event.created_at + GIVE_UP_AFTER_SECS;
                    if give_up {
                        tracing::error!(event = %event.event_id, kind = %event.kind, "webhook given up after 25 hours");
                    }
                    (error, (!give_up).then_some(next))
                };
                match outcome {
                    Ok(()) => store.record_delivery(event.id, &self.owner, Ok(())).await,
                    Err(error) => {
                        let (error, next) = next(error);
                        store.record_delivery(event.id, &self.owner, Err((&error, next))).await
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(attempted)
    }

    /// Delivers until `stop` turns true: right after this process writes an
    /// event, and every half second for retries and other replicas' events.
    pub async fn run_dispatcher(self, store: Store, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.configured() {
            return;
        }
        let (this, store) = (&self, &store);
        dispatch(move || this.deliver_due(store), &self.wake, "webhook", &mut stop).await;
    }
}

/// Runs `step` until `stop` turns true: again at once while it finds work,
/// else when `wake` is notified (this process wrote something) or every
/// half second (retries, and what other replicas wrote).
pub(crate) async fn dispatch<F: std::future::Future<Output = Result<usize, StoreError>>>(
    step: impl Fn() -> F,
    wake: &Notify,
    what: &'static str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let busy = match step().await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %e, what, "a delivery step failed");
                false
            }
        };
        if !busy {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn send(target: &Target, event: &OutboxEvent, now: i64) -> Result<(), String> {
    let body = serde_json::to_vec(&event.payload).expect("a JSON value serializes");
    let standard = standard_signature(&target.secret, &event.event_id, now, &body);
    let credgate = signature(&target.secret, now, &body);
    let sent = target
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .header("webhook-id", &event.event_id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", standard)
        .header("x-credgate-event", &event.kind)
        .header("x-credgate-signature", credgate)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            tracing::warn!(status = r.status().as_u16(), event = %event.event_id, "webhook refused");
            Err(format!("the receiver answered HTTP {}", r.status().as_u16()))
        }
        Err(e) => {
            tracing::warn!(error = %e.without_url(), event = %event.event_id, "webhook unreachable");
            Err("the receiver could not be reached".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let secret = SecretString::from("whsec");
        let a = signature(&secret, 1, b"{}");
        assert!(a.starts_with("t=1,v1="));
        assert_ne!(a, signature(&secret, 2, b"{}"));
        assert_ne!(a, signature(&secret, 1, b"{ }"));
    }

    #[test]
    fn the_standard_signature_matches_the_specification_example() {
        // From the Standard Webhooks specification's reference implementations.
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let sig = standard_signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert!((1..=1).contains(&backoff(0)));
        assert!((8..=10).contains(&backoff(3)));
        assert!((3600..=4500).contains(&backoff(30)));
    }
}

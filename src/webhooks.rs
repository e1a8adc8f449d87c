//! Outgoing notifications (`CREDGATE_WEBHOOK_URL`): credential created,
//! deleted, refresh failed, recovered. Each is a JSON POST signed with
//! HMAC-SHA256 over `"{timestamp}.{body}"` (header
//! `X-Credgate-Signature: t=TIMESTAMP,v1=HEX`), retried with exponential
//! backoff, and never carries a secret.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};

/// Delivery attempts per event.
pub const ATTEMPTS: u32 = 5;

/// A handle to emit events; a no-op when no URL is configured.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Value>>,
}

/// `t=…,v1=…` for `body` sent at `timestamp`.
pub fn signature(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// Starts the delivery task when `url` is set.
    pub fn start(url: Option<String>, secret: SecretString, http: reqwest::Client) -> Self {
        let Some(url) = url else { return Self::default() };
        let (tx, mut rx) = mpsc::channel::<Value>(10_000);
        let limit = Arc::new(Semaphore::new(16));
        let secret = Arc::new(secret);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
                tokio::spawn(async move {
                    deliver(&http, &url, &secret, &event).await;
                    drop(permit);
                });
            }
        });
        Self { tx: Some(tx) }
    }

    /// Queues an event (dropped with a warning if the queue is full).
    pub fn emit(&self, kind: &str, org_id: &str, credential_id: &str, provider: &str, detail: Value) {
        let Some(tx) = &self.tx else { return };
        let event = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": kind,
            "org_id": org_id,
            "credential_id": credential_id,
            "provider": provider,
            "at": chrono::Utc::now(),
            "detail": detail,
        });
        if tx.try_send(event).is_err() {
            tracing::warn!(kind, "webhook queue full; event dropped");
        }
    }
}

async fn deliver(http: &reqwest::Client, url: &str, secret: &SecretString, event: &Value) {
    let body = event.to_string();
    for attempt in 1..=ATTEMPTS {
        let timestamp = chrono::Utc::now().timestamp();
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-credgate-event", event["type"].as_str().unwrap_or(""))
            .header("x-credgate-signature", signature(secret, timestamp, body.as_bytes()))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(status = r.status().as_u16(), attempt, "webhook refused"),
            Err(e) => tracing::warn!(error = %e.without_url(), attempt, "webhook unreachable"),
        }
        if attempt < ATTEMPTS {
            let base = 250u64 << attempt;
            let jitter = rand::thread_rng().gen_range(0..=base / 4);
            tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        }
    }
    tracing::error!(
        kind = event["type"].as_str().unwrap_or(""),
        "webhook not delivered after {ATTEMPTS} attempts"
    );
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
}

//! The gateway's per-credential caps on calls in flight, in this process.

/// Calls in flight through one credential, in this process, at the most.
pub const MAX_CALLS_PER_CREDENTIAL: usize = 32;

/// The per-credential caps of this process's gateway.
#[derive(Debug, Default)]
pub struct GatewaySlots {
    inflight: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl GatewaySlots {
    /// A slot for a call through `id`, held until the answer's body has
    /// streamed; `None` when the credential's calls are at the cap.
    pub fn try_take(&self, id: &crate::ids::CredentialId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut map = self.inflight.lock().expect("not poisoned");
        map.retain(|_, s| s.available_permits() < MAX_CALLS_PER_CREDENTIAL);
        let semaphore = map
            .entry(id.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_PER_CREDENTIAL)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

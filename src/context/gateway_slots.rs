//! The gateway's per-credential caps on calls in flight, in this process.

/// The per-credential caps of this process's gateway.
#[derive(Debug)]
pub struct GatewaySlots {
    /// Calls in flight through one credential at the most.
    cap: usize,
    inflight: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl GatewaySlots {
    /// At most `cap` calls at once through each credential.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inflight: Default::default(),
        }
    }

    /// A slot for a call through `id`, held until the answer's body has
    /// streamed; `None` when the credential's calls are at the cap.
    pub fn try_take(&self, id: &crate::ids::CredentialId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut map = self.inflight.lock().expect("not poisoned");
        // Credentials with no call in flight are forgotten.
        map.retain(|_, s| s.available_permits() < self.cap);
        let semaphore = map
            .entry(id.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(self.cap)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

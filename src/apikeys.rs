//! API keys: random bearer tokens, of which only the SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::Role;
use crate::store::{ApiKeyRow, Store, StoreError};

/// The hash under which an API key token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new API token: `cgk_` + 32 random bytes, url-safe base64.
pub fn new_api_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("cgk_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates a key; returns the token (shown once, never stored).
pub async fn create(
    store: &Store,
    org_id: &str,
    role: Role,
    user_id: Option<&str>,
    label: Option<&str>,
) -> Result<String, StoreError> {
    let token = new_api_token();
    let id = Uuid::new_v4().to_string();
    store
        .insert_api_key(&id, org_id, &token_hash(&token), role, user_id, label)
        .await?;
    Ok(token)
}

/// The key a token belongs to, if any.
pub async fn verify(store: &Store, token: &str) -> Result<Option<ApiKeyRow>, StoreError> {
    store.api_key_by_hash(&token_hash(token)).await
}

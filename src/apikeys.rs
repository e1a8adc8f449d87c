//! API keys: random bearer tokens, of which only the SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::Role;
use crate::store::{Store, StoreError};

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

/// What a new key is for.
#[derive(Debug, Clone, Default)]
pub struct NewKey<'a> {
    pub user_id: Option<&'a str>,
    pub label: Option<&'a str>,
    /// Seconds from now until it stops working.
    pub expires_in: Option<i64>,
}

/// Creates a key; returns the token (shown once, never stored).
pub async fn create(store: &Store, org_id: &str, role: Role, new: NewKey<'_>) -> Result<String, StoreError> {
    let token = new_api_token();
    let id = Uuid::new_v4().to_string();
    let expires_at = new.expires_in.map(|s| store.now() + s);
    store
        .insert_api_key(
            &id,
            org_id,
            &token_hash(&token),
            role,
            new.user_id,
            new.label,
            expires_at,
        )
        .await?;
    Ok(token)
}

/// Parses a duration like `90d`, `12h`, `30m` or `45s` into seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: i64 = text[..text.len() - unit.len_utf8()].parse().ok().filter(|n| *n > 0)?;
    let scale = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("90d"), Some(90 * 86_400));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("30m"), Some(1_800));
        assert_eq!(parse_duration("45s"), Some(45));
        for bad in ["", "d", "0d", "-1h", "12", "1w", "1.5h", "99999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}

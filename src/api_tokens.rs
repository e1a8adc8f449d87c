//! API keys: random bearer tokens, of which only the SHA-256 is stored.
//!
//! A token is `cgk_`, 32 random bytes and a checksum of them (6 bytes of an
//! HMAC-SHA256 under a key made once per installation and kept in the
//! store), all url-safe base64: 55 characters. A token whose checksum does
//! not match was never issued, so it is refused without asking the store,
//! and every token whose checksum matches is looked up, whatever else its
//! address sent (the checksum cannot be forged without the key). Tokens
//! issued before the checksum (`cgk_` and 43 characters) still work.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ids::{OrgId, UserId};
use crate::model::Role;
use crate::store::{Store, StoreError};

/// The hash under which an API key token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

const PREFIX: &str = "cgk_";
/// 32 random bytes in url-safe base64.
const RANDOM_CHARS: usize = 43;
/// 6 checksum bytes in url-safe base64.
const CHECKSUM_CHARS: usize = 8;
/// The install value that holds the checksum key.
const CHECKSUM_KEY: &str = "api_token_checksum_key";

/// What a bearer token's shape says before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Issued by this installation: worth a lookup.
    Checksummed,
    /// Shaped like a token issued before checksums.
    Legacy,
    /// Never issued here.
    Invalid,
}

/// Mints and checks tokens under the installation's checksum key.
/// `Debug` shows no key.
pub struct TokenFormat {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFormat").finish_non_exhaustive()
    }
}

impl TokenFormat {
    /// The installation's format: its key is read from the store, or made
    /// there once (every replica and command then reads the same).
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let stored = store
            .install_value(CHECKSUM_KEY, &URL_SAFE_NO_PAD.encode(fresh))
            .await?;
        let key = URL_SAFE_NO_PAD.decode(&stored).map_err(|_| StoreError::Corrupt {
            id: CHECKSUM_KEY.into(),
            column: "value",
        })?;
        Ok(Self { key })
    }

    fn checksum(&self, random: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(random.as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..6])
    }

    /// A new token.
    pub fn mint(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let random = URL_SAFE_NO_PAD.encode(bytes);
        let checksum = self.checksum(&random);
        format!("{PREFIX}{random}{checksum}")
    }

    /// What `token`'s shape says (the checksum compared in constant time).
    pub fn shape(&self, token: &str) -> Shape {
        let Some(rest) = token.strip_prefix(PREFIX) else {
            return Shape::Invalid;
        };
        if !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Shape::Invalid;
        }
        match rest.len() {
            RANDOM_CHARS => Shape::Legacy,
            n if n == RANDOM_CHARS + CHECKSUM_CHARS => {
                let (random, checksum) = rest.split_at(RANDOM_CHARS);
                let expected = self.checksum(random);
                if subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), checksum.as_bytes()).into() {
                    Shape::Checksummed
                } else {
                    Shape::Invalid
                }
            }
            _ => Shape::Invalid,
        }
    }
}

/// The hashes of live keys issued before checksums: a legacy-shaped token
/// is worth a lookup only when its hash is one of them. No such key is made
/// any more, so the set is read once, at start, and only shrinks.
pub async fn legacy_hashes(store: &Store) -> Result<HashSet<String>, StoreError> {
    Ok(store.legacy_api_key_hashes().await?.into_iter().collect())
}

/// What a new key is for.
#[derive(Debug, Clone, Default)]
pub struct NewKey<'a> {
    pub user_id: Option<&'a UserId>,
    pub label: Option<&'a str>,
    /// Seconds from now until it stops working.
    pub expires_in: Option<i64>,
}

/// Creates a key; returns the token (shown once, never stored).
pub async fn create(store: &Store, org_id: &OrgId, role: Role, new: NewKey<'_>) -> Result<String, StoreError> {
    let token = TokenFormat::load(store).await?.mint();
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
    fn a_minted_token_checks_and_any_change_to_it_does_not() {
        let format = TokenFormat { key: vec![7; 32] };
        let other = TokenFormat { key: vec![8; 32] };
        let token = format.mint();
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();

        assert_eq!(token.len(), 55);
        assert_eq!(format.shape(&token), Shape::Checksummed);
        assert_eq!(format.shape(&flipped), Shape::Invalid);
        assert_eq!(other.shape(&token), Shape::Invalid, "another installation's key");
        assert_eq!(format.shape(&token[..47]), Shape::Legacy);
        assert_eq!(format.shape(&format!("{}!", &token[..46])), Shape::Invalid);
        assert_eq!(format.shape("cgk_guess1"), Shape::Invalid);
        assert_eq!(format.shape(&token.replacen("cgk_", "cgx_", 1)), Shape::Invalid);
        assert!(!format!("{format:?}").contains("7, 7"));
    }

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

//! Sealing secret maps under a data key, bound to organization and subject.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::DataKey;

/// Named secret values (field name → value). `Debug` prints names only.
#[derive(Default, Clone)]
pub struct SecretMap(pub BTreeMap<String, SecretString>);

impl std::fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretMap {
    /// The value of one secret, if set.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// Sets one secret.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        self.0.insert(name.into(), value);
    }

    /// The names that are set, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// Why a sealed payload could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Wrong key, tampered token, or not a Fernet token at all.
    #[error("the sealed secret does not decrypt under its organization's data key")]
    Undecryptable,
    /// The token decrypted but belongs to another row or organization.
    #[error("the sealed secret belongs to another record")]
    WrongBinding,
}

/// Encrypts `groups` (e.g. `fields`, `tokens`) for one organization and subject.
pub fn seal(key: &DataKey, org: &str, subject: &str, groups: &[(&str, &SecretMap)]) -> String {
    let mut data = Map::new();
    for (name, map) in groups {
        let inner: Map<String, Value> = map
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned())))
            .collect();
        data.insert((*name).to_owned(), Value::Object(inner));
    }
    let doc = json!({"v": 1, "org": org, "sub": subject, "data": data});
    let plaintext = Zeroizing::new(serde_json::to_vec(&doc).expect("JSON values serialize"));
    key.encrypt(&plaintext)
}

/// Decrypts a token made by [`seal`], checking its binding, into its groups.
pub fn open(key: &DataKey, org: &str, subject: &str, token: &str) -> Result<BTreeMap<String, SecretMap>, SealError> {
    let plaintext = Zeroizing::new(key.decrypt(token).ok_or(SealError::Undecryptable)?);
    let doc: Value = serde_json::from_slice(&plaintext).map_err(|_| SealError::Undecryptable)?;
    if doc["org"].as_str() != Some(org) || doc["sub"].as_str() != Some(subject) {
        return Err(SealError::WrongBinding);
    }
    let mut groups = BTreeMap::new();
    if let Some(data) = doc["data"].as_object() {
        for (group, values) in data {
            let mut map = SecretMap::default();
            for (k, v) in values.as_object().into_iter().flatten() {
                if let Some(s) = v.as_str() {
                    map.insert(k.clone(), SecretString::from(s.to_owned()));
                }
            }
            groups.insert(group.clone(), map);
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKeyring;

    fn key() -> DataKey {
        let ring = MasterKeyring::parse(&MasterKeyring::generate_key()).unwrap();
        ring.new_data_key().0
    }

    fn sample() -> SecretMap {
        let mut m = SecretMap::default();
        m.insert("password", SecretString::from("s3ntinel-pw"));
        m
    }

    #[test]
    fn sealed_secrets_round_trip_and_differ_each_time() {
        let key = key();
        let a = seal(&key, "org1", "cred1", &[("fields", &sample())]);
        let b = seal(&key, "org1", "cred1", &[("fields", &sample())]);
        assert_ne!(a, b);
        assert!(!a.contains("s3ntinel-pw"));
        let opened = open(&key, "org1", "cred1", &a).unwrap();
        assert_eq!(opened["fields"].get("password").unwrap().expose_secret(), "s3ntinel-pw");
    }

    #[test]
    fn a_token_opened_for_another_row_or_organization_is_refused() {
        let key = key();
        let token = seal(&key, "org1", "cred1", &[("fields", &sample())]);
        assert!(matches!(
            open(&key, "org1", "cred2", &token),
            Err(SealError::WrongBinding)
        ));
        assert!(matches!(
            open(&key, "org2", "cred1", &token),
            Err(SealError::WrongBinding)
        ));
    }

    #[test]
    fn a_tampered_token_or_another_key_is_refused() {
        let key = key();
        let token = seal(&key, "org1", "cred1", &[("fields", &sample())]);
        let mut bytes = token.into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            open(&key, "org1", "cred1", &tampered),
            Err(SealError::Undecryptable)
        ));
        let other = seal(&key, "org1", "cred1", &[("fields", &sample())]);
        assert!(open(&self::key(), "org1", "cred1", &other).is_err());
    }

    #[test]
    fn secret_map_debug_shows_names_only() {
        let printed = format!("{:?}", sample());
        assert!(printed.contains("password"));
        assert!(!printed.contains("s3ntinel-pw"));
    }
}

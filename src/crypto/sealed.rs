//! Sealing secret maps under a data key, bound to organization and subject.

use std::borrow::Cow;
use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map};
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
        let inner: Map<String, serde_json::Value> = map
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose_secret().to_owned())))
            .collect();
        data.insert((*name).to_owned(), serde_json::Value::Object(inner));
    }
    let doc = json!({"v": 1, "org": org, "sub": subject, "data": data});
    let plaintext = Zeroizing::new(serde_json::to_vec(&doc).expect("JSON values serialize"));
    key.encrypt(&plaintext)
}

/// A document as [`seal`] writes it. Its values go straight into
/// [`SecretString`]s, none through an intermediate JSON tree that would be
/// dropped without being wiped.
#[derive(Deserialize)]
struct Opened<'a> {
    #[serde(borrow)]
    org: Cow<'a, str>,
    #[serde(borrow)]
    sub: Cow<'a, str>,
    #[serde(default)]
    data: BTreeMap<String, Group>,
}

/// One group's values.
struct Group(SecretMap);

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Values;
        impl<'de> Visitor<'de> for Values {
            type Value = Group;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of secret values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Group, A::Error> {
                let mut group = SecretMap::default();
                while let Some((name, Secret(value))) = map.next_entry::<String, Secret>()? {
                    group.insert(name, value);
                }
                Ok(Group(group))
            }
        }
        deserializer.deserialize_map(Values)
    }
}

/// One secret value.
struct Secret(SecretString);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a secret value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                // Exactly as long as it is: boxed without a copy left behind.
                Ok(Secret(SecretString::from(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                // Unescaped into a buffer of its own, wiped once copied.
                self.visit_str(&Zeroizing::new(v))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Decrypts a token made by [`seal`], checking its binding, into its groups.
pub fn open(key: &DataKey, org: &str, subject: &str, token: &str) -> Result<BTreeMap<String, SecretMap>, SealError> {
    let plaintext = Zeroizing::new(key.decrypt(token).ok_or(SealError::Undecryptable)?);
    let doc: Opened = serde_json::from_slice(&plaintext).map_err(|_| SealError::Undecryptable)?;
    if doc.org != org || doc.sub != subject {
        return Err(SealError::WrongBinding);
    }
    Ok(doc
        .data
        .into_iter()
        .map(|(name, Group(values))| (name, values))
        .collect())
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
    fn values_with_escapes_open_as_they_were_sealed_and_odd_documents_do_not_open() {
        let key = key();
        let mut odd = SecretMap::default();
        odd.insert("pw", SecretString::from("q\"uote\\back\nline é ✓ \u{1}"));
        odd.insert("empty", SecretString::from(""));
        let token = seal(&key, "org1", "cred1", &[("fields", &odd), ("tokens", &sample())]);
        let opened = open(&key, "org1", "cred1", &token).unwrap();
        assert_eq!(
            opened["fields"].get("pw").unwrap().expose_secret(),
            "q\"uote\\back\nline é ✓ \u{1}"
        );
        assert_eq!(opened["fields"].get("empty").unwrap().expose_secret(), "");
        assert_eq!(opened["tokens"].get("password").unwrap().expose_secret(), "s3ntinel-pw");
        // A later version's extra member is passed over; a value that is
        // not text, or no binding, is not a sealed document.
        let doc = |text: &str| key.encrypt(text.as_bytes());
        let later = doc(r#"{"v":2,"org":"o","sub":"s","more":[1],"data":{"fields":{"a":"b"}}}"#);
        assert_eq!(
            open(&key, "o", "s", &later).unwrap()["fields"]
                .get("a")
                .unwrap()
                .expose_secret(),
            "b"
        );
        let number = doc(r#"{"v":1,"org":"o","sub":"s","data":{"fields":{"a":1}}}"#);
        assert!(matches!(open(&key, "o", "s", &number), Err(SealError::Undecryptable)));
        let unbound = doc(r#"{"v":1,"data":{}}"#);
        assert!(matches!(open(&key, "o", "s", &unbound), Err(SealError::Undecryptable)));
    }

    #[test]
    fn secret_map_debug_shows_names_only() {
        let printed = format!("{:?}", sample());
        assert!(printed.contains("password"));
        assert!(!printed.contains("s3ntinel-pw"));
    }
}

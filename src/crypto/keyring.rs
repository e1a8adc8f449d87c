//! The master keyring and the per-organization data keys it wraps.

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use fernet::Fernet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `CREDGATE_MASTER_KEYS` was empty.
    #[error("CREDGATE_MASTER_KEYS holds no key")]
    NoMasterKey,
    /// One entry of the list is not a Fernet key.
    #[error("CREDGATE_MASTER_KEYS entry {position} is not a url-safe base64 encoded 32-byte key")]
    MalformedMasterKey {
        /// 1-based position in the list.
        position: usize,
    },
    /// No master key in the ring decrypts a wrapped data key.
    #[error(
        "no key in CREDGATE_MASTER_KEYS decrypts the data key (it was wrapped by master key {kid}); \
         the master keys are wrong or the key that wrapped it was removed too early"
    )]
    WrongMasterKey {
        /// Id of the master key that wrapped the data key.
        kid: String,
    },
}

struct MasterKey {
    kid: String,
    fernet: Fernet,
}

/// The master keys: the first encrypts, every one decrypts.
pub struct MasterKeyring {
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for MasterKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("MasterKeyring").field("kids", &kids).finish()
    }
}

/// A data key wrapped by a master key, as stored.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// `Fernet_master(data key)`.
    pub token: String,
    /// Id of the master key that wrapped it.
    pub kid: String,
}

/// One organization's data key, unwrapped. Never printed, never serialized.
pub struct DataKey {
    fernet: Fernet,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

impl DataKey {
    pub(super) fn encrypt(&self, plaintext: &[u8]) -> String {
        self.fernet.encrypt(plaintext)
    }

    pub(super) fn decrypt(&self, token: &str) -> Option<Vec<u8>> {
        self.fernet.decrypt(token).ok()
    }
}

fn kid_of(key: &str) -> Option<String> {
    let bytes = URL_SAFE.decode(key.trim()).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    Some(hex::encode(&Sha256::digest(&bytes)[..8]))
}

impl MasterKeyring {
    /// Parses the comma-separated `CREDGATE_MASTER_KEYS` value.
    pub fn parse(list: &SecretString) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for (i, raw) in list.expose_secret().split(',').enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let malformed = KeyError::MalformedMasterKey { position: i + 1 };
            let kid = kid_of(raw).ok_or(KeyError::MalformedMasterKey { position: i + 1 })?;
            let fernet = Fernet::new(raw).ok_or(malformed)?;
            keys.push(MasterKey { kid, fernet });
        }
        if keys.is_empty() {
            return Err(KeyError::NoMasterKey);
        }
        Ok(Self { keys })
    }

    /// A fresh random master key in the `CREDGATE_MASTER_KEYS` format.
    pub fn generate_key() -> SecretString {
        SecretString::from(Fernet::generate_key())
    }

    /// Is the master key with id `kid` in this keyring?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Id of the key that encrypts.
    pub fn primary_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Every key's id, the primary first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The id of one key in the `CREDGATE_MASTER_KEYS` format (as
    /// [`MasterKeyring::generate_key`] makes), `None` when it is not one.
    pub fn kid(key: &SecretString) -> Option<String> {
        kid_of(key.expose_secret())
    }

    /// Creates a new random data key, returned both usable and wrapped.
    pub fn new_data_key(&self) -> (DataKey, WrappedKey) {
        let raw = zeroize::Zeroizing::new(Fernet::generate_key());
        let fernet = Fernet::new(&raw).expect("generated Fernet keys are valid");
        let primary = &self.keys[0];
        let wrapped = WrappedKey {
            token: primary.fernet.encrypt(raw.as_bytes()),
            kid: primary.kid.clone(),
        };
        (DataKey { fernet }, wrapped)
    }

    /// Unwraps a stored data key, trying the key named by `kid` first.
    pub fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        let wrong = || KeyError::WrongMasterKey {
            kid: wrapped.kid.clone(),
        };
        let ordered = self
            .keys
            .iter()
            .filter(|k| k.kid == wrapped.kid)
            .chain(self.keys.iter().filter(|k| k.kid != wrapped.kid));
        for key in ordered {
            if let Ok(raw) = key.fernet.decrypt(&wrapped.token) {
                let raw = zeroize::Zeroizing::new(raw);
                let text = std::str::from_utf8(&raw).map_err(|_| wrong())?;
                let fernet = Fernet::new(text).ok_or_else(wrong)?;
                return Ok(DataKey { fernet });
            }
        }
        Err(wrong())
    }

    /// Re-wraps a data key under the primary master key.
    pub fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, KeyError> {
        for key in &self.keys {
            if let Ok(raw) = key.fernet.decrypt(&wrapped.token) {
                let raw = zeroize::Zeroizing::new(raw);
                let primary = &self.keys[0];
                return Ok(WrappedKey {
                    token: primary.fernet.encrypt(&raw),
                    kid: primary.kid.clone(),
                });
            }
        }
        Err(KeyError::WrongMasterKey {
            kid: wrapped.kid.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[&SecretString]) -> MasterKeyring {
        let list: Vec<&str> = keys.iter().map(|k| k.expose_secret()).collect();
        MasterKeyring::parse(&SecretString::from(list.join(","))).unwrap()
    }

    #[test]
    fn a_data_key_wrapped_by_an_old_master_key_unwraps_after_rotation() {
        let old = MasterKeyring::generate_key();
        let new = MasterKeyring::generate_key();
        let (_, wrapped) = ring(&[&old]).new_data_key();

        let rotated = ring(&[&new, &old]);
        let rewrapped = rotated.rewrap(&wrapped).unwrap();

        assert_eq!(rewrapped.kid, rotated.primary_kid());
        assert!(ring(&[&new]).unwrap(&rewrapped).is_ok());
        assert!(matches!(
            ring(&[&new]).unwrap(&wrapped),
            Err(KeyError::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn malformed_master_keys_are_refused_with_their_position() {
        let good = MasterKeyring::generate_key();
        let list = SecretString::from(format!("{},not-a-key", good.expose_secret()));
        let err = MasterKeyring::parse(&list).unwrap_err();
        assert!(matches!(err, KeyError::MalformedMasterKey { position: 2 }));
        assert!(!err.to_string().contains(good.expose_secret()));
        assert!(matches!(
            MasterKeyring::parse(&SecretString::from(" , ")),
            Err(KeyError::NoMasterKey)
        ));
    }

    #[test]
    fn debug_output_of_keys_never_contains_key_material() {
        let key = MasterKeyring::generate_key();
        let ring = ring(&[&key]);
        let (data_key, _) = ring.new_data_key();
        let printed = format!("{ring:?} {data_key:?}");
        assert!(!printed.contains(key.expose_secret()));
        assert!(printed.contains("REDACTED"));
    }
}

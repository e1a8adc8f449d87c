//! Envelope encryption: a master keyring wraps one Fernet data key per
//! organization, and each data key seals that organization's secrets.
//!
//! Formats (all text, safe to store in a TEXT column):
//!
//! * **master key** – a Fernet key: 32 random bytes, url-safe base64
//!   (`CREDGATE_MASTER_KEYS`, comma separated; the first one encrypts). Its
//!   *kid* is the first 8 bytes of `SHA-256(key bytes)` in hex; it is stored
//!   beside each wrapped data key so rotation knows what to re-wrap.
//! * **wrapped data key** – `Fernet_master(data key in base64)`.
//! * **sealed payload** – `Fernet_data(JSON)` where the JSON is
//!   `{"v":1,"org":ORG_ID,"sub":SUBJECT,"data":{…}}`. `SUBJECT` is the
//!   credential id (or `state:HASH` for an OAuth state, `secret:ORG_ID:NAME`
//!   for a named secret). [`open`] refuses a token whose `org` or `sub`
//!   differs from the row it was read from, so a ciphertext copied to
//!   another row or organization never decrypts.

mod keyring;
mod sealed;

pub use keyring::{DataKey, KeyError, MasterKeyring, WrappedKey};
pub use sealed::{open, seal, SealError, SecretMap};

//! The one sealed payload of a credential: its secret fields and, for OAuth,
//! its tokens. One way to seal it, one way to open it.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::crypto::SecretMap;
use crate::ids::{CredentialId, OrgId};
use crate::store::CredentialRow;
use crate::vault::{Vault, VaultError};

const FIELDS: &str = "fields";
const TOKENS: &str = "tokens";
const ACCESS_TOKEN: &str = "access_token";
const REFRESH_TOKEN: &str = "refresh_token";

/// OAuth tokens. `Debug` prints no token.
#[derive(Clone)]
pub struct OAuthTokens {
    pub access_token: SecretString,
    /// Absent when the provider never sent one.
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("refresh_token_set", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// What a credential keeps sealed. `Debug` prints names only.
#[derive(Debug, Clone, Default)]
pub struct CredentialSecrets {
    /// Secret field values by name.
    pub fields: SecretMap,
    /// OAuth credentials only.
    pub tokens: Option<OAuthTokens>,
}

impl CredentialSecrets {
    /// Seals for credential `id` of `org_id` under the organization's current
    /// data key; returns the ciphertext and the key version.
    pub async fn seal(&self, vault: &Vault, org_id: &OrgId, id: &CredentialId) -> Result<(String, i64), VaultError> {
        let mut tokens = SecretMap::default();
        if let Some(t) = &self.tokens {
            tokens.insert(ACCESS_TOKEN, t.access_token.clone());
            if let Some(rt) = &t.refresh_token {
                tokens.insert(REFRESH_TOKEN, rt.clone());
            }
        }
        let mut groups: Vec<(&str, &SecretMap)> = vec![(FIELDS, &self.fields)];
        if self.tokens.is_some() {
            groups.push((TOKENS, &tokens));
        }
        vault.seal(org_id, id, &groups).await
    }

    /// Opens a stored row's payload.
    pub async fn open(vault: &Vault, row: &CredentialRow) -> Result<Self, VaultError> {
        let mut groups = vault
            .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
            .await?;
        let fields = groups.remove(FIELDS).unwrap_or_default();
        let tokens = groups.remove(TOKENS).and_then(|t| {
            Some(OAuthTokens {
                access_token: t.get(ACCESS_TOKEN)?.clone(),
                refresh_token: t.get(REFRESH_TOKEN).cloned(),
            })
        });
        Ok(Self { fields, tokens })
    }

    /// The row's public fields with these secret fields decrypted into them
    /// (for resolve and probes only).
    pub fn merged_fields(&self, row: &CredentialRow) -> Map<String, Value> {
        let mut fields = row.fields.clone();
        for (name, value) in &self.fields.0 {
            fields.insert(name.clone(), Value::String(value.expose_secret().to_owned()));
        }
        fields
    }
}

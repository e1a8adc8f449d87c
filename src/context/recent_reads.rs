//! This process's last read of each credential for a use (with the
//! reader's own grant), so that the next use of it needs no read: the use's
//! own write checks that the read is still current (`store::ReadAt`), and
//! a use whose read is not is decided again on a read of its own. Nothing
//! here is trusted alone, and no secret is kept here decrypted: a row holds
//! its values sealed, as the store does. Bounded: a full map forgets one
//! read (whichever its hashing puts first) for each new one.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::ids::{CredentialId, OrgId, UserId};
use crate::store::{CredentialRead, Found};

/// Credentials remembered at the most.
const MAX: usize = 4096;

type Key = (OrgId, CredentialId, Option<UserId>);

/// The last read of each credential, by reader.
#[derive(Debug, Default)]
pub struct RecentReads {
    reads: RwLock<HashMap<Key, Found>>,
}

fn key(read: &CredentialRead) -> Key {
    (read.org_id.clone(), read.id.clone(), read.user.clone())
}

impl RecentReads {
    /// The last read of `read`'s credential for its reader.
    pub fn get(&self, read: &CredentialRead) -> Option<Found> {
        let reads = self.reads.read().expect("not poisoned");
        reads.get(&key(read)).cloned()
    }

    /// Remembers what `read` found.
    pub fn remember(&self, read: &CredentialRead, found: Found) {
        let mut reads = self.reads.write().expect("not poisoned");
        let key = key(read);
        if reads.len() >= MAX && !reads.contains_key(&key) {
            if let Some(any) = reads.keys().next().cloned() {
                reads.remove(&any);
            }
        }
        reads.insert(key, found);
    }

    /// Forgets `read`'s credential for its reader.
    pub fn forget(&self, read: &CredentialRead) {
        let mut reads = self.reads.write().expect("not poisoned");
        reads.remove(&key(read));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(read: &CredentialRead) -> crate::store::CredentialRow {
        crate::store::CredentialRow {
            id: read.id.clone(),
            org_id: read.org_id.clone(),
            name: crate::ids::CredentialName::parse("a").unwrap(),
            provider: "http".into(),
            auth_type: crate::model::AuthKind::ApiKey,
            status: crate::model::CredentialStatus::Active,
            fields: Default::default(),
            secret_names: Vec::new(),
            secret_ct: String::new(),
            key_version: 1,
            secret_version: 1,
            account_id: None,
            account_email: None,
            account_name: None,
            scopes: None,
            expires_at: None,
            last_refreshed_at: None,
            last_used_at: None,
            last_tested_at: None,
            last_error: None,
            created_by: "test".into(),
            created_at: 0,
            updated_at: 0,
            refresh_failures: 0,
            refresh_after: None,
            owner: None,
            team_access: None,
            oauth_app: None,
            refresh_expires_at: None,
            secret_expires_at: None,
        }
    }

    fn read(n: usize) -> CredentialRead {
        CredentialRead {
            org_id: OrgId::generate(),
            id: CredentialId::generate(),
            user: (n % 2 == 0).then(|| UserId::parse(&format!("u-{n}")).unwrap()),
        }
    }

    #[test]
    fn a_full_map_forgets_one_read_for_each_new_one() {
        let recent = RecentReads::default();
        let reads: Vec<CredentialRead> = (0..MAX + 10).map(read).collect();
        let found = |n: usize| Found {
            row: row(&reads[n]),
            grant: None,
            row_version: n as i64,
        };

        for (n, read) in reads.iter().enumerate() {
            recent.remember(read, found(n));
        }
        recent.remember(&reads[MAX + 9], found(MAX + 9));

        let held = recent.reads.read().unwrap().len();
        assert_eq!(held, MAX);
        assert_eq!(
            recent.get(&reads[MAX + 9]).map(|f| f.row_version),
            Some((MAX + 9) as i64)
        );
        recent.forget(&reads[MAX + 9]);
        assert!(recent.get(&reads[MAX + 9]).is_none());
    }
}

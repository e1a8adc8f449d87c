//! This process's last read of each credential for a use (with the
//! reader's own grant), so that the next use of it needs no read: the use's
//! own write checks that the read is still current (`store::ReadAt`), and
//! a use whose read is not is decided again on a read of its own. Nothing
//! here is trusted alone, and no secret is kept here decrypted: a row holds
//! its values sealed, as the store does. Bounded: a full map starts again.

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
        if reads.len() >= MAX {
            reads.clear();
        }
        reads.insert(key(read), found);
    }

    /// Forgets `read`'s credential for its reader.
    pub fn forget(&self, read: &CredentialRead) {
        let mut reads = self.reads.write().expect("not poisoned");
        reads.remove(&key(read));
    }
}

//! The connect flow: `authorize` keeps a sealed, single-use `state` with the
//! PKCE verifier in the store; the callback takes it back (on any replica),
//! exchanges the code, asks who the account is, and stores the credential.

mod authorize;
mod callback;

pub use authorize::{authorize, start, AuthorizeInput, StartRequest, Started};
pub use callback::{finish, with_resource, CallbackQuery, Finished};

use sha2::{Digest, Sha256};

use crate::context::Context;

fn hash_state(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// `{public_url}/integrations/{provider}/callback`: one path per provider,
/// so a response can only land where its provider was asked (mix-up defence).
pub fn redirect_uri(ctx: &Context, provider: &str) -> String {
    format!("{}/integrations/{provider}/callback", ctx.config.public_url)
}

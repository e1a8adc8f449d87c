//! What every probe runs with: the egress policy, time limits, provider base
//! URLs, the guarded HTTP client and the slots that bound how many probes
//! run at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::slots::{Pool, Slot, Slots};
use crate::egress::{EgressError, EgressPolicy};

/// Time limits for probes. Each stage (connect, handshake, authentication,
/// first response) gets `stage`; the whole probe gets `total`, waiting for a
/// slot included, and nothing a probe started outlives it by more than the
/// moment it takes to close a socket.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTimeouts {
    /// Resolving and opening the TCP connection.
    pub connect: Duration,
    /// Each later stage: handshake, authentication, first response.
    pub stage: Duration,
    /// The whole probe.
    pub total: Duration,
}

impl Default for ProbeTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            stage: Duration::from_secs(10),
            total: Duration::from_secs(25),
        }
    }
}

/// Default API base URLs of the hosted providers; each can be overridden by
/// the provider definition's `api_base_url`.
#[derive(Debug, Clone)]
pub struct ApiBaseUrls {
    /// OpenAI, without `/v1`.
    pub openai: String,
    /// Anthropic, without `/v1`.
    pub anthropic: String,
    /// The Telegram Bot API.
    pub telegram: String,
}

impl Default for ApiBaseUrls {
    fn default() -> Self {
        Self {
            openai: "https://api.openai.com".into(),
            anthropic: "https://api.anthropic.com".into(),
            telegram: "https://api.telegram.org".into(),
        }
    }
}

/// What every probe needs: the egress policy, time limits, base URLs, an
/// HTTP client built on that policy, and the slots of each [`Pool`].
#[derive(Debug, Clone)]
pub struct ProbeContext {
    /// Decides which addresses may be reached.
    pub egress: Arc<EgressPolicy>,
    /// Stage and total time limits.
    pub timeouts: ProbeTimeouts,
    /// Provider API base URLs.
    pub base_urls: ApiBaseUrls,
    http: reqwest::Client,
    slots: Arc<[Slots; 4]>,
}

impl ProbeContext {
    /// Builds the context and its guarded HTTP client.
    pub fn new(
        egress: Arc<EgressPolicy>,
        timeouts: ProbeTimeouts,
        base_urls: ApiBaseUrls,
    ) -> Result<Self, EgressError> {
        let http = egress.http_client(timeouts.connect, timeouts.stage)?;
        Ok(Self {
            egress,
            timeouts,
            base_urls,
            http,
            slots: Arc::new([Pool::Ssh, Pool::Postgres, Pool::Http, Pool::Mail].map(Slots::new)),
        })
    }

    /// SSH sessions (blocking threads doing key exchange) at once in the
    /// process; more probes wait for a slot within their time limit.
    pub const MAX_SSH_SESSIONS: usize = Pool::Ssh.limits().0;

    /// SSH sessions at once for one organization.
    pub const MAX_SSH_SESSIONS_PER_ORG: usize = Pool::Ssh.limits().1;

    fn pool(&self, pool: Pool) -> &Slots {
        let [ssh, postgres, http, mail] = &*self.slots;
        match pool {
            Pool::Ssh => ssh,
            Pool::Postgres => postgres,
            Pool::Http => http,
            Pool::Mail => mail,
        }
    }

    /// Waits for a slot of `pool` for organization `org`.
    pub(super) async fn slot(&self, pool: Pool, org: &str, deadline: Instant) -> Slot {
        self.pool(pool).acquire(org, deadline).await
    }

    /// How many probes of `pool` could start right now.
    pub fn free_slots(&self, pool: Pool) -> usize {
        self.pool(pool).available()
    }

    /// The HTTP client whose connections go through `egress`.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

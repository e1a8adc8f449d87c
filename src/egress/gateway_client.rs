//! The gateway's HTTP client: hyper's own (HTTP/1.1, kept-alive
//! connections), without the layers a general client adds per request (URL
//! parsing again, a redirect policy that never follows): the gateway
//! returns redirects and has its URL checked already. Its resolver is the
//! egress guard's, so every named host's addresses are checked and the
//! connection pinned to them; TLS is rustls with the webpki roots.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{EgressError, EgressPolicy};

/// The gateway's client; requests carry an `axum` body (kept or streamed).
pub type GatewayClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedNames>>, axum::body::Body>;

/// The egress guard as hyper's resolver: a name's permitted addresses, or
/// the guard's refusal.
#[derive(Clone)]
pub struct GuardedNames(Arc<EgressPolicy>);

impl tower::Service<Name> for GuardedNames {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, EgressError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), EgressError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.0);
        // Port 0: the connector fills in the URL's port.
        Box::pin(async move { Ok(policy.resolve(name.as_str(), 0).await?.into_iter()) })
    }
}

impl EgressPolicy {
    /// The gateway's client: every connection through this policy (an
    /// address literal is checked by the caller, as the resolver never sees
    /// it), `connect_timeout` to connect, no proxy from the environment,
    /// redirects returned as they are.
    pub fn gateway_client(self: &Arc<Self>, connect_timeout: Duration) -> Result<GatewayClient, EgressError> {
        let mut http = HttpConnector::new_with_resolver(GuardedNames(Arc::clone(self)));
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| EgressError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https))
    }
}

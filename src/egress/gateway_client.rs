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
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        self.client_trusting(connect_timeout, roots)
    }

    /// [`gateway_client`](Self::gateway_client), trusting `roots`.
    fn client_trusting(
        self: &Arc<Self>,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<GatewayClient, EgressError> {
        let mut http = HttpConnector::new_with_resolver(GuardedNames(Arc::clone(self)));
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A certificate for `localhost` made by `openssl`, and its key (DER).
    fn localhost_certificate(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
        let (cert, key) = (dir.join("cert.der"), dir.join("key.der"));
        let pem = dir.join("key.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .args(["-addext", "extendedKeyUsage=serverAuth", "-outform", "DER", "-keyout"])
            .arg(&pem)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs (scripts/install-test-deps.sh installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let converted = std::process::Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&key)
            .output()
            .unwrap();
        assert!(converted.status.success());
        (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    }

    /// An HTTPS service on loopback answering `GET /v1/…` with the SNI
    /// name it was reached by; its port.
    async fn https_service(cert: Vec<u8>, key: Vec<u8>) -> u16 {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let sni = tls.get_ref().1.server_name().unwrap_or("none").to_owned();
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let answer = format!("{} {} via {sni}", request.method(), request.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from(answer))) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn calls_reach_an_https_service_whose_certificate_it_trusts_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = localhost_certificate(dir.path());
        let port = https_service(cert.clone(), key).await;
        let policy = Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(cert)).unwrap();
        let trusting = policy.client_trusting(Duration::from_secs(5), roots).unwrap();
        let public_roots = policy.gateway_client(Duration::from_secs(5)).unwrap();
        let get = || {
            hyper::Request::get(format!("https://localhost:{port}/v1/items"))
                .body(Body::empty())
                .unwrap()
        };

        let answer = trusting.request(get()).await.unwrap();
        let status = answer.status();
        let body = axum::body::to_bytes(Body::new(answer.into_body()), 1024).await.unwrap();
        let refused = public_roots.request(get()).await;

        assert_eq!(status, 200);
        assert_eq!(body, "GET /v1/items via localhost", "over TLS, the name sent as SNI");
        let refused = refused.expect_err("a certificate no root vouches for is refused");
        let mut source = std::error::Error::source(&refused);
        let mut unknown_issuer = false;
        while let Some(s) = source {
            unknown_issuer |= s.to_string().contains("UnknownIssuer");
            source = s.source();
        }
        assert!(unknown_issuer, "{refused:?}");
    }

    #[tokio::test]
    async fn a_name_for_an_address_the_guard_refuses_is_never_connected() {
        let policy = Arc::new(EgressPolicy::new(Vec::new()));
        let client = policy.gateway_client(Duration::from_secs(5)).unwrap();

        let refused = client
            .request(hyper::Request::get("http://localhost:9/").body(Body::empty()).unwrap())
            .await
            .expect_err("localhost is not public");

        let mut source = std::error::Error::source(&refused);
        let mut denied = false;
        while let Some(s) = source {
            denied |= matches!(s.downcast_ref::<EgressError>(), Some(EgressError::Denied { .. }));
            source = s.source();
        }
        assert!(denied, "{refused:?}");
    }
}

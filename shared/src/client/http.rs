//! The HTTP client of the data path: hyper-util's pooled client, over a connector that
//! resolves the service's name (or is pinned to one of its addresses) and speaks TLS for
//! `https`.
//!
//! An attempt is built here as a plain `http::Request` and handed to the pool: no redirect
//! policy, no retry layer and no second parse of the URL on the way, which reqwest's
//! request pipeline added to every attempt (a tenth of booksvc's instructions per proxied
//! read). reqwest stays where an attempt's cost does not matter: the OAuth2 token endpoint.
//!
//! Like reqwest, the pool sends again a request that never left because its pooled
//! connection turned out to be closed (nothing of it was written); it never sends again a
//! request that was written, so every attempt the resilience layer counts is at most one
//! request on the wire.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

/// A response whose body is still to be read.
pub type Response = axum::http::Response<hyper::body::Incoming>;

/// Why an attempt got no response: connecting failed (`is_connect`), or the connection
/// broke while the request was sent or its response awaited.
pub type TransportError = hyper_util::client::legacy::Error;

/// The client of one address (or of the name): cheap to clone, clones share the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>,
}

impl HttpClient {
    pub fn request(
        &self,
        request: axum::http::Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send + 'static {
        self.inner.request(request)
    }
}

/// What every client of one service is built with.
#[derive(Clone)]
pub(crate) struct HttpSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub tls: Arc<rustls::ClientConfig>,
}

impl HttpSettings {
    /// A client that resolves names itself, or that connects only to `pinned` (the request
    /// still names the host: its `Host` header and the certificate's name are the
    /// service's). A pinned address's port is used only when the URL names none.
    pub(crate) fn client(&self, pinned: Option<SocketAddr>) -> HttpClient {
        let resolver =
            pinned.map_or_else(|| Resolver::System(GaiResolver::new()), Resolver::Pinned);
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.as_ref().clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .build(https);
        HttpClient { inner }
    }
}

/// The TLS settings of `https` attempts: the platform's verifier (the system's roots, as
/// reqwest's), or only the roots of a CA file when one is given.
pub(crate) fn tls_config(
    ca_certificates: Option<&[CertificateDer<'static>]>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    Ok(match ca_certificates {
        Some(certificates) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates {
                roots.add(certificate.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder.with_platform_verifier()?.with_no_client_auth()
        }
    })
}

/// Where a client's connections go: wherever the system resolver says, or to one address.
#[derive(Clone, Debug)]
enum Resolver {
    System(GaiResolver),
    Pinned(SocketAddr),
}

type Addresses = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for Resolver {
    type Response = Addresses;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Addresses>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Self::System(resolver) => resolver.poll_ready(cx),
            Self::Pinned(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self {
            Self::System(resolver) => {
                let lookup = resolver.call(name);
                Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
            }
            Self::Pinned(address) => {
                let addresses = vec![*address].into_iter();
                Box::pin(std::future::ready(Ok(addresses)))
            }
        }
    }
}

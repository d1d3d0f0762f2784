//! The service client: one service, found by name, called with credentials, default
//! headers and the current trace.
//!
//! A [`ServiceClient`] turns `(method, path and query, headers, body)` into one HTTP
//! attempt: it resolves the path against the discovered base URL, adds the credentials
//! (fetching an OAuth2 token if needed), the caller's `User-Agent` and default headers, and
//! the `traceparent` and `x-request-id` of the request being handled. It does *not* time
//! out, retry or break circuits: the resilience layer wraps each [`ServiceClient::execute`]
//! in those, and because credentials are applied per attempt, a retry after a token refresh
//! sends the new token.
//!
//! The underlying HTTP client ([`http`], hyper-util's) only bounds connecting
//! ([`DEFAULT_CONNECT_TIMEOUT`]), keeps a bounded pool of idle connections, follows no
//! redirects (a service's answer is passed on as it is) and makes no retries of its own,
//! so every attempt the resilience layer counts is one request on the wire.
//!
//! The pieces: [`discovery`] (variables and base URL), [`auth`] and [`oauth`] (credentials),
//! [`config`] (what a client is built from), [`error`] (what can go wrong), [`http`] (the
//! connections).

pub mod auth;
pub mod config;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod http;
pub mod oauth;
pub mod secret;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use reqwest::Url;

pub use auth::{AuthConfig, X_API_KEY};
pub use config::{CaFile, DEFAULT_CONNECT_TIMEOUT, ServiceClientConfig};
pub use error::{ClientError, ConfigError, TokenError};
pub use http::{HttpClient, Response, TransportError};
pub use oauth::{ClientAuth, OAuthConfig};
pub use secret::Secret;

use crate::trace_context::{
    self, TRACEPARENT, TRACESTATE, TraceContext, TraceParent, X_REQUEST_ID,
};
use auth::Authenticator;
use endpoints::Endpoints;
use http::HttpSettings;
use oauth::AccessToken;
use resilience::BalancerCounts;

/// Every `reqwest` client of the workspace starts here (clippy refuses
/// `reqwest::Client::new` and `reqwest::Client::builder` elsewhere): reqwest is built with
/// `rustls-no-provider`, and building a client before a rustls crypto provider is installed
/// panics. This installs *ring* as the process default first (a provider installed before,
/// by the application, is kept).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    #[allow(clippy::disallowed_methods)]
    reqwest::Client::builder()
}

/// A blocking `reqwest` client with a `timeout` (for the traces' exporter, which sends from
/// a thread of its own), after installing the crypto provider as [`http_client_builder`]
/// does. It is built on a thread of its own: building (and dropping) one inside the async
/// runtime would panic.
pub fn blocking_http_client(timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let build = move || {
        #[allow(clippy::disallowed_methods)]
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
    };
    let built = std::thread::spawn(build)
        .join()
        .map_err(|_| anyhow::anyhow!("building the blocking HTTP client panicked"))?;
    Ok(built?)
}

/// A client for one service. Cheap to clone: clones share connections and the token cache.
/// Where one call's last attempt went, so that its next attempt (a slow attempt's twin, a
/// failed attempt's retry) goes to another address of the service, where it has another in
/// rotation. One per call; [`ServiceClient::execute_on`] reads and updates it.
#[derive(Debug, Default)]
pub struct Trail {
    last: std::sync::Mutex<Option<SocketAddr>>,
}

impl Trail {
    fn last(&self) -> Option<SocketAddr> {
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn went_to(&self, address: Option<SocketAddr>) {
        if address.is_some() {
            *self
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = address;
        }
    }
}

#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    base_url: Url,
    endpoints: Arc<Endpoints>,
    auth: Authenticator,
    /// Sent with every attempt unless the call sets the same header.
    default_headers: HeaderMap,
    /// `booksvc/0.1.0`.
    user_agent: HeaderValue,
}

impl ServiceClient {
    /// Builds the client. `caller` and `caller_version` make the `User-Agent`
    /// (`booksvc/0.1.0`), so the called service's logs say who called.
    pub fn new(
        config: ServiceClientConfig,
        caller: &str,
        caller_version: &str,
    ) -> Result<Self, ConfigError> {
        let service = config.service.clone();
        let user_agent =
            HeaderValue::from_str(&format!("{caller}/{caller_version}")).map_err(|err| {
                ConfigError::InvalidHeader {
                    service: service.clone(),
                    name: header::USER_AGENT.to_string(),
                    reason: err.to_string(),
                }
            })?;
        // The token endpoint is another server: it gets the user agent, not the headers
        // meant for the service, and is reached by name (through reqwest: a token is
        // fetched once in its lifetime, not once per attempt).
        let token_http = token_client(&service, &user_agent, &config)?;
        let auth = Authenticator::new(&service, config.auth, token_http)?;
        let tls = http::tls_config(config.ca_file.as_ref().map(|ca| ca.der.as_slice())).map_err(
            |error| ConfigError::Tls {
                service: service.clone(),
                error,
            },
        )?;
        let settings = HttpSettings {
            connect_timeout: config.connect_timeout,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle_per_host: config.pool_max_idle_per_host,
            tls: Arc::new(tls),
        };
        let build: endpoints::BuildClient = Box::new(move |address| settings.client(address));
        let endpoints = Endpoints::new(
            &service,
            &config.base_url,
            config.addresses.as_deref(),
            build,
            config.balancer,
            config.resolve_every,
            config.connect_timeout,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                service,
                base_url: config.base_url,
                endpoints: Arc::new(endpoints),
                auth,
                default_headers: config.default_headers,
                user_agent,
            }),
        })
    }

    /// How many of the service's addresses are in rotation, ejected or being probed, when
    /// it is called by name.
    pub fn balancer_counts(&self) -> Option<BalancerCounts> {
        self.inner.endpoints.counts()
    }

    /// The service's addresses as last resolved (none for a base URL with an address).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.inner.endpoints.addresses()
    }

    /// The name the service was discovered by.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// The full URL of `path_and_query` (`/books?limit=10`), which must start with `/`.
    /// A base URL with a path prefix keeps it: `http://gw/storage` + `/books`.
    pub fn url(&self, path_and_query: &str) -> Result<Url, ClientError> {
        let invalid = |reason| ClientError::InvalidPath {
            service: self.inner.service.clone(),
            path: path_and_query.to_owned(),
            reason,
        };
        if !path_and_query.starts_with('/') {
            return Err(invalid("it must start with `/`"));
        }
        if path_and_query.contains('#') {
            return Err(invalid("a fragment is never sent to a server"));
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        // The base URL was parsed once; only the path and the query are parsed here. Parsing
        // the whole URL again for every attempt, its host included (IDNA processing), was
        // about 5% of booksvc's instructions per proxied read.
        let prefix = self.inner.base_url.path().trim_end_matches('/');
        let mut url = self.inner.base_url.clone();
        url.set_path(&format!("{prefix}{path}"));
        url.set_query(query);
        // `/..` segments are resolved by parsing; they must not climb out of the prefix.
        let below_prefix = url
            .path()
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !below_prefix {
            return Err(invalid("it leaves the base URL's path"));
        }
        Ok(url)
    }

    /// One attempt: sends the request and returns the response, whatever its status.
    ///
    /// `headers` are the call's own (an `Idempotency-Key`, a deadline); they override the
    /// default headers. Credentials, `traceparent` and `tracestate` belong to the client and
    /// replace any the caller passed; `x-request-id` is the current request's unless the
    /// caller set one. A `401` answer to an OAuth2 token discards that token, so the next
    /// attempt or call fetches a new one.
    ///
    /// The attempt goes to one of the service's addresses ([`endpoints`]); its result
    /// counts for that address: no answer or a 5xx against it, anything else for it, and
    /// an attempt dropped before its answer (cut off by its timeout) against it.
    pub async fn execute(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        self.execute_on(&Trail::default(), method, path_and_query, headers, body)
            .await
    }

    /// Like [`execute`](Self::execute), as one attempt of a call: it goes to another
    /// address than the call's last attempt did (`trail`), where the service has another
    /// in rotation. A slow attempt's twin and a failed attempt's retry then try another
    /// replica, not the one that was slow or failed.
    pub async fn execute_on(
        &self,
        trail: &Trail,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let route = self.inner.endpoints.route(trail.last()).await;
        trail.went_to(route.address());
        let (request, token) = self
            .prepare(method.clone(), path_and_query, headers, body)
            .await?;
        let address = route.address();
        let response = match route.http.request(request).await {
            Ok(response) => {
                route.answered(response.status());
                response
            }
            Err(error) => {
                route.unanswered();
                if error.is_connect() {
                    self.inner.endpoints.connection_failed();
                }
                let url = self
                    .url(path_and_query)
                    .map_or_else(|_| path_and_query.to_owned(), |url| url.to_string());
                return Err(ClientError::Transport {
                    method,
                    url,
                    address,
                    error: Box::new(error),
                });
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED
            && let Some(token) = token
        {
            tracing::warn!(
                service = %self.inner.service,
                "the service refused our OAuth2 token; fetching a new one for the next call"
            );
            self.inner.auth.reject(&token);
        }
        Ok(response)
    }

    /// The attempt's request: its URL, the call's headers over the default ones, the
    /// client's own headers (user agent, trace context, credentials) and the body.
    async fn prepare(
        &self,
        method: Method,
        path_and_query: &str,
        call_headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<(Request<Full<Bytes>>, Option<AccessToken>), ClientError> {
        let url = self.url(path_and_query)?;
        let uri: Uri = url.as_str().parse().map_err(|_| ClientError::InvalidPath {
            service: self.inner.service.clone(),
            path: path_and_query.to_owned(),
            reason: "it is not a valid request target",
        })?;
        let mut headers = self.inner.default_headers.clone();
        // A call's header replaces every default value of the same name.
        headers.extend(call_headers);
        for owned in [header::AUTHORIZATION, X_API_KEY, TRACEPARENT, TRACESTATE] {
            headers.remove(owned);
        }
        headers
            .entry(header::USER_AGENT)
            .or_insert_with(|| self.inner.user_agent.clone());
        let context = trace_context::current();
        // While traces are exported, the span this call is made in (an attempt) is the
        // parent the service is told of; otherwise a new span id in the same trace.
        let traceparent = crate::telemetry::traces::current_traceparent().unwrap_or_else(|| {
            context
                .as_ref()
                .map_or_else(TraceParent::new_root, TraceContext::outgoing_traceparent)
        });
        headers.insert(TRACEPARENT, traceparent.to_header_value());
        if let Some(context) = &context {
            if let Some(tracestate) = context.tracestate() {
                headers.insert(TRACESTATE, tracestate.clone());
            }
            if let Some(request_id) = context.request_id() {
                headers
                    .entry(X_REQUEST_ID)
                    .or_insert_with(|| request_id.clone());
            }
        }
        let token = self
            .inner
            .auth
            .authorize(&mut headers)
            .await
            .map_err(|error| ClientError::Token {
                service: self.inner.service.clone(),
                error,
            })?;
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok((request, token))
    }
}

/// The token endpoint's client: reqwest, with the service's connect timeout and CA file.
fn token_client(
    service: &str,
    user_agent: &HeaderValue,
    config: &ServiceClientConfig,
) -> Result<reqwest::Client, ConfigError> {
    let mut builder = http_client_builder()
        .user_agent(user_agent.clone())
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never());
    // `https`: the system's roots, or only the configured CA's.
    let failed = |error| ConfigError::HttpClient {
        service: service.to_owned(),
        error,
    };
    if let Some(ca_file) = &config.ca_file {
        let certificates = ca_file
            .der
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(failed)
}

impl fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceClient")
            .field("service", &self.inner.service)
            .field("base_url", &self.inner.base_url.as_str())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base_url: &str) -> ServiceClient {
        let config = ServiceClientConfig::new("storagesvc", Url::parse(base_url).unwrap());
        ServiceClient::new(config, "booksvc", "1.2.3").unwrap()
    }

    #[test]
    fn joins_paths_and_queries_onto_the_base_url() {
        let plain = client("http://storagesvc:8082");
        assert_eq!(
            plain.url("/books?limit=1&offset=2").unwrap().as_str(),
            "http://storagesvc:8082/books?limit=1&offset=2"
        );
        let prefixed = client("http://gateway/storage");
        assert_eq!(
            prefixed.url("/books/1").unwrap().as_str(),
            "http://gateway/storage/books/1"
        );
    }

    #[test]
    fn builds_the_url_that_parsing_it_whole_gives() {
        let prefixed = client("http://gateway/storage/");
        for path in [
            "/books?limit=1&offset=2",
            "/books/1",
            "/books?",
            "/a b/é?c d=é&e=%20",
            "/books/./1",
            "/books/%2e%2e/other",
        ] {
            let whole = Url::parse(&format!("http://gateway/storage{path}")).unwrap();
            assert_eq!(prefixed.url(path).unwrap(), whole, "{path}");
        }
    }

    #[test]
    fn refuses_paths_that_are_not_below_the_base_url() {
        let prefixed = client("http://gateway/storage");
        for (path, reason) in [
            ("books", "must start with `/`"),
            ("", "must start with `/`"),
            ("/books#top", "fragment"),
            ("/../admin", "leaves the base URL's path"),
            ("/../storagex/books", "leaves the base URL's path"),
        ] {
            let err = prefixed.url(path).unwrap_err();
            assert!(matches!(err, ClientError::InvalidPath { .. }), "{err:?}");
            assert!(err.to_string().contains(reason), "{path}: {err}");
            assert!(err.to_string().contains("storagesvc"), "{err}");
        }
    }

    #[test]
    fn refuses_a_user_agent_that_is_not_a_header_value() {
        let config = ServiceClientConfig::new("storagesvc", Url::parse("http://s").unwrap());
        let err = ServiceClient::new(config, "books\nvc", "1").unwrap_err();
        assert!(err.to_string().contains("user-agent"), "{err}");
    }

    #[test]
    fn debug_shows_the_service_not_its_credentials() {
        let config = ServiceClientConfig::new("storagesvc", Url::parse("http://s:1").unwrap())
            .with_auth(AuthConfig::ApiKey(Secret::new("key-value-1")));
        let client = ServiceClient::new(config, "booksvc", "1").unwrap();
        let debug = format!("{client:?}");
        assert!(debug.contains("storagesvc"), "{debug}");
        assert!(!debug.contains("key-value-1"), "{debug}");
    }
}

//! The two ways a service client fails: at start-up (configuration) and per call.
//!
//! Configuration errors name the environment variable to fix, and the service prints them
//! and exits. Call errors say which service, which request and what went wrong; the
//! resilience layer classifies them (a [`ClientError::Transport`] keeps the transport error,
//! so it can ask whether connecting failed, or timed out). No message contains a credential.

use std::fmt;

use axum::http::StatusCode;

use super::http::TransportError;

/// A service client could not be configured. Every message names the variable(s) to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid service name `{name}`: use letters, digits, `-` and `_` (it becomes the prefix of variables such as {{NAME}}_URL)"
    )]
    InvalidServiceName { name: String },

    #[error(
        "{variable} is not set: set it to the base URL of {service}, e.g. http://{service}:<port>"
    )]
    MissingUrl { variable: String, service: String },

    #[error("{variable} is invalid: {reason}")]
    InvalidValue { variable: String, reason: String },

    #[error(
        "conflicting credentials for {service}: {} are set; set exactly one way to authenticate (API key, bearer token, basic user and password, or OAuth2 client credentials)",
        variables.join(", ")
    )]
    ConflictingAuth {
        service: String,
        variables: Vec<String>,
    },

    #[error(
        "incomplete {mode} credentials for {service}: {} set but {} not set",
        set.join(", "),
        missing.join(", ")
    )]
    IncompleteAuth {
        service: String,
        mode: &'static str,
        set: Vec<String>,
        missing: Vec<String>,
    },

    #[error("invalid default header `{name}` for {service}: {reason}")]
    InvalidHeader {
        service: String,
        name: String,
        reason: String,
    },

    #[error("cannot build the HTTP client for {service}: {}", chain(error))]
    HttpClient {
        service: String,
        error: reqwest::Error,
    },

    #[error("cannot set up TLS for {service}: {error}")]
    Tls {
        service: String,
        error: rustls::Error,
    },
}

/// One call to a service could not be made or did not get an HTTP response.
///
/// An HTTP response, whatever its status, is not an error here: whether a 503 is a failure
/// is the resilience layer's decision (the outcome table in docs/architecture.md).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid path `{path}` for {service}: {reason}")]
    InvalidPath {
        service: String,
        path: String,
        reason: &'static str,
    },

    #[error("cannot authenticate to {service}: {error}")]
    Token { service: String, error: TokenError },

    #[error("{method} {url} failed{}: {}", at(address.as_ref()), chain(error.as_ref()))]
    Transport {
        method: axum::http::Method,
        url: String,
        /// The address the attempt went to, when the service's name stands for several.
        address: Option<std::net::SocketAddr>,
        /// Boxed: hyper-util's error is large, and every `Result` of a call would carry it.
        error: Box<TransportError>,
    },
}

/// ` (at 10.0.0.5:8082)`, or nothing.
fn at(address: Option<&std::net::SocketAddr>) -> String {
    address.map_or_else(String::new, |address| format!(" (at {address})"))
}

impl ClientError {
    /// The transport error, for classifying it (connect error, timeout, reset).
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            Self::Transport { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }

    /// No connection could be made (refused, DNS failure, connect timeout): the request
    /// surely never left.
    pub fn is_connect(&self) -> bool {
        self.transport().is_some_and(TransportError::is_connect)
    }

    /// The transport gave up in time (connecting took longer than the connect timeout).
    pub fn is_timeout(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = match self.transport() {
            Some(error) => Some(error),
            None => None,
        };
        while let Some(error) = source {
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            source = error.source();
        }
        false
    }
}

/// Getting an OAuth2 access token failed. Never cached: the next call asks again.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the OAuth2 token endpoint {token_url} refused the client credentials with {status}{}; check the client id, secret and scopes",
        oauth_detail(error.as_deref(), description.as_deref())
    )]
    Rejected {
        token_url: String,
        status: StatusCode,
        /// The `error` code of the response body (RFC 6749 §5.2), when there was one.
        error: Option<String>,
        /// Its `error_description`.
        description: Option<String>,
    },

    #[error(
        "the OAuth2 token endpoint {token_url} could not be reached: {}",
        chain(error)
    )]
    Unreachable {
        token_url: String,
        error: reqwest::Error,
    },

    #[error(
        "the OAuth2 token endpoint {token_url} answered {status} with an unusable token: {reason}"
    )]
    InvalidResponse {
        token_url: String,
        status: StatusCode,
        reason: String,
    },
}

fn oauth_detail(error: Option<&str>, description: Option<&str>) -> String {
    match (error, description) {
        (Some(error), Some(description)) => format!(" ({error}: {description})"),
        (Some(error), None) => format!(" ({error})"),
        (None, Some(description)) => format!(" ({description})"),
        (None, None) => String::new(),
    }
}

/// A transport error says "error sending request" or "client error (Connect)" and keeps
/// the useful part ("connection refused") in its sources; this writes the whole chain into
/// one line.
pub(crate) fn chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
            Ok(())
        }
    }
    Chain(error)
}

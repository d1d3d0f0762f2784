//! How a client authenticates its calls: chosen once from `{NAME}_*` variables, applied to
//! every attempt.
//!
//! | mode | variables | on the wire |
//! |---|---|---|
//! | none | none of the below | nothing |
//! | API key | `{NAME}_API_KEY` | `X-API-Key: <key>` |
//! | bearer token | `{NAME}_BEARER_TOKEN` | `Authorization: Bearer <token>` |
//! | basic | `{NAME}_BASIC_USER`, `{NAME}_BASIC_PASSWORD` | `Authorization: Basic ...` |
//! | OAuth2 client credentials | `{NAME}_OAUTH_TOKEN_URL`, `_CLIENT_ID`, `_CLIENT_SECRET` (+ `_SCOPES`, `_CLIENT_AUTH`) | `Authorization: Bearer <fetched token>` |
//!
//! Exactly one mode may be configured. Variables of two modes, or a mode with a variable
//! missing, stop the service at start-up with a message naming them: a half-configured
//! credential silently sending nothing would only show up later as a wall of 401s.
//!
//! Auth is applied per *attempt*, not per logical call, because an OAuth2 token can be
//! refreshed between two attempts of one retried call.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine;

use super::discovery::{ServiceVars, parse_http_url};
use super::error::{ConfigError, TokenError};
use super::oauth::{AccessToken, ClientAuth, OAuthConfig, TokenSource};
use super::secret::Secret;

/// The header an API key is sent in.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The credentials a client sends. `Debug` shows the mode, never a secret.
#[derive(Debug, Clone, Default)]
pub enum AuthConfig {
    #[default]
    None,
    ApiKey(Secret),
    Bearer(Secret),
    Basic {
        user: String,
        password: Secret,
    },
    OAuth2(OAuthConfig),
}

/// One way to authenticate and the variables that configure it (suffixes after `{NAME}_`).
struct Mode {
    kind: Kind,
    name: &'static str,
    /// The first `required` of these must all be set; the rest may be.
    variables: &'static [&'static str],
    required: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    ApiKey,
    Bearer,
    Basic,
    OAuth2,
}

const MODES: [Mode; 4] = [
    Mode {
        kind: Kind::ApiKey,
        name: "API key",
        variables: &["API_KEY"],
        required: 1,
    },
    Mode {
        kind: Kind::Bearer,
        name: "bearer token",
        variables: &["BEARER_TOKEN"],
        required: 1,
    },
    Mode {
        kind: Kind::Basic,
        name: "basic",
        variables: &["BASIC_USER", "BASIC_PASSWORD"],
        required: 2,
    },
    Mode {
        kind: Kind::OAuth2,
        name: "OAuth2 client",
        variables: &[
            "OAUTH_TOKEN_URL",
            "OAUTH_CLIENT_ID",
            "OAUTH_CLIENT_SECRET",
            "OAUTH_SCOPES",
            "OAUTH_CLIENT_AUTH",
        ],
        required: 3,
    },
];

impl AuthConfig {
    /// Reads the auth variables of one service; see the module documentation.
    pub fn from_vars<L>(vars: &ServiceVars<L>) -> Result<Self, ConfigError>
    where
        L: Fn(&str) -> Option<String>,
    {
        let set_in = |suffixes: &[&'static str]| -> Vec<&'static str> {
            suffixes
                .iter()
                .copied()
                .filter(|suffix| vars.get(suffix).is_some())
                .collect()
        };
        let names = |suffixes: &[&str]| suffixes.iter().map(|s| vars.name(s)).collect();
        let configured: Vec<(&Mode, Vec<&str>)> = MODES
            .iter()
            .map(|mode| (mode, set_in(mode.variables)))
            .filter(|(_, set)| !set.is_empty())
            .collect();
        let (mode, set) = match configured.as_slice() {
            [] => return Ok(Self::None),
            [(mode, set)] => (*mode, set),
            several => {
                let set: Vec<&str> = several.iter().flat_map(|(_, set)| set.clone()).collect();
                return Err(ConfigError::ConflictingAuth {
                    service: vars.service().to_owned(),
                    variables: names(&set),
                });
            }
        };
        let missing: Vec<&str> = mode.variables[..mode.required]
            .iter()
            .copied()
            .filter(|suffix| !set.contains(suffix))
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::IncompleteAuth {
                service: vars.service().to_owned(),
                mode: mode.name,
                set: names(set),
                missing: names(&missing),
            });
        }
        // Every required variable is set, so `required` below never reports it missing.
        let required = |suffix: &str| vars.get(suffix).unwrap_or_default();
        let config = match mode.kind {
            Kind::ApiKey => Self::ApiKey(Secret::new(required("API_KEY"))),
            Kind::Bearer => Self::Bearer(Secret::new(required("BEARER_TOKEN"))),
            Kind::Basic => Self::Basic {
                user: required("BASIC_USER"),
                password: Secret::new(required("BASIC_PASSWORD")),
            },
            Kind::OAuth2 => Self::OAuth2(OAuthConfig {
                token_url: parse_http_url(
                    &vars.name("OAUTH_TOKEN_URL"),
                    &required("OAUTH_TOKEN_URL"),
                )?,
                client_id: required("OAUTH_CLIENT_ID"),
                client_secret: Secret::new(required("OAUTH_CLIENT_SECRET")),
                scopes: vars
                    .get("OAUTH_SCOPES")
                    .map(|scopes| scopes.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                client_auth: match vars.get("OAUTH_CLIENT_AUTH") {
                    None => ClientAuth::default(),
                    Some(value) => {
                        ClientAuth::parse(&value).ok_or_else(|| ConfigError::InvalidValue {
                            variable: vars.name("OAUTH_CLIENT_AUTH"),
                            reason: format!("`{value}` is not `basic` or `body`"),
                        })?
                    }
                },
            }),
        };
        config
            .check()
            .map_err(|(suffix, reason)| ConfigError::InvalidValue {
                variable: vars.name(suffix),
                reason: reason.to_owned(),
            })?;
        Ok(config)
    }

    /// Finds values that could never be sent, naming the variable suffix that holds them.
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        const NOT_A_HEADER: &str =
            "contains characters not allowed in an HTTP header (a trailing newline?)";
        match self {
            Self::None | Self::OAuth2(_) => Ok(()),
            Self::ApiKey(key) => header_value(key.expose())
                .map(drop)
                .ok_or(("API_KEY", NOT_A_HEADER)),
            Self::Bearer(token) => header_value(token.expose())
                .map(drop)
                .ok_or(("BEARER_TOKEN", NOT_A_HEADER)),
            Self::Basic { user, .. } if user.contains(':') => Err((
                "BASIC_USER",
                "must not contain `:`, which separates user and password in basic auth",
            )),
            Self::Basic { .. } => Ok(()),
        }
    }
}

/// A credential as a header value, marked sensitive so HTTP libraries never log it.
pub(crate) fn header_value(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The credentials of one client, ready to put on requests.
pub(crate) enum Authenticator {
    None,
    /// An API key, a bearer token or basic credentials: the same header on every attempt.
    Header(HeaderName, HeaderValue),
    OAuth2(Arc<TokenSource>),
}

impl Authenticator {
    /// `token_http` is the HTTP client used for the token endpoint, if OAuth2 is configured.
    pub(crate) fn new(
        service: &str,
        config: AuthConfig,
        token_http: reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let invalid = |what: &str| ConfigError::InvalidValue {
            variable: format!("the {what} for {service}"),
            reason: "contains characters not allowed in an HTTP header".to_owned(),
        };
        Ok(match config {
            AuthConfig::None => Self::None,
            AuthConfig::ApiKey(key) => Self::Header(
                X_API_KEY,
                header_value(key.expose()).ok_or_else(|| invalid("API key"))?,
            ),
            AuthConfig::Bearer(token) => Self::Header(
                header::AUTHORIZATION,
                header_value(&format!("Bearer {}", token.expose()))
                    .ok_or_else(|| invalid("bearer token"))?,
            ),
            AuthConfig::Basic { user, password } => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()));
                Self::Header(
                    header::AUTHORIZATION,
                    header_value(&format!("Basic {encoded}"))
                        .ok_or_else(|| invalid("basic credentials"))?,
                )
            }
            AuthConfig::OAuth2(config) => {
                Self::OAuth2(Arc::new(TokenSource::new(token_http, config)))
            }
        })
    }

    /// Adds the credentials to one attempt's headers. With OAuth2 this may fetch a token
    /// first; the token used is returned so a `401` answer can discard it.
    pub(crate) async fn authorize(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<AccessToken>, TokenError> {
        Ok(match self {
            Self::None => None,
            Self::Header(name, value) => {
                headers.insert(name, value.clone());
                None
            }
            Self::OAuth2(source) => {
                let token = source.token().await?;
                headers.insert(header::AUTHORIZATION, token.header());
                Some(token)
            }
        })
    }

    /// The upstream refused `token` (a `401`): forget it, so the next attempt fetches anew
    /// instead of sending a revoked token until it would have expired.
    pub(crate) fn reject(&self, token: &AccessToken) {
        if let Self::OAuth2(source) = self {
            source.forget(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn auth(pairs: &[(&str, &str)]) -> Result<AuthConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let vars = ServiceVars::new("storagesvc", move |name: &str| map.get(name).cloned())?;
        AuthConfig::from_vars(&vars)
    }

    const OAUTH: [(&str, &str); 3] = [
        ("STORAGESVC_OAUTH_TOKEN_URL", "http://idp:8080/token"),
        ("STORAGESVC_OAUTH_CLIENT_ID", "booksvc"),
        ("STORAGESVC_OAUTH_CLIENT_SECRET", "s3cret"),
    ];

    #[test]
    fn no_variables_means_no_auth() {
        assert!(matches!(auth(&[]).unwrap(), AuthConfig::None));
        assert!(matches!(
            auth(&[("STORAGESVC_API_KEY", ""), ("STORAGESVC_BASIC_USER", " ")]).unwrap(),
            AuthConfig::None
        ));
        assert!(matches!(
            auth(&[("BOOKSVC_API_KEY", "not ours")]).unwrap(),
            AuthConfig::None
        ));
    }

    #[test]
    fn reads_each_mode() {
        let AuthConfig::ApiKey(key) = auth(&[("STORAGESVC_API_KEY", "k1")]).unwrap() else {
            panic!("expected an API key");
        };
        assert_eq!(key.expose(), "k1");

        let AuthConfig::Bearer(token) = auth(&[("STORAGESVC_BEARER_TOKEN", "t1")]).unwrap() else {
            panic!("expected a bearer token");
        };
        assert_eq!(token.expose(), "t1");

        let basic = auth(&[
            ("STORAGESVC_BASIC_USER", "alice"),
            ("STORAGESVC_BASIC_PASSWORD", "pw"),
        ]);
        let AuthConfig::Basic { user, password } = basic.unwrap() else {
            panic!("expected basic");
        };
        assert_eq!((user.as_str(), password.expose()), ("alice", "pw"));

        let AuthConfig::OAuth2(oauth) = auth(&OAUTH).unwrap() else {
            panic!("expected OAuth2");
        };
        assert_eq!(oauth.token_url.as_str(), "http://idp:8080/token");
        assert_eq!(oauth.client_id, "booksvc");
        assert_eq!(oauth.client_secret.expose(), "s3cret");
        assert!(oauth.scopes.is_empty());
        assert_eq!(oauth.client_auth, ClientAuth::Basic);
    }

    #[test]
    fn reads_oauth_scopes_and_client_auth_method() {
        let mut pairs = OAUTH.to_vec();
        pairs.push(("STORAGESVC_OAUTH_SCOPES", " books:read  books:write "));
        pairs.push(("STORAGESVC_OAUTH_CLIENT_AUTH", "Body"));
        let AuthConfig::OAuth2(oauth) = auth(&pairs).unwrap() else {
            panic!("expected OAuth2");
        };
        assert_eq!(oauth.scopes, ["books:read", "books:write"]);
        assert_eq!(oauth.client_auth, ClientAuth::RequestBody);

        pairs.pop();
        pairs.push(("STORAGESVC_OAUTH_CLIENT_AUTH", "mtls"));
        let err = auth(&pairs).unwrap_err().to_string();
        assert!(
            err.starts_with("STORAGESVC_OAUTH_CLIENT_AUTH is invalid"),
            "{err}"
        );
    }

    #[test]
    fn incomplete_modes_name_what_is_set_and_what_is_missing() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[("STORAGESVC_BASIC_USER", "alice")],
                "incomplete basic credentials for storagesvc: STORAGESVC_BASIC_USER set but STORAGESVC_BASIC_PASSWORD not set",
            ),
            (
                &[("STORAGESVC_BASIC_PASSWORD", "pw")],
                "STORAGESVC_BASIC_PASSWORD set but STORAGESVC_BASIC_USER not set",
            ),
            (
                &OAUTH[..2],
                "incomplete OAuth2 client credentials for storagesvc: STORAGESVC_OAUTH_TOKEN_URL, STORAGESVC_OAUTH_CLIENT_ID set but STORAGESVC_OAUTH_CLIENT_SECRET not set",
            ),
            (
                &[("STORAGESVC_OAUTH_SCOPES", "books:read")],
                "STORAGESVC_OAUTH_SCOPES set but STORAGESVC_OAUTH_TOKEN_URL, STORAGESVC_OAUTH_CLIENT_ID, STORAGESVC_OAUTH_CLIENT_SECRET not set",
            ),
        ];
        for (pairs, expected) in cases {
            let err = auth(pairs).unwrap_err();
            assert!(matches!(err, ConfigError::IncompleteAuth { .. }), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn two_modes_at_once_are_refused_naming_every_variable() {
        let err = auth(&[
            ("STORAGESVC_API_KEY", "k1"),
            ("STORAGESVC_BEARER_TOKEN", "t1"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflicting credentials for storagesvc: STORAGESVC_API_KEY, STORAGESVC_BEARER_TOKEN are set; set exactly one way to authenticate (API key, bearer token, basic user and password, or OAuth2 client credentials)"
        );

        let mut pairs = OAUTH.to_vec();
        pairs.push(("STORAGESVC_BASIC_USER", "alice"));
        let err = auth(&pairs).unwrap_err().to_string();
        assert!(
            err.contains("STORAGESVC_BASIC_USER, STORAGESVC_OAUTH_TOKEN_URL"),
            "{err}"
        );
    }

    #[test]
    fn unusable_values_name_the_variable() {
        let cases = [
            (
                ("STORAGESVC_API_KEY", "k1\n"),
                "STORAGESVC_API_KEY is invalid",
            ),
            (
                ("STORAGESVC_BEARER_TOKEN", "t\u{7f}"),
                "STORAGESVC_BEARER_TOKEN is invalid",
            ),
        ];
        for (pair, expected) in cases {
            let err = auth(&[pair]).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
            assert!(!err.contains(pair.1), "the value must not be echoed: {err}");
        }

        let err = auth(&[
            ("STORAGESVC_BASIC_USER", "al:ice"),
            ("STORAGESVC_BASIC_PASSWORD", "pw"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("STORAGESVC_BASIC_USER is invalid"), "{err}");

        let mut pairs = OAUTH.to_vec();
        pairs[0].1 = "idp/token";
        let err = auth(&pairs).unwrap_err().to_string();
        assert!(
            err.starts_with("STORAGESVC_OAUTH_TOKEN_URL is invalid"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let configs = [
            auth(&[("STORAGESVC_API_KEY", "key-value-1")]),
            auth(&[("STORAGESVC_BEARER_TOKEN", "token-value-1")]),
            auth(&[
                ("STORAGESVC_BASIC_USER", "alice"),
                ("STORAGESVC_BASIC_PASSWORD", "password-value-1"),
            ]),
            auth(&OAUTH),
        ];
        for config in configs {
            let debug = format!("{:?}", config.unwrap());
            for secret in ["key-value-1", "token-value-1", "password-value-1", "s3cret"] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
    }
}

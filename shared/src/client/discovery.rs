//! Discovery: where a service lives and which variables configure the client for it.
//!
//! A service is known by name; everything about reaching it comes from variables prefixed
//! with that name upper-cased, dashes turned into underscores (`storagesvc` →
//! `STORAGESVC_URL`, `STORAGESVC_API_KEY`, ...). Variables are read through a lookup
//! function rather than `std::env` directly, so tests can hand in a map instead of changing
//! the process environment. A variable set to an empty (or blank) value counts as unset,
//! which is what `FOO=` in a compose file means to its author.

use reqwest::Url;

use super::error::ConfigError;

/// URL schemes the client can speak: plain HTTP inside one deployment network, `https`
/// (rustls) for calls that cross machines or go to a token endpoint elsewhere.
const SUPPORTED_SCHEMES: &[&str] = &["http", "https"];

/// The variables of one service: its name and the prefix of its variable names.
#[derive(Debug, Clone)]
pub struct ServiceVars<L> {
    service: String,
    prefix: String,
    lookup: L,
}

impl<L> ServiceVars<L>
where
    L: Fn(&str) -> Option<String>,
{
    pub fn new(service: &str, lookup: L) -> Result<Self, ConfigError> {
        Ok(Self {
            service: service.to_owned(),
            prefix: env_prefix(service)?,
            lookup,
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The full name of variable `suffix` (`URL` → `STORAGESVC_URL`).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }

    /// The value of variable `suffix`, or `None` when it is unset or blank.
    pub fn get(&self, suffix: &str) -> Option<String> {
        (self.lookup)(&self.name(suffix)).filter(|value| !value.trim().is_empty())
    }

    /// The base URL of the service, from `{NAME}_URL`.
    pub fn base_url(&self) -> Result<Url, ConfigError> {
        let variable = self.name("URL");
        let value = self.get("URL").ok_or_else(|| ConfigError::MissingUrl {
            variable: variable.clone(),
            service: self.service.clone(),
        })?;
        let mut url = parse_http_url(&variable, &value)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                &variable,
                "a base URL has no query or fragment; paths and queries are given per call",
            ));
        }
        // One form for `http://host:8082` and `http://host:8082/`, so joining a path is
        // plain concatenation and keeps a path prefix (`http://gateway/storage`).
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
        Ok(url)
    }
}

/// `storagesvc` → `STORAGESVC`, `book-svc` → `BOOK_SVC`.
pub fn env_prefix(service: &str) -> Result<String, ConfigError> {
    let valid = !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ConfigError::InvalidServiceName {
            name: service.to_owned(),
        });
    }
    Ok(service.to_ascii_uppercase().replace('-', "_"))
}

/// Parses an absolute `http` URL with a host and no credentials in it.
pub(crate) fn parse_http_url(variable: &str, value: &str) -> Result<Url, ConfigError> {
    let value = value.trim();
    // Credentials have their own variables; a URL with `user:password@` in it must not be
    // echoed into a log line, so its value is left out of the message.
    let shown = if value.contains('@') {
        " the value".to_owned()
    } else {
        format!(" `{value}`")
    };
    let url = Url::parse(value).map_err(|err| {
        invalid(
            variable,
            &format!("{shown} is not an absolute URL ({err}); expected e.g. http://host:port"),
        )
    })?;
    if !SUPPORTED_SCHEMES.contains(&url.scheme()) {
        return Err(invalid(
            variable,
            &format!(
                "{shown} uses scheme `{}`; supported: {}",
                url.scheme(),
                SUPPORTED_SCHEMES.join(", ")
            ),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(variable, &format!("{shown} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            variable,
            "must not contain credentials; use the _BASIC_USER/_BASIC_PASSWORD, _API_KEY, _BEARER_TOKEN or _OAUTH_* variables",
        ));
    }
    Ok(url)
}

fn invalid(variable: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        variable: variable.to_owned(),
        reason: reason.trim_start().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn base_url(service: &str, pairs: &[(&str, &str)]) -> Result<Url, ConfigError> {
        ServiceVars::new(service, vars(pairs))?.base_url()
    }

    #[test]
    fn maps_service_names_to_variable_prefixes() {
        assert_eq!(env_prefix("storagesvc").unwrap(), "STORAGESVC");
        assert_eq!(env_prefix("book-svc").unwrap(), "BOOK_SVC");
        assert_eq!(env_prefix("Payments_2").unwrap(), "PAYMENTS_2");
        for bad in ["", "book svc", "svc.internal", "bücher"] {
            let err = env_prefix(bad).unwrap_err().to_string();
            assert!(err.contains("invalid service name"), "{bad}: {err}");
        }
    }

    #[test]
    fn reads_the_base_url_from_name_url() {
        let url = base_url(
            "storagesvc",
            &[("STORAGESVC_URL", "http://storagesvc:8082")],
        );
        assert_eq!(url.unwrap().as_str(), "http://storagesvc:8082/");
        let url = base_url("book-svc", &[("BOOK_SVC_URL", " http://books:1/api/ ")]);
        assert_eq!(url.unwrap().as_str(), "http://books:1/api");
    }

    #[test]
    fn missing_url_names_the_variable() {
        for pairs in [&[][..], &[("STORAGESVC_URL", "  ")][..]] {
            let err = base_url("storagesvc", pairs).unwrap_err();
            assert!(matches!(err, ConfigError::MissingUrl { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.starts_with("STORAGESVC_URL is not set"),
                "{message}"
            );
        }
    }

    #[test]
    fn invalid_urls_name_the_variable_and_say_why() {
        let cases = [
            ("storagesvc:8082", "uses scheme `storagesvc`"),
            ("not a url", "is not an absolute URL"),
            ("ftp://storagesvc:8082", "supported: http, https"),
            ("http://storagesvc:8082/?x=1", "no query or fragment"),
            ("http://storagesvc:8082/#top", "no query or fragment"),
        ];
        for (value, reason) in cases {
            let err = base_url("storagesvc", &[("STORAGESVC_URL", value)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("STORAGESVC_URL is invalid"),
                "{value}: {err}"
            );
            assert!(err.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        let err = base_url(
            "storagesvc",
            &[("STORAGESVC_URL", "http://me:hunter2@storagesvc")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("must not contain credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

//! Everything a [`ServiceClient`](super::ServiceClient) is built from, read once at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use resilience::BalancerConfig;

use super::auth::AuthConfig;
use super::discovery::ServiceVars;
use super::endpoints::DEFAULT_RESOLVE_EVERY;
use super::error::ConfigError;

/// Bound on opening a TCP connection. A connect inside one network takes milliseconds; a
/// host that swallows SYNs must not hold a call until some outer timeout notices.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle pooled connection is kept. Well under the idle limit of our own
/// servers (`HEADER_READ_TIMEOUT`, 10 s by default, closes an idle keep-alive connection),
/// so the client drops a connection before the server closes it under a request on its way.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per host: enough for a burst of concurrent calls to reuse them.
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 32;

/// How to reach one service and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ServiceClientConfig {
    /// The name it was discovered by (`storagesvc`), used in messages and logs.
    pub service: String,
    /// Scheme, host, port and an optional path prefix, without a trailing slash.
    pub base_url: Url,
    pub auth: AuthConfig,
    /// Sent on every call unless the call sets the same header itself.
    pub default_headers: HeaderMap,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// The roots an `https` server's certificate must chain to, for the service and its
    /// token endpoint: the system's store when `None`, else only these (`{NAME}_CA_FILE`).
    pub ca_file: Option<CaFile>,
    /// How attempts are spread over the service's addresses and when one is ejected.
    pub balancer: BalancerConfig,
    /// How often the base URL's host name is resolved again.
    pub resolve_every: Duration,
    /// The service's addresses, when given (`{NAME}_ADDRESSES`) rather than resolved.
    pub addresses: Option<Vec<SocketAddr>>,
}

/// The certificates of a CA file, trusted instead of the system's store: a deployment's own
/// CA, so that a certificate from any public CA is refused.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    /// The certificates, trusted by the data path (rustls) and the token endpoint (reqwest).
    pub der: Vec<CertificateDer<'static>>,
}

impl CaFile {
    /// Reads the PEM certificates at `path`; `variable` names where the path came from.
    pub fn load(variable: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            variable: variable.to_owned(),
            reason,
        };
        let pem = std::fs::read(path)
            .map_err(|err| invalid(format!("cannot read `{}`: {err}", path.display())))?;
        let der = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                invalid(format!(
                    "`{}` is not a PEM file of certificates: {err}",
                    path.display()
                ))
            })?;
        if der.is_empty() {
            return Err(invalid(format!(
                "`{}` holds no certificate (PEM `BEGIN CERTIFICATE` blocks expected)",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            der,
        })
    }
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.der.len())
            .finish()
    }
}

impl ServiceClientConfig {
    /// A client for `service` at `base_url`, without auth, with default connection settings.
    pub fn new(service: impl Into<String>, base_url: Url) -> Self {
        Self {
            service: service.into(),
            base_url,
            auth: AuthConfig::None,
            default_headers: HeaderMap::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
            ca_file: None,
            balancer: BalancerConfig::default(),
            resolve_every: DEFAULT_RESOLVE_EVERY,
            addresses: None,
        }
    }

    /// Discovers `service` from the process environment (`{NAME}_URL`, `{NAME}_API_KEY`, ...).
    pub fn from_env(service: &str) -> Result<Self, ConfigError> {
        // A value that is not UTF-8 is passed on lossily, so it fails validation with a
        // message naming the variable instead of being reported as unset.
        Self::from_lookup(service, |name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Discovers `service` from `lookup`, which maps a variable name to its value.
    pub fn from_lookup(
        service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let vars = ServiceVars::new(service, lookup)?;
        let base_url = vars.base_url()?;
        let auth = AuthConfig::from_vars(&vars)?;
        let ca_file = match vars.get("CA_FILE") {
            Some(path) => Some(CaFile::load(&vars.name("CA_FILE"), Path::new(path.trim()))?),
            None => None,
        };
        let addresses = match vars.get("ADDRESSES") {
            Some(list) => Some(parse_addresses(&vars.name("ADDRESSES"), &list)?),
            None => None,
        };
        Ok(Self {
            ca_file,
            addresses,
            ..Self::new(service, base_url).with_auth(auth)
        })
    }

    pub fn with_auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Adds a header sent on every call (unless the call sets it).
    pub fn with_default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.default_headers.insert(name, value);
        self
    }

    /// Trusts only `ca_file`'s certificates for `https`.
    pub fn with_ca_file(mut self, ca_file: CaFile) -> Self {
        self.ca_file = Some(ca_file);
        self
    }

    /// Calls the service at `addresses` instead of resolving the base URL's host.
    pub fn with_addresses(mut self, addresses: Vec<SocketAddr>) -> Self {
        self.addresses = Some(addresses);
        self
    }

    /// Spreads attempts and ejects addresses as `balancer` says.
    pub fn with_balancer(mut self, balancer: BalancerConfig) -> Self {
        self.balancer = balancer;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// `10.0.0.5:8082,10.0.0.6:8082`: socket addresses, comma-separated, at least one.
fn parse_addresses(variable: &str, list: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let addresses = list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<SocketAddr>()
                .map_err(|_| ConfigError::InvalidValue {
                    variable: variable.to_owned(),
                    reason: format!("`{item}` is not an IP address with a port (`10.0.0.5:8082`)"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(ConfigError::InvalidValue {
            variable: variable.to_owned(),
            reason: "no address in the list".into(),
        });
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_name_addresses_and_a_wrong_one_is_named() {
        let config = ServiceClientConfig::from_lookup("storagesvc", |name| match name {
            "STORAGESVC_URL" => Some("http://storagesvc:8082".to_owned()),
            "STORAGESVC_ADDRESSES" => Some(" 10.0.0.5:8082, 10.0.0.6:8082,".to_owned()),
            _ => None,
        })
        .unwrap();
        let expected: Vec<SocketAddr> = vec![
            "10.0.0.5:8082".parse().unwrap(),
            "10.0.0.6:8082".parse().unwrap(),
        ];
        assert_eq!(config.addresses, Some(expected));
        for (list, expected) in [
            (
                "storagesvc-1:8082",
                "`storagesvc-1:8082` is not an IP address with a port",
            ),
            ("10.0.0.5", "`10.0.0.5` is not an IP address with a port"),
            (" , ", "no address in the list"),
        ] {
            let err = ServiceClientConfig::from_lookup("storagesvc", |name| match name {
                "STORAGESVC_URL" => Some("http://storagesvc:8082".to_owned()),
                "STORAGESVC_ADDRESSES" => Some(list.to_owned()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("STORAGESVC_ADDRESSES"), "{err}");
            assert!(err.contains(expected), "{list}: {err}");
        }
    }

    #[test]
    fn discovers_url_and_auth_from_lookup() {
        let config = ServiceClientConfig::from_lookup("storagesvc", |name| match name {
            "STORAGESVC_URL" => Some("http://storagesvc:8082/".to_owned()),
            "STORAGESVC_API_KEY" => Some("k1".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.service, "storagesvc");
        assert_eq!(config.base_url.as_str(), "http://storagesvc:8082/");
        assert!(matches!(config.auth, AuthConfig::ApiKey(_)));
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_refused_at_start_up_naming_it() {
        let dir = std::env::temp_dir().join(format!("ca-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-pem.txt");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        for (path, expected) in [
            (dir.join("missing.pem"), "cannot read"),
            (not_pem, "holds no certificate"),
        ] {
            let path = path.to_string_lossy().into_owned();
            let err = ServiceClientConfig::from_lookup("storagesvc", |name| match name {
                "STORAGESVC_URL" => Some("https://storagesvc:8082".to_owned()),
                "STORAGESVC_CA_FILE" => Some(path.clone()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("STORAGESVC_CA_FILE is invalid"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reports_the_missing_url_before_anything_else() {
        let err = ServiceClientConfig::from_lookup("storagesvc", |_| None).unwrap_err();
        assert!(
            err.to_string().starts_with("STORAGESVC_URL is not set"),
            "{err}"
        );
    }
}

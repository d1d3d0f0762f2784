//! Every address of the service, each with its own connections, and which one an attempt
//! goes to.
//!
//! A base URL whose host is a name (`storagesvc`, `tasks.storagesvc` on swarm, a headless
//! Service on Kubernetes) may stand for several replicas: the name is resolved to all of
//! its addresses, again every `resolve_every` and soon after a connection to one fails, and
//! each attempt goes to the one [`resilience::Balancer`] picks (the less loaded of two,
//! ejecting an address whose attempts keep failing until a health probe of it passes).
//! Each address has its own client pinned to it (its resolver knows only that address), so
//! its connections and pool are its own, while the request still names the host: its
//! `Host` header, and for `https` the name the certificate is checked against, are the
//! service's.
//!
//! The addresses may also be given (`{NAME}_ADDRESSES`, for a deployment without DNS for
//! its replicas): they are then used as they are, never resolved. An address's port is
//! used only when the base URL names none (the base URL's port wins).
//!
//! A base URL with an IP address has one address and is called as it is. So is a name
//! that does not resolve (yet): the attempt then goes out by name, and fails as it would
//! have without balancing, naming the DNS error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{Method, Request, Uri};
use http_body_util::Full;
use reqwest::Url;
use resilience::{Balancer, BalancerConfig, BalancerCounts, Pick};
use tokio::time::Instant;

use super::error::ConfigError;
use super::http::HttpClient;

/// How often a name is resolved again by default: replicas come and go on an orchestrator
/// within seconds, and one lookup every few seconds costs nothing.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// After a connection to an address fails, the name is resolved again this soon at most:
/// a replica replaced by the orchestrator comes back with a new address.
const RESOLVE_AFTER_FAILURE_EVERY: Duration = Duration::from_secs(1);
/// The path a health probe of an ejected address asks, below the base URL: liveness, so
/// that an address comes back as soon as its process answers, whatever its dependencies
/// (a database down fails every replica alike, which is the breaker's to judge).
pub const PROBE_PATH: &str = "/.well-known/alive";

/// Builds the client for one address (`Some`), or for the name (`None`).
pub type BuildClient = Box<dyn Fn(Option<SocketAddr>) -> HttpClient + Send + Sync>;

/// The addresses of one service and a client for each.
pub struct Endpoints {
    service: String,
    base_url: Url,
    /// The host to resolve and its port; `None` when the base URL's host is an address or
    /// the addresses were given.
    name: Option<(String, u16)>,
    /// Whether attempts are balanced over addresses (the base URL's host is a name).
    balanced: bool,
    /// The client for the name: used when nothing is resolved, and for IP base URLs.
    by_name: HttpClient,
    build: BuildClient,
    balancer: Arc<Balancer<SocketAddr>>,
    clients: Mutex<HashMap<SocketAddr, HttpClient>>,
    resolve_every: Duration,
    probe_timeout: Duration,
    resolved_at: Mutex<Option<Instant>>,
    resolving: AtomicBool,
}

/// Where one attempt goes: a client, and the balancer's pick to report on (none when the
/// attempt goes out by name).
pub struct Route<'a> {
    pub http: HttpClient,
    pick: Option<Pick<'a, SocketAddr>>,
}

impl Route<'_> {
    /// The attempt answered: a 5xx counts against the address, anything else for it.
    pub fn answered(self, status: axum::http::StatusCode) {
        if let Some(pick) = self.pick {
            if status.is_server_error() {
                pick.failed();
            } else {
                pick.succeeded();
            }
        }
    }

    /// The attempt failed without an answer (refused, reset, timed out connecting).
    pub fn unanswered(self) {
        if let Some(pick) = self.pick {
            pick.unanswered();
        }
    }

    /// The address the attempt goes to, when it was picked.
    pub fn address(&self) -> Option<SocketAddr> {
        self.pick.as_ref().map(|pick| *pick.key())
    }
}

impl Endpoints {
    /// `addresses`, when given, are used instead of resolving the base URL's host.
    pub fn new(
        service: &str,
        base_url: &Url,
        addresses: Option<&[SocketAddr]>,
        build: BuildClient,
        balancer: BalancerConfig,
        resolve_every: Duration,
        probe_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        balancer
            .validate()
            .map_err(|reason| ConfigError::InvalidValue {
                variable: format!("{service} balancing"),
                reason,
            })?;
        let name = base_url
            .domain()
            .zip(base_url.port_or_known_default())
            .map(|(domain, port)| (domain.to_owned(), port));
        let balanced = name.is_some();
        if addresses.is_some() && !balanced {
            return Err(ConfigError::InvalidValue {
                variable: format!("{service} addresses"),
                reason: "addresses can only be given for a base URL whose host is a name \
                    (the name is still sent as the Host and checked against the certificate)"
                    .into(),
            });
        }
        let endpoints = Self {
            service: service.to_owned(),
            base_url: base_url.clone(),
            name: if addresses.is_some() { None } else { name },
            balanced,
            by_name: build(None),
            build,
            balancer: Arc::new(Balancer::new(balancer)),
            clients: Mutex::new(HashMap::new()),
            resolve_every,
            probe_timeout,
            resolved_at: Mutex::new(None),
            resolving: AtomicBool::new(false),
        };
        if let Some(addresses) = addresses {
            endpoints.apply(addresses);
        }
        Ok(endpoints)
    }

    /// The balancer's counts, when the service is called by name.
    pub fn counts(&self) -> Option<BalancerCounts> {
        self.balanced.then(|| self.balancer.counts())
    }

    /// The addresses known now.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.balancer.keys()
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<SocketAddr, HttpClient>> {
        // A map of clients, consistent after every statement.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where the next attempt goes: not to `avoid` (the call's last attempt's address)
    /// while another address is in rotation. Resolves the name first if it never was,
    /// starts a resolution in the background when the last is old, and sends the probes
    /// due.
    pub async fn route(self: &Arc<Self>, avoid: Option<SocketAddr>) -> Route<'_> {
        if !self.balanced {
            return self.by_name();
        }
        if self.name.is_some() {
            let last = *self
                .resolved_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match last {
                None => self.resolve().await,
                Some(at) if at.elapsed() >= self.resolve_every => self.resolve_in_background(),
                Some(_) => {}
            }
        }
        self.send_due_probes();
        let Some(pick) = self.balancer.pick_except(avoid.as_ref()) else {
            return self.by_name();
        };
        let http = self.clients().get(pick.key()).cloned();
        match http {
            Some(http) => Route {
                http,
                pick: Some(pick),
            },
            // Dropped from the addresses between the pick and here.
            None => {
                pick.unanswered();
                self.by_name()
            }
        }
    }

    /// A connection failed: its replica may have been replaced by one at a new address, so
    /// the name is resolved again, at most once a second.
    pub fn connection_failed(self: &Arc<Self>) {
        if self.name.is_none() {
            return;
        }
        let due = self
            .resolved_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none_or(|at| at.elapsed() >= RESOLVE_AFTER_FAILURE_EVERY);
        if due {
            self.resolve_in_background();
        }
    }

    fn by_name(&self) -> Route<'_> {
        Route {
            http: self.by_name.clone(),
            pick: None,
        }
    }

    fn resolve_in_background(self: &Arc<Self>) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let endpoints = Arc::clone(self);
        tokio::spawn(async move {
            endpoints.resolve().await;
            endpoints.resolving.store(false, Ordering::Release);
        });
    }

    /// Resolves the name, within the probe timeout; on failure the addresses stay as they
    /// were (and the next attempt tries again after `resolve_every`).
    async fn resolve(&self) {
        let Some((host, port)) = &self.name else {
            return;
        };
        let lookup = tokio::net::lookup_host((host.as_str(), *port));
        let found: Vec<SocketAddr> = match tokio::time::timeout(self.probe_timeout, lookup).await {
            // Sorted: a DNS server that rotates its answers (Docker's does) has not changed
            // the addresses.
            Ok(Ok(addresses)) => {
                let mut addresses: Vec<SocketAddr> = addresses.collect();
                addresses.sort();
                addresses
            }
            Ok(Err(err)) => {
                tracing::warn!(service = %self.service, %host, %err, "resolving the service's name failed; keeping its known addresses");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(service = %self.service, %host, "resolving the service's name timed out; keeping its known addresses");
                Vec::new()
            }
        };
        *self
            .resolved_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        if found.is_empty() {
            return;
        }
        let before = self.balancer.keys();
        self.apply(&found);
        let after = self.balancer.keys();
        if before != after {
            tracing::info!(
                service = %self.service,
                %host,
                addresses = ?after,
                "the service's addresses changed"
            );
        }
    }

    /// Makes `found` the addresses, each with its client.
    fn apply(&self, found: &[SocketAddr]) {
        {
            let mut clients = self.clients();
            clients.retain(|address, _| found.contains(address));
            for address in found {
                clients
                    .entry(*address)
                    .or_insert_with(|| (self.build)(Some(*address)));
            }
        }
        self.balancer.set(found.iter().copied());
    }

    /// One health probe for each address whose ejection is over, each on its own task.
    fn send_due_probes(&self) {
        for address in self.balancer.due_probes() {
            let http = self.clients().get(&address).cloned();
            let (Some(http), Some(url)) = (http, probe_url(&self.base_url)) else {
                self.balancer.probed(&address, false);
                continue;
            };
            let balancer = Arc::clone(&self.balancer);
            let timeout = self.probe_timeout;
            let service = self.service.clone();
            tokio::spawn(async move {
                let outcome =
                    tokio::time::timeout(timeout, http.request(probe_request(&url))).await;
                let passed = matches!(&outcome, Ok(Ok(response)) if response.status().is_success());
                balancer.probed(&address, passed);
                let why = match &outcome {
                    Ok(Ok(response)) => format!("answered {}", response.status().as_u16()),
                    Ok(Err(err)) => format!("failed: {err}"),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                if passed {
                    tracing::info!(%service, %address, "an ejected address passed its health probe and is back in rotation");
                } else {
                    tracing::info!(%service, %address, probe = %why, "an ejected address failed its health probe and stays out of rotation");
                }
            });
        }
    }
}

/// A `GET` of the probe's URL.
fn probe_request(uri: &Uri) -> Request<Full<axum::body::Bytes>> {
    let mut request = Request::new(Full::default());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri.clone();
    request
}

/// The probe's URL: [`PROBE_PATH`] below the base URL's path.
fn probe_url(base_url: &Url) -> Option<Uri> {
    let base = base_url.as_str().trim_end_matches('/');
    format!("{base}{PROBE_PATH}").parse().ok()
}

//! Everything both services need, written once.
//!
//! A service is a router of its own routes plus what lives here: inbound credentials
//! ([`auth`]), a book on the wire ([`books`]), configuration helpers
//! ([`config`]), logs ([`telemetry`]), errors as RFC 9457 problem documents ([`problem`]),
//! extractors that turn bad input into those problems ([`extract`]), liveness and readiness
//! ([`health`]), Prometheus metrics ([`metrics`]), what both OpenAPI documents share
//! ([`openapi`]), a server that drains on SIGTERM
//! ([`server`]), and what crosses service boundaries with a request: its trace
//! ([`trace_context`]) and its caller's deadline ([`deadline`]).

pub mod auth;
pub mod books;
pub mod client;
pub mod config;
pub mod deadline;
pub mod extract;
pub mod health;
pub mod healthcheck;
pub mod log_throttle;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod trace_context;

pub use problem::Problem;

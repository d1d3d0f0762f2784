//! booksvc: the public API in front of storagesvc.
//!
//! A read goes `startup` (router, layers) → `read_path` (`request` parses it, `coalesce`,
//! then fallback) →
//! `upstream` (the
//! service client under the `resilience` crate) → storagesvc, and back through `last_good`
//! (stored on success, recalled on failure), marked with `cache_status`. A write goes
//! `write_path` → `upstream`, never through the store. `openapi` describes all of it,
//! from the same types.

pub mod cache_status;
mod coalesce;
mod config;
pub mod last_good;
pub mod openapi;
mod read_path;
pub mod request;
mod startup;
mod upstream;
mod write_path;

pub use config::Config;
pub use startup::{Application, LAST_GOOD_PREFIX};

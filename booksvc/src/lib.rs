//! booksvc: the public API in front of storagesvc.
//!
//! A read goes `startup` (router, layers) → `read_path` (`coalesce`, then fallback) →
//! `upstream` (the
//! service client under `shared::resilience`) → storagesvc, and back through `last_good`
//! (stored on success, recalled on failure), marked with `cache_status`.

pub mod cache_status;
mod coalesce;
mod config;
pub mod last_good;
mod read_path;
mod startup;
mod upstream;

pub use config::Config;
pub use startup::Application;

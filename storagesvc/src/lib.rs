//! storagesvc: the books API on PostgreSQL.
//!
//! A request goes `startup` (router and layers) → `shared::auth` (service credentials) →
//! `admission` (refused at once while the database is down or the pool is busy) →
//! `routes` (HTTP in and out) → `domain` (parsed, valid input) → `db` (bounded SQL) and
//! back; `error` turns every failure on the way into one problem+json response. `openapi`
//! describes all of it, from the same types.

mod admission;
mod config;
mod db;
mod domain;
mod error;
mod faults;
pub mod hash_password;
pub mod openapi;
mod reachability;
mod routes;
mod startup;

pub use config::Config;
pub use startup::Application;

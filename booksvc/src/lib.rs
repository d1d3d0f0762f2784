//! booksvc: the public API in front of storagesvc.
//!
//! Built so far: the last-good store (`last_good`) and the `Cache-Status` header
//! (`cache_status`). The read path that composes them with the resilient client, and the
//! service around it, come next.

pub mod cache_status;
pub mod last_good;

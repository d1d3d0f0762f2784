//! booksvc: the public API in front of storagesvc.
//!
//! The resilient read path and the last-good store are built in the next step of the
//! project; this crate exists now so the workspace has its final shape.

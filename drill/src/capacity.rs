//! storagesvc's capacity: how many reads a second it answers 2xx when asked as fast as it
//! can answer, measured with a closed loop straight against it (bearer token, no proxy).
//! The overload scenario measures it with storagesvc's CPU limited as during its fault,
//! and sends twice that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Requests in flight at once: enough to keep a storagesvc with a tenth of a CPU busy
/// through its CPU quota's pauses.
pub const WORKERS: usize = 32;
/// The unmeasured start, and the measured run after it.
pub const WARMUP: Duration = Duration::from_secs(2);
pub const MEASURED: Duration = Duration::from_secs(8);

/// The keys the overload scenario reads: one-book pages, each its own cached answer in
/// booksvc and in nginx. Past the last book a page is an empty list, still a `200`.
pub const KEYS: u64 = 500;

/// The page of key `index` (taken modulo [`KEYS`]) under `books_url` (`…/books`).
pub fn key_url(books_url: &str, index: u64) -> String {
    format!("{books_url}?limit=1&offset={}", index % KEYS)
}

/// Reads `books_url`'s keys in turn with [`WORKERS`] closed loops; the 2xx answers a
/// second over [`MEASURED`].
pub async fn measure(books_url: &str, token: &str) -> anyhow::Result<f64> {
    let client = shared::client::http_client_builder()
        .build()
        .context("building the HTTP client")?;
    let started = Instant::now();
    let (measure_from, measure_until) = (started + WARMUP, started + WARMUP + MEASURED);
    let next_key = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (client, next_key, ok) = (client.clone(), Arc::clone(&next_key), Arc::clone(&ok));
        let (url, token) = (books_url.to_owned(), token.to_owned());
        workers.spawn(async move {
            while Instant::now() < measure_until {
                let key = next_key.fetch_add(1, Ordering::Relaxed);
                let answer = client
                    .get(key_url(&url, key))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let answered = match answer {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok()
                    }
                    _ => false,
                };
                if answered && (measure_from..measure_until).contains(&Instant::now()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Ok(ok.load(Ordering::Relaxed) as f64 / MEASURED.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_book_pages_that_repeat() {
        assert_eq!(
            key_url("http://x/books", 7),
            "http://x/books?limit=1&offset=7"
        );
        assert_eq!(
            key_url("http://x/books", KEYS + 7),
            key_url("http://x/books", 7)
        );
    }
}

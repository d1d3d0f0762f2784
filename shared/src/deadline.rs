//! The caller's deadline, carried from one service to the next.
//!
//! A caller that will wait only so long for an answer says so in `x-request-timeout-ms`
//! (booksvc sends what is left of each attempt's budget). [`propagate`], a server
//! middleware, turns that into the instant by which the answer must leave, and makes it
//! current while the request is handled. Work bounded with [`bounded`] then gives up in
//! time to answer: a `503` the caller still reads is worth more than a result it has
//! stopped waiting for, and it lets the caller tell "the database is down" from "no
//! answer" (which, for a write, means "maybe applied").
//!
//! Like the trace context, the deadline lives in a tokio task-local of the task handling
//! the request, not in a global.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

/// Milliseconds the caller will wait for the answer to this request.
pub const REQUEST_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// Budgets longer than this are read as this: a deadline an hour away bounds nothing.
const LONGEST_BUDGET: Duration = Duration::from_secs(3600);

/// Kept back from the caller's budget for the answer's way back: a tenth of it, at most
/// 50 ms.
fn margin(budget: Duration) -> Duration {
    (budget / 10).min(Duration::from_millis(50))
}

tokio::task_local! {
    static ANSWER_BY: Instant;
}

/// The caller's budget as the header states it, if it is a number of milliseconds.
pub fn budget_from_headers(headers: &HeaderMap) -> Option<Duration> {
    let millis: u64 = headers
        .get(REQUEST_TIMEOUT_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis).min(LONGEST_BUDGET))
}

/// When the answer to the request handled by this task must leave, if its caller said.
pub fn answer_by() -> Option<Instant> {
    ANSWER_BY.try_with(|at| *at).ok()
}

/// `bound`, shortened to the time left before the caller's deadline when there is one.
pub fn bounded(bound: Duration) -> Duration {
    match answer_by() {
        Some(at) => bound.min(at.saturating_duration_since(Instant::now())),
        None => bound,
    }
}

/// Server middleware: makes the caller's deadline current while the request is handled.
/// A missing or malformed header leaves the request unbounded by it (the service's own
/// limits still hold).
pub async fn propagate(request: Request, next: Next) -> Response {
    match budget_from_headers(request.headers()) {
        Some(budget) => {
            let answer_by = Instant::now() + budget.saturating_sub(margin(budget));
            ANSWER_BY.scope(answer_by, next.run(request)).await
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_TIMEOUT_HEADER,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn the_header_is_whole_milliseconds() {
        assert_eq!(
            budget_from_headers(&headers("450")),
            Some(Duration::from_millis(450))
        );
        assert_eq!(budget_from_headers(&headers("-1")), None);
        assert_eq!(budget_from_headers(&headers("0.5")), None);
        assert_eq!(budget_from_headers(&headers("soon")), None);
        assert_eq!(budget_from_headers(&HeaderMap::new()), None);
        assert_eq!(
            budget_from_headers(&headers("99999999999")),
            Some(LONGEST_BUDGET)
        );
        // Capped before it meets the clock: the largest u64 is an hour; beyond u64 the
        // header is malformed, and the service's own limits hold.
        assert_eq!(
            budget_from_headers(&headers("18446744073709551615")),
            Some(LONGEST_BUDGET)
        );
        assert_eq!(
            budget_from_headers(&headers("99999999999999999999999")),
            None
        );
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_budget_up_to_50_ms() {
        assert_eq!(
            margin(Duration::from_millis(200)),
            Duration::from_millis(20)
        );
        assert_eq!(
            margin(Duration::from_millis(500)),
            Duration::from_millis(50)
        );
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_shrink_to_the_time_left_and_only_inside_a_request() {
        let second = Duration::from_secs(1);
        assert_eq!(
            bounded(second),
            second,
            "no caller deadline outside a request"
        );
        let at = Instant::now() + Duration::from_millis(450);
        ANSWER_BY
            .scope(at, async {
                assert_eq!(bounded(second), Duration::from_millis(450));
                assert_eq!(
                    bounded(Duration::from_millis(100)),
                    Duration::from_millis(100)
                );
                tokio::time::sleep(Duration::from_millis(400)).await;
                assert_eq!(bounded(second), Duration::from_millis(50));
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(bounded(second), Duration::ZERO);
            })
            .await;
    }
}

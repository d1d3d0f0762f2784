//! The read path, in the order it runs (`docs/architecture.md`, "The read path"):
//!
//! 1. **Parse, then key**: the request becomes a [`BookQuery`]; malformed input is a `400`
//!    from booksvc, never sent upstream. The upstream target and the cache key are built
//!    from the parsed value.
//! 2. **Coalesce**: a read joins the call in flight for its key, or starts one. The call
//!    runs on its own task (the read's span and trace context go with it): it goes on within its deadline
//!    after the read was answered from the store, and a success refreshes the store once,
//!    however many readers share it.
//! 3. **Stale-first**: a read whose key has a stored answer gets whichever comes first: the
//!    fresh answer, or the stored one as soon as the call fails in any way (its first failed
//!    attempt is enough: retries go on in the background), is refused (breaker open,
//!    concurrency limit reached) or is later than `STALE_AFTER`. With nothing stored, the
//!    read waits for the call and gets `503` + `Retry-After` if it fails.
//!
//! Steps 4 to 8 (concurrency limit, deadline, retries with their budget, breaker, attempt
//! timeout) are the call itself: [`Upstream::get_watched`], in the `resilience` crate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use resilience::{BreakerState, CallError, StaleAfter};
use shared::Problem;
use shared::openapi::{Answers, json_response};
use shared::problem::{INVALID_PATH, INVALID_QUERY, NOT_FOUND, ProblemType};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use utoipa::openapi::Ref;
use utoipa::openapi::schema::ArrayBuilder;

use crate::cache_status;
use crate::coalesce::{Coalescer, EntryId};
use crate::last_good::{CacheKey, LastGoodStore, StoredResponse};
use crate::request::{BookId, BookQuery};
use crate::upstream::{AttemptValue, Upstream, UpstreamResponse};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A read that storagesvc could not answer, with nothing stored for it.
pub const BOOKS_UNAVAILABLE: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "books-unavailable",
    "storagesvc failed, refused the call or the breaker is open, and no earlier answer is \
     stored for this request; retry after Retry-After",
);

/// booksvc cannot make the call as configured (an invalid target, a credential it cannot
/// obtain); nothing was sent.
pub const UPSTREAM_MISCONFIGURED: ProblemType = ProblemType::new(
    StatusCode::BAD_GATEWAY,
    "upstream-misconfigured",
    "booksvc cannot call storagesvc as configured (its credential or address); nothing \
     was sent, the reason is in booksvc's log",
);

/// What a read waits for before it gives up on a fresh answer, given a stored one.
#[derive(Debug, Clone, Copy)]
pub struct StalePolicy {
    /// When a late fresh answer gives way to the stored one.
    pub stale_after: StaleAfter,
    /// A stored answer older than this is not served for lateness alone (RFC 5861's
    /// `stale-while-revalidate`); for a failure it is (`stale-if-error`, up to `CACHE_TTL`).
    pub stale_while_late: Duration,
}

/// Why a read was answered from the store: the `Cache-Status` detail and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Why {
    /// An attempt failed, or the call did.
    Failed,
    /// The fresh answer is later than the stale-after bound.
    Late,
    /// The breaker is open (or its one probe is in flight).
    BreakerOpen,
    /// The concurrency limit refused the call.
    Shed,
}

impl Why {
    const ALL: [Why; 4] = [Why::Failed, Why::Late, Why::BreakerOpen, Why::Shed];

    fn as_str(self) -> &'static str {
        match self {
            Why::Failed => "upstream-unavailable",
            Why::Late => "upstream-late",
            Why::BreakerOpen => "breaker-open",
            Why::Shed => "shed",
        }
    }

    fn of(failure: &CallError<AttemptValue>) -> Self {
        match failure {
            CallError::BreakerOpen(_) => Why::BreakerOpen,
            CallError::Shed => Why::Shed,
            CallError::Failed { .. } => Why::Failed,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    /// `memory`, `redis` or `none` (nothing stored: 503).
    source: &'static str,
    /// The `Cache-Status` detail: `upstream-unavailable`, `upstream-late`, `breaker-open`,
    /// `shed`.
    reason: &'static str,
}

/// What one upstream read produced, shared by every coalesced caller.
type CallResult = Result<AttemptValue, CallError<AttemptValue>>;

/// One call in flight, as its readers hold it: its result when it ends, whether an attempt
/// has failed yet, and when it started (lateness is the call's, not each reader's).
#[derive(Clone)]
struct Call {
    result: Shared<BoxFuture<'static, Arc<CallResult>>>,
    attempt_failed: watch::Receiver<bool>,
    started: Instant,
}

/// What the read path needs.
#[derive(Clone)]
pub struct ReadPath {
    pub upstream: Upstream,
    pub store: LastGoodStore,
    stale: StalePolicy,
    in_flight: Arc<Coalescer<Call>>,
    fallbacks: Family<FallbackLabels, Counter>,
}

impl ReadPath {
    pub fn new(
        upstream: Upstream,
        store: LastGoodStore,
        stale: StalePolicy,
        registry: &mut Registry,
    ) -> Self {
        let fallbacks = Family::default();
        registry.register(
            "fallback_answers",
            "Reads answered without a fresh upstream response, by where the answer came from and why",
            fallbacks.clone(),
        );
        Self {
            upstream,
            store,
            stale,
            in_flight: Arc::new(Coalescer::new()),
            fallbacks,
        }
    }
}

/// Every `Cache-Status` a read's `200` may carry: fresh, or stored for any reason.
fn read_cache_statuses() -> Vec<String> {
    std::iter::once(cache_status::forwarded_and_stored())
        .chain(Why::ALL.map(|why| cache_status::stale_hit(why.as_str())))
        .collect()
}

/// The `200` of a read: `body`, fresh or stored.
fn read_ok(
    body: impl Into<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
) -> utoipa::openapi::response::Response {
    json_response(
        "storagesvc's answer byte for byte (`Cache-Status: booksvc; fwd=miss; stored`), or, \
         when storagesvc fails, is refused or is late, the last good answer to the same \
         request (`Cache-Status: booksvc; hit; detail=...`, with `Age`).",
        body,
        &[
            cache_status::header(read_cache_statuses(), true),
            cache_status::age_header(),
        ],
    )
}

shared::response!(
    /// The `200` of `GET /` and `GET /books`.
    BooksPage = read_ok(ArrayBuilder::new().items(Ref::from_schema_name("Book")))
);

shared::response!(
    /// The `200` of `GET /books/{id}`.
    OneBook = read_ok(Ref::from_schema_name("Book"))
);

/// What every read may answer besides its own: storagesvc out of reach with nothing
/// stored, or booksvc unable to call it, on top of the server's own answers.
fn read_answers() -> Answers {
    Answers::new().problems(&[BOOKS_UNAVAILABLE, UPSTREAM_MISCONFIGURED])
}

shared::answers!(pub ListAnswers = read_answers().problems(&[INVALID_QUERY]));

shared::answers!(pub OneAnswers = read_answers()
    .problems(&[INVALID_PATH, INVALID_QUERY, NOT_FOUND])
    .header(404, cache_status::header(vec![cache_status::forwarded_not_stored()], false)));

/// The operations [`read`] serves, one per route, for the OpenAPI document.
pub struct ReadRoot;
pub struct ReadList;
pub struct ReadOne;

/// `GET /`, `GET /books`, `GET /books/{id}`.
#[utoipa::path(
    get,
    path = "/",
    impl_for = ReadRoot,
    operation_id = "listBooksAtRoot",
    summary = "List books (the root)",
    description = "The same as `GET /books`: one request and one stored answer with it.",
    params(BookQuery),
    responses((status = 200, response = inline(BooksPage)), ListAnswers)
)]
#[utoipa::path(
    get,
    path = "/books",
    impl_for = ReadList,
    operation_id = "listBooks",
    summary = "List books",
    description = "One page of the books, ordered by id. Public. Parsed before anything is \
        sent: storagesvc is asked `/books?limit=N&offset=M`, built from the parsed values.",
    params(BookQuery),
    responses((status = 200, response = inline(BooksPage)), ListAnswers)
)]
#[utoipa::path(
    get,
    path = "/books/{id}",
    impl_for = ReadOne,
    operation_id = "getBook",
    summary = "Get a book",
    description = "Public. Takes no query parameters. A `404` is storagesvc's, passed on \
        (`Cache-Status: booksvc; fwd=miss`), never stored.",
    params(BookId),
    responses((status = 200, response = inline(OneBook)), OneAnswers)
)]
pub async fn read(State(path): State<Arc<ReadPath>>, uri: Uri) -> Response {
    // 1. Parse, then key: only the parsed value is used from here on.
    let query = match BookQuery::from_uri(&uri) {
        Ok(query) => query,
        Err(invalid) => return invalid.into_response(),
    };
    let key = query.cache_key();

    // 2. Coalesce. While the breaker is not closed, a call in flight for this key is likely
    //    the one probe storagesvc is allowed, which takes as long as storagesvc needs to
    //    fail: a stored answer now is better than joining it.
    let breaker_closed = || path.upstream.resilience().breaker.state() == BreakerState::Closed;
    let start = |id| path.start_call(&query, &key, id);
    let call = match path.in_flight.join_if_or_start(&key, breaker_closed, start) {
        Some(call) => call,
        None => {
            if let Some(answer) = path.answer_from_store(&key, Why::BreakerOpen).await {
                return answer;
            }
            path.in_flight.join_or_start(&key, start)
        }
    };

    // 3. Stale-first: the fresh answer, or the stored one at the first sign of trouble.
    let stale_after = path
        .stale
        .stale_after
        .bound(&path.upstream.resilience().latency);
    match first_of(&call, stale_after).await {
        First::Answer(result) => path.answer(&key, &result).await,
        First::Trouble(why) => {
            let max_age = match why {
                Why::Late => Some(path.stale.stale_while_late),
                _ => None,
            };
            if let Some(answer) = path.answer_from_store_within(&key, why, max_age).await {
                return answer;
            }
            // Nothing stored (or too old to serve for lateness): wait for the call.
            let result = call.result.await;
            path.answer(&key, &result).await
        }
    }
}

/// What came first for a read: the call's result, or a reason to stop waiting for it.
enum First {
    Answer(Arc<CallResult>),
    Trouble(Why),
}

/// The call's result, or its first failed attempt, or the stale-after bound passing since
/// the call started, whichever comes first. A read that joins a call already late is told
/// at once, as every other reader of that call is: the call is late, whoever waits for it.
async fn first_of(call: &Call, stale_after: Option<Duration>) -> First {
    let mut attempt_failed = call.attempt_failed.clone();
    let failed = async move {
        // `wait_for` also sees a failure that happened before this read joined. A closed
        // channel means the call ended: its result is about to be ready.
        if attempt_failed.wait_for(|failed| *failed).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let late = async {
        match stale_after {
            Some(after) => tokio::time::sleep_until(call.started + after).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // A result that is already there wins over a failure reported before it.
        biased;
        result = call.result.clone() => First::Answer(result),
        () = failed => First::Trouble(Why::Failed),
        () = late => First::Trouble(Why::Late),
    }
}

impl ReadPath {
    /// Starts the call for `key` on its own task (entry `id` of the coalescer): it asks
    /// storagesvc, stores a success and removes its coalescer entry when it ends.
    fn start_call(&self, query: &BookQuery, key: &CacheKey, id: EntryId) -> Call {
        let call_span = shared::trace_only_span!(
            "call",
            otel.name = "call storagesvc",
            booksvc.cache.key = key.as_str(),
        );
        let (report_failure, attempt_failed) = watch::channel(false);
        let upstream = self.upstream.clone();
        let store = self.store.clone();
        let in_flight = Arc::clone(&self.in_flight);
        let target = query.upstream_target();
        let key = key.clone();
        let task = async move {
            // Read before the fetch: if a write invalidates the store meanwhile, this answer
            // may predate it and is not kept.
            let generation = store.generation();
            // The call's and the store's futures are many kilobytes each: boxed, this task's
            // own future is a few pointers, and moving it (as it is wrapped and spawned)
            // copies those, not the kilobytes.
            let result = Box::pin(upstream.get_watched(&target, |_| {
                report_failure.send_replace(true);
            }))
            .await;
            if let Ok(Ok(response)) = &result
                && response.status.is_success()
            {
                let stored = StoredResponse {
                    body: response.body.clone(),
                    content_type: content_type_text(response),
                    fetched_at: SystemTime::now(),
                    generation,
                };
                Box::pin(store.remember(key.clone(), stored)).await;
            }
            in_flight.finish(&key, id);
            Arc::new(result)
        };
        // The task carries the read's span (its log lines) and trace context (the
        // `traceparent` and `x-request-id` sent upstream), which a new task does not inherit.
        // While traces are exported it runs in a span of its own, the child of the read's:
        // the read's span then ends when the read is answered, not when the call does
        // (which may be later: retries go on after a stored answer was served).
        let task_span = if call_span.is_disabled() {
            tracing::Span::current()
        } else {
            call_span
        };
        // Boxed: the call's future (policies, client, body) is many kilobytes, and a task
        // holds its future by value; tokio moves it as it spawns the task and again as the
        // result is taken out. Behind a box each move is a pointer: a copy of the whole
        // future on every read was a fifth of booksvc's instructions per proxied read.
        let task = Box::pin(task.instrument(task_span));
        let handle = match shared::trace_context::current() {
            Some(context) => tokio::spawn(shared::trace_context::scope(context, task)),
            None => tokio::spawn(task),
        };
        let result = async move {
            match handle.await {
                Ok(result) => result,
                // The task panicked: a bug, answered as a failed call, not a hang.
                Err(err) => {
                    tracing::error!(%err, "the upstream call's task failed");
                    Arc::new(Err(CallError::Failed {
                        outcome: resilience::AttemptOutcome::Unreachable,
                        last: None,
                        attempts: 0,
                    }))
                }
            }
        }
        .boxed()
        .shared();
        Call {
            result,
            attempt_failed,
            started: Instant::now(),
        }
    }

    /// The answer for a call's result: storagesvc's, or the store's, or a problem.
    async fn answer(&self, key: &CacheKey, result: &CallResult) -> Response {
        match result {
            Ok(Ok(response)) if response.status.is_success() => {
                forwarded(response.clone(), cache_status::forwarded_and_stored())
            }
            // A 4xx is storagesvc's answer to a wrong request: passed on, never stored.
            Ok(Ok(response)) => forwarded(response.clone(), cache_status::forwarded_not_stored()),
            Ok(Err(reason)) => {
                // The reason may name a token URL or an address: the log has it, the caller not.
                tracing::error!(%reason, "storagesvc cannot be asked");
                Problem::of(
                    UPSTREAM_MISCONFIGURED,
                    "booksvc cannot call storagesvc as configured; the error is in its log",
                )
                .into_response()
            }
            Err(failure) => self.fall_back(key, failure).await,
        }
    }

    /// A failed call: the stored answer, or `503` + `Retry-After` with nothing stored.
    async fn fall_back(&self, key: &CacheKey, failure: &CallError<AttemptValue>) -> Response {
        let why = Why::of(failure);
        if let Some(answer) = self.answer_from_store(key, why).await {
            return answer;
        }
        let retry_in = match failure {
            CallError::BreakerOpen(open) => open.retry_in,
            CallError::Shed => crate::upstream::SHED_RETRY_AFTER,
            CallError::Failed { .. } => Duration::from_secs(1),
        };
        self.count_fallback("none", why);
        let reason = describe(failure);
        tracing::warn!(key = key.as_str(), %reason, "storagesvc failed and no last good answer is stored");
        Problem::unavailable(
            BOOKS_UNAVAILABLE,
            format!(
                "storagesvc is unavailable ({reason}) and no earlier answer is stored for this request"
            ),
            retry_in,
        )
        .into_response()
    }

    async fn answer_from_store(&self, key: &CacheKey, why: Why) -> Option<Response> {
        self.answer_from_store_within(key, why, None).await
    }

    /// The last good answer for `key` (no older than `max_age`, if given), marked stale and
    /// counted, if one is stored.
    async fn answer_from_store_within(
        &self,
        key: &CacheKey,
        why: Why,
        max_age: Option<Duration>,
    ) -> Option<Response> {
        // The fallback decision, for traces: why the read stopped waiting for storagesvc,
        // and what answered it (`none`: nothing stored, or too old to serve for lateness).
        let span = shared::trace_only_span!(
            "fallback",
            booksvc.fallback.reason = why.as_str(),
            booksvc.store.source = "none",
        );
        let recalled = self.store.recall(key).instrument(span.clone()).await;
        let (stored, source) = recalled?;
        let age = stored.age(SystemTime::now());
        if max_age.is_some_and(|max_age| age > max_age) {
            return None;
        }
        span.record("booksvc.store.source", source.as_str());
        self.count_fallback(source.as_str(), why);
        tracing::info!(
            key = key.as_str(),
            reason = why.as_str(),
            source = source.as_str(),
            "answering from the last-good store"
        );
        Some(stale(&stored, why, age))
    }

    fn count_fallback(&self, source: &'static str, why: Why) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                source,
                reason: why.as_str(),
            })
            .inc();
    }
}

fn describe(failure: &CallError<AttemptValue>) -> String {
    match failure {
        CallError::BreakerOpen(open) => format!("circuit open for another {:?}", open.retry_in),
        CallError::Shed => "too many calls to storagesvc in flight".to_owned(),
        CallError::Failed {
            outcome, attempts, ..
        } => {
            format!("{} after {attempts} attempt(s)", outcome.class())
        }
    }
}

fn content_type_text(response: &UpstreamResponse) -> String {
    response
        .content_type()
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_owned()
}

/// storagesvc's answer as it came (status, body, the headers it passes on), marked with
/// `cache_status`.
pub fn forwarded(response: UpstreamResponse, cache_status: String) -> Response {
    let mut answer = (response.status, response.headers, response.body).into_response();
    insert_text(answer.headers_mut(), CACHE_STATUS, &cache_status);
    answer
}

/// The stored body byte for byte, marked stale with `Cache-Status` (saying why) and `Age`.
fn stale(stored: &StoredResponse, why: Why, age: Duration) -> Response {
    let mut answer = (StatusCode::OK, stored.body.clone()).into_response();
    let headers = answer.headers_mut();
    insert_text(headers, header::CONTENT_TYPE, &stored.content_type);
    insert_text(
        headers,
        CACHE_STATUS,
        &cache_status::stale_hit(why.as_str()),
    );
    insert_text(headers, header::AGE, &cache_status::age_seconds(age));
    answer
}

fn insert_text(headers: &mut axum::http::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use resilience::{AttemptOutcome, BreakerOpen};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A call whose result comes after `answers_in`, and whose first attempt fails after
    /// `fails_in`, if given.
    fn scripted_call(answers_in: Duration, fails_in: Option<Duration>) -> Call {
        let (report_failure, attempt_failed) = watch::channel(false);
        let result = async move {
            if let Some(fails_in) = fails_in {
                tokio::time::sleep(fails_in).await;
                report_failure.send_replace(true);
            }
            tokio::time::sleep(answers_in.saturating_sub(fails_in.unwrap_or_default())).await;
            let result: CallResult = Err(CallError::Failed {
                outcome: AttemptOutcome::ServerError,
                last: None,
                attempts: 3,
            });
            Arc::new(result)
        };
        let result = tokio::spawn(result)
            .map(|joined| joined.unwrap())
            .boxed()
            .shared();
        Call {
            result,
            attempt_failed,
            started: Instant::now(),
        }
    }

    async fn decide(call: Call, stale_after: Option<Duration>) -> (&'static str, Duration) {
        let started = Instant::now();
        let first = match first_of(&call, stale_after).await {
            First::Answer(_) => "answer",
            First::Trouble(why) => why.as_str(),
        };
        (first, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_answer_in_time_is_waited_for() {
        let call = scripted_call(ms(30), None);
        assert_eq!(decide(call, Some(ms(60))).await, ("answer", ms(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_failed_attempt_ends_the_wait_while_retries_go_on() {
        let call = scripted_call(ms(1200), Some(ms(50)));
        assert_eq!(
            decide(call.clone(), Some(ms(500))).await,
            ("upstream-unavailable", ms(50))
        );
        // A reader who joins after the failure is told at once.
        assert_eq!(
            decide(call, Some(ms(500))).await,
            ("upstream-unavailable", ms(0))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_gives_way_at_the_stale_after_bound() {
        let call = scripted_call(ms(2000), None);
        assert_eq!(decide(call, Some(ms(60))).await, ("upstream-late", ms(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_joining_a_late_call_waits_only_what_is_left_of_the_bound() {
        let call = scripted_call(ms(2000), None);
        tokio::time::sleep(ms(45)).await;
        // Joined 45 ms into the call: the bound (60 ms) passes 15 ms later.
        assert_eq!(
            decide(call.clone(), Some(ms(60))).await,
            ("upstream-late", ms(15))
        );
        // Joined after the bound: told at once.
        assert_eq!(decide(call, Some(ms(60))).await, ("upstream-late", ms(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn with_stale_after_off_only_a_failure_ends_the_wait() {
        let call = scripted_call(ms(2000), None);
        assert_eq!(decide(call, None).await, ("answer", ms(2000)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_call_is_answered_at_once_and_says_why() {
        for (refusal, why) in [
            (
                CallError::BreakerOpen(BreakerOpen { retry_in: ms(900) }),
                "breaker-open",
            ),
            (CallError::Shed, "shed"),
        ] {
            let (_never_fails, attempt_failed) = watch::channel(false);
            let result: CallResult = Err(refusal);
            let call = Call {
                result: futures::future::ready(Arc::new(result)).boxed().shared(),
                attempt_failed,
                started: Instant::now(),
            };
            let started = Instant::now();
            let First::Answer(result) = first_of(&call, Some(ms(60))).await else {
                panic!("a refusal is the call's result, not a wait")
            };
            assert_eq!(started.elapsed(), Duration::ZERO);
            let Err(failure) = result.as_ref() else {
                panic!("refused")
            };
            assert_eq!(Why::of(failure).as_str(), why);
        }
    }
}

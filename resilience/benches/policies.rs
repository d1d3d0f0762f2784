//! What the resilience policies cost per call, without any I/O: the breaker's decision, the
//! retry budget's bookkeeping, the classification of an outcome, and a whole
//! `Resilience::call` around an attempt that succeeds at once. The target is at most 1 µs
//! per call, so the policies stay invisible next to a network round trip.
//!
//! Run with `cargo bench -p resilience --bench policies`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use resilience::{
    AttemptOutcome, Attempted, BreakerConfig, BreakerState, BreakerVerdict, CallError, CallLimits,
    CircuitBreaker, Resilience, RetryBudget, RetryBudgetConfig, RetryPolicy,
};

fn breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");

    let closed = CircuitBreaker::new(BreakerConfig::default());
    group.bench_function("acquire_and_record_success_closed", |b| {
        b.iter(|| {
            if let Ok(permit) = closed.try_acquire() {
                permit.record(BreakerVerdict::Success, None);
            }
        })
    });

    // Open for an hour, so it cannot turn half-open while criterion measures.
    let open = open_breaker(Duration::from_secs(3600));
    group.bench_function("acquire_refused_open", |b| {
        b.iter(|| black_box(open.try_acquire().is_err()))
    });
    assert_eq!(open.state(), BreakerState::Open, "the breaker stayed open");

    group.finish();
}

fn budget(c: &mut Criterion) {
    // Every iteration is one request that also asks for a retry: about a fifth of them get
    // one, so both answers of `try_retry` are part of the figure.
    let budget = RetryBudget::new(RetryBudgetConfig::default());
    c.bench_function("budget/record_request_and_try_retry", |b| {
        b.iter(|| {
            budget.record_request();
            black_box(budget.try_retry())
        })
    });
}

fn outcome(c: &mut Criterion) {
    let mut group = c.benchmark_group("outcome");
    group.bench_function("from_status_200", |b| {
        b.iter(|| {
            let outcome = AttemptOutcome::from_status(black_box(StatusCode::OK), None);
            black_box((outcome.breaker_verdict(), outcome.is_retryable()))
        })
    });
    group.bench_function("from_status_503", |b| {
        b.iter(|| {
            let outcome =
                AttemptOutcome::from_status(black_box(StatusCode::SERVICE_UNAVAILABLE), None);
            black_box((outcome.breaker_verdict(), outcome.is_retryable()))
        })
    });
    group.finish();
}

fn call(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot build a tokio runtime: {err}"),
    };
    let mut group = c.benchmark_group("call");

    // The whole policy around one call: deadline, budget, retry loop (backon), breaker
    // permit, attempt timeout, classification and recording. The attempt itself is free.
    let healthy = resilience(CircuitBreaker::new(BreakerConfig::default()));
    group.bench_function("success_first_attempt", |b| {
        b.to_async(&runtime).iter(|| healthy.call(succeed))
    });

    // What each request costs while the upstream is down: refused by the breaker at once,
    // before any attempt, so the caller can go straight to its fallback.
    let refused = resilience(open_breaker(Duration::from_secs(3600)));
    group.bench_function("refused_breaker_open", |b| {
        b.to_async(&runtime).iter(|| async {
            let result = refused.call(succeed).await;
            black_box(matches!(result, Err(CallError::BreakerOpen(_))))
        })
    });

    group.finish();
}

async fn succeed(_budget: Duration) -> Attempted<u32> {
    Attempted {
        outcome: AttemptOutcome::from_status(StatusCode::OK, None),
        retry_after: None,
        value: 200,
    }
}

fn resilience(breaker: CircuitBreaker) -> Resilience {
    Resilience::new(
        CallLimits::default(),
        RetryPolicy::default(),
        RetryBudget::new(RetryBudgetConfig::default()),
        breaker,
    )
}

/// A breaker opened by consecutive failures, staying open for `open_for`.
fn open_breaker(open_for: Duration) -> CircuitBreaker {
    let config = BreakerConfig {
        open_base: open_for,
        open_max: open_for,
        ..BreakerConfig::default()
    };
    let breaker = CircuitBreaker::new(config);
    for _ in 0..config.consecutive_failures {
        if let Ok(permit) = breaker.try_acquire() {
            permit.record(BreakerVerdict::Failure, None);
        }
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    breaker
}

criterion_group!(benches, breaker, budget, outcome, call);
criterion_main!(benches);

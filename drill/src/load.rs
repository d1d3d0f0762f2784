//! The open-loop load generator.
//!
//! A closed loop (send, wait for the answer, send again) slows down with the target and so
//! hides a stall: the requests that would have been sent during it are never sent. Here
//! each request is sent when it is due, on its own task, whether or not the earlier ones
//! have been answered, and its latency counts from when it was due.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::sample::Sample;
use crate::schedule::Plan;

/// Sends `plan.request_count()` requests, each when due after `start`, with `send`, and
/// returns every sample in the order they were due. `send` gets the request's index, its
/// due time and its offset, and measures from the due time.
pub async fn run_open_loop<F, Fut>(plan: Plan, start: Instant, send: F) -> Vec<Sample>
where
    F: Fn(u64, Instant, Duration) -> Fut,
    Fut: Future<Output = Sample> + Send + 'static,
{
    let count = plan.request_count();
    let mut in_flight = JoinSet::new();
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for index in 0..count {
        let due = plan.due(index);
        tokio::time::sleep_until(start + due).await;
        in_flight.spawn(send(index, start + due, due));
        // Collect what has finished, so the set holds only what is in flight.
        while let Some(done) = in_flight.try_join_next() {
            samples.extend(done.ok());
        }
    }
    while let Some(done) = in_flight.join_next().await {
        samples.extend(done.ok());
    }
    samples.sort_by_key(|sample| sample.due);
    samples
}

/// One GET with `client`, bounded by `timeout`, read to the end of its body.
pub async fn get(
    client: reqwest::Client,
    url: String,
    due_at: Instant,
    due: Duration,
    timeout: Duration,
) -> Sample {
    let send_lag = Instant::now().saturating_duration_since(due_at);
    let answer = tokio::time::timeout(timeout, async {
        let response = client.get(&url).send().await?;
        let status = response.status().as_u16();
        let cache_status = response
            .headers()
            .get("cache-status")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        response.bytes().await?;
        Ok::<_, reqwest::Error>((status, cache_status))
    })
    .await;
    let latency = Instant::now().saturating_duration_since(due_at);
    let (status, cache_status, error) = match answer {
        Ok(Ok((status, cache_status))) => (Some(status), cache_status, None),
        Ok(Err(error)) => (None, None, Some(describe(&error))),
        Err(_) => (None, None, Some(format!("no answer within {timeout:?}"))),
    };
    Sample {
        due,
        latency,
        send_lag,
        status,
        cache_status,
        error,
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        // The innermost cause says most ("connection reset by peer").
        let mut source: &dyn std::error::Error = error;
        while let Some(inner) = source.source() {
            source = inner;
        }
        source.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: u32, seconds: u64) -> Plan {
        Plan {
            rate,
            baseline: Duration::from_secs(seconds),
            fault: Duration::ZERO,
            recovery: Duration::ZERO,
        }
    }

    /// A stand-in target that takes `took(due)` to answer.
    fn target(
        took: impl Fn(Duration) -> Duration,
    ) -> impl Fn(u64, Instant, Duration) -> std::pin::Pin<Box<dyn Future<Output = Sample> + Send>>
    {
        move |_, due_at, due| {
            let took = took(due);
            Box::pin(async move {
                let send_lag = Instant::now().saturating_duration_since(due_at);
                tokio::time::sleep(took).await;
                Sample {
                    due,
                    latency: Instant::now().saturating_duration_since(due_at),
                    send_lag,
                    status: Some(200),
                    cache_status: None,
                    error: None,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_out_on_schedule_while_earlier_ones_are_stalled() {
        // Every answer takes 3 s, far longer than the 10 ms between requests: a closed
        // loop would send one request in the first 3 s; this sends 300.
        let plan = plan(100, 3);
        let start = Instant::now();
        let samples = run_open_loop(plan, start, target(|_| Duration::from_secs(3))).await;

        assert_eq!(samples.len(), 300);
        for (index, sample) in samples.iter().enumerate() {
            assert_eq!(sample.due, Duration::from_millis(10 * index as u64));
            assert_eq!(
                sample.send_lag,
                Duration::ZERO,
                "request {index} went out late"
            );
            assert_eq!(sample.latency, Duration::from_secs(3));
        }
        // The last one was due at 2.99 s and answered 3 s later.
        assert_eq!(start.elapsed(), Duration::from_millis(5_990));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_counts_from_when_the_request_was_due() {
        // A sender that only gets to send 400 ms late (as if the drill itself stalled):
        // the wait counts, so the stall shows in the latency.
        let start = Instant::now();
        let late_sender = |index: u64, due_at: Instant, due: Duration| {
            let inner = target(|_| Duration::from_millis(1));
            async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                inner(index, due_at, due).await
            }
        };
        let samples = run_open_loop(plan(10, 1), start, late_sender).await;
        assert_eq!(samples.len(), 10);
        for sample in &samples {
            assert_eq!(sample.send_lag, Duration::from_millis(400));
            assert_eq!(sample.latency, Duration::from_millis(401));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn samples_come_back_in_due_order_whatever_order_they_finish_in() {
        // Early requests take longest, so they finish last.
        let samples = run_open_loop(
            plan(10, 1),
            Instant::now(),
            target(|due| Duration::from_secs(2) - due),
        )
        .await;
        let dues: Vec<_> = samples.iter().map(|s| s.due).collect();
        let mut sorted = dues.clone();
        sorted.sort();
        assert_eq!(dues, sorted);
        assert_eq!(dues.len(), 10);
    }
}

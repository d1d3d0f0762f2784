//! What the drill reads from the services' `/metrics`: requests that reached storagesvc,
//! and booksvc's breaker.

use std::time::Duration;

use anyhow::Context;

/// One sample line of the Prometheus text format: `name{label="value",…} number`.
#[derive(Debug, PartialEq)]
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

impl Line<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// The sample lines of `text`. Our services' label values never hold `,`, `"` or `}`, so
/// a plain split is enough; lines that do not parse are skipped.
fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((
                        key.trim(),
                        value.trim().strip_prefix('"')?.strip_suffix('"')?,
                    ))
                })
                .collect();
            Some(Line {
                name,
                labels,
                value,
            })
        })
}

/// Requests a storagesvc instance has answered on its API routes: all, and those answered
/// 2xx.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiRequests {
    pub total: u64,
    pub ok: u64,
}

impl ApiRequests {
    pub fn since(self, earlier: ApiRequests) -> ApiRequests {
        ApiRequests {
            total: self.total.saturating_sub(earlier.total),
            ok: self.ok.saturating_sub(earlier.ok),
        }
    }
}

/// [`ApiRequests`] from storagesvc's `/metrics`: its book routes, `/books` and
/// `/books/{id}`, leaving out its health and metrics endpoints, which the orchestrator,
/// booksvc's health probe and the drill call.
pub fn api_requests(text: &str) -> Option<ApiRequests> {
    let mut found = false;
    let mut requests = ApiRequests::default();
    for line in lines(text).filter(|line| line.name == "http_server_requests_total") {
        found = true;
        let api = line
            .label("route")
            .is_some_and(|route| route == "/books" || route.starts_with("/books/"));
        if api {
            requests.total += line.value as u64;
            if line
                .label("status")
                .is_some_and(|status| status.starts_with('2'))
            {
                requests.ok += line.value as u64;
            }
        }
    }
    // No family at all means this is not the service we think it is.
    found.then_some(requests)
}

/// booksvc's breaker state: 0 closed, 1 half-open, 2 open.
pub fn breaker_state(text: &str) -> Option<i64> {
    lines(text)
        .find(|line| line.name == "breaker_state")
        .map(|line| line.value as i64)
}

/// booksvc's breaker transitions so far, as (from, to, count), sorted.
pub fn breaker_transitions(text: &str) -> Vec<(String, String, u64)> {
    let mut transitions: Vec<_> = lines(text)
        .filter(|line| line.name == "breaker_transitions_total")
        .filter_map(|line| {
            Some((
                line.label("from")?.to_owned(),
                line.label("to")?.to_owned(),
                line.value as u64,
            ))
        })
        .collect();
    transitions.sort();
    transitions
}

/// The transitions made between two readings of [`breaker_transitions`].
pub fn transitions_between(
    before: &[(String, String, u64)],
    after: &[(String, String, u64)],
) -> Vec<(String, String, u64)> {
    after
        .iter()
        .filter_map(|(from, to, count)| {
            let earlier = before
                .iter()
                .find(|(f, t, _)| f == from && t == to)
                .map_or(0, |(_, _, c)| *c);
            let made = count.saturating_sub(earlier);
            (made > 0).then(|| (from.clone(), to.clone(), made))
        })
        .collect()
}

/// Fetches a `/metrics` page, within a second.
pub async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?;
    response
        .text()
        .await
        .with_context(|| format!("reading {url}"))
}

/// The breaker's state over a run, as polled: (offset, state) in time order.
#[derive(Clone, Debug, Default)]
pub struct BreakerTimeline(pub Vec<(Duration, i64)>);

impl BreakerTimeline {
    /// The state for certain at `at`: the same reading just before and just after it. A
    /// moment between two different readings (the state changed in between) has none, nor
    /// one outside the polled span.
    pub fn state_at(&self, at: Duration) -> Option<i64> {
        let after = self.0.partition_point(|(offset, _)| *offset <= at);
        let (_, before) = self.0.get(after.checked_sub(1)?)?;
        let (_, next) = self.0.get(after)?;
        (before == next).then_some(*before)
    }

    /// Spans of constant state, as (from, to, state), for drawing: each reading holds until
    /// the next one.
    pub fn spans(&self) -> Vec<(Duration, Duration, i64)> {
        self.0
            .windows(2)
            .map(|pair| (pair[0].0, pair[1].0, pair[0].1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORAGESVC: &str = r#"# HELP http_server_requests HTTP requests served, by method, route and status.
# TYPE http_server_requests counter
http_server_requests_total{method="GET",route="/books",status="200"} 120
http_server_requests_total{method="GET",route="/books",status="503"} 7
http_server_requests_total{method="GET",route="/books/{id}",status="200"} 3
http_server_requests_total{method="GET",route="/.well-known/health",status="503"} 40
http_server_requests_total{method="GET",route="/.well-known/live",status="200"} 2
http_server_requests_total{method="GET",route="/metrics",status="200"} 9
# EOF
"#;

    const BOOKSVC: &str = r#"# TYPE breaker_transitions counter
breaker_transitions_total{from="closed",to="open"} 1
breaker_transitions_total{from="open",to="half_open"} 12
breaker_transitions_total{from="half_open",to="open"} 11
breaker_transitions_total{from="half_open",to="closed"} 1
# TYPE breaker_state gauge
breaker_state 2
"#;

    #[test]
    fn api_requests_leave_out_health_and_metrics() {
        assert_eq!(
            api_requests(STORAGESVC),
            Some(ApiRequests {
                total: 130,
                ok: 123
            })
        );
        assert_eq!(api_requests("# EOF\n"), None);
    }

    #[test]
    fn breaker_state_and_transitions_are_read() {
        assert_eq!(breaker_state(BOOKSVC), Some(2));
        let before = breaker_transitions(BOOKSVC);
        assert_eq!(before.len(), 4);
        assert_eq!(before[0], ("closed".into(), "open".into(), 1));
        let after = BOOKSVC.replace("to=\"half_open\"} 12", "to=\"half_open\"} 15");
        assert_eq!(
            transitions_between(&before, &breaker_transitions(&after)),
            vec![("open".into(), "half_open".into(), 3)]
        );
        assert_eq!(
            transitions_between(&[], &before)
                .iter()
                .map(|t| t.2)
                .sum::<u64>(),
            25
        );
    }

    fn timeline(readings: &[(u64, i64)]) -> BreakerTimeline {
        BreakerTimeline(
            readings
                .iter()
                .map(|(ms, state)| (Duration::from_millis(*ms), *state))
                .collect(),
        )
    }

    #[test]
    fn a_moment_has_a_state_only_between_two_agreeing_readings() {
        let breaker = timeline(&[(0, 0), (100, 0), (200, 2), (300, 2), (400, 2), (500, 0)]);
        let at = |ms| breaker.state_at(Duration::from_millis(ms));
        assert_eq!(at(50), Some(0));
        assert_eq!(at(150), None, "closed, then open: changed in between");
        assert_eq!(at(200), Some(2));
        assert_eq!(at(399), Some(2));
        assert_eq!(at(450), None);
        assert_eq!(at(500), None, "after the last reading nothing is known");
        assert_eq!(timeline(&[]).state_at(Duration::ZERO), None);
    }

    #[test]
    fn spans_run_from_each_reading_to_the_next() {
        let breaker = timeline(&[(0, 0), (100, 2), (300, 0)]);
        assert_eq!(
            breaker.spans(),
            vec![
                (Duration::ZERO, Duration::from_millis(100), 0),
                (Duration::from_millis(100), Duration::from_millis(300), 2),
            ]
        );
    }
}

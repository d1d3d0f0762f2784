//! The closed-loop throughput comparison: wrk, a fixed number of connections each sending
//! its next request as soon as the last is answered, against a healthy stack.

use std::time::Duration;

use crate::process;
use anyhow::{Context, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    pub name: String,
    pub url: String,
    pub requests: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Answers that were not 2xx or 3xx, and socket errors, as wrk counts them.
    pub non_2xx: u64,
    pub socket_errors: u64,
}

pub struct Load {
    pub connections: u32,
    pub threads: u32,
    pub duration: Duration,
    pub warmup: Duration,
}

/// Runs wrk against `url`: a warm-up run whose figures are dropped, then the measured one.
pub async fn measure(
    name: &str,
    url: &str,
    headers: &[String],
    load: &Load,
) -> anyhow::Result<Throughput> {
    if !load.warmup.is_zero() {
        wrk(url, headers, load, load.warmup).await?;
    }
    let output = wrk(url, headers, load, load.duration).await?;
    parse(name, url, &output).with_context(|| format!("reading wrk's output:\n{output}"))
}

async fn wrk(
    url: &str,
    headers: &[String],
    load: &Load,
    duration: Duration,
) -> anyhow::Result<String> {
    let mut args = vec![
        format!("--connections={}", load.connections),
        format!("--threads={}", load.threads),
        format!("--duration={}s", duration.as_secs().max(1)),
        "--timeout=5s".to_owned(),
        "--latency".to_owned(),
    ];
    for header in headers {
        args.extend(["--header".to_owned(), header.clone()]);
    }
    args.push(url.to_owned());
    process::output("wrk", &args, duration + Duration::from_secs(30))
        .await
        .context("running wrk (on Debian: apt-get install wrk)")
}

/// Reads wrk's report (`--latency`).
pub fn parse(name: &str, url: &str, output: &str) -> anyhow::Result<Throughput> {
    let mut result = Throughput {
        name: name.to_owned(),
        url: url.to_owned(),
        requests: 0,
        per_second: 0.0,
        p50: Duration::ZERO,
        p90: Duration::ZERO,
        p99: Duration::ZERO,
        max: Duration::ZERO,
        non_2xx: 0,
        socket_errors: 0,
    };
    let mut percentiles = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, _] => result.max = duration(max)?,
            [percent, value] if percent.ends_with('%') => {
                let value = duration(value)?;
                match *percent {
                    "50%" => result.p50 = value,
                    "90%" => result.p90 = value,
                    "99%" => result.p99 = value,
                    _ => continue,
                }
                percentiles += 1;
            }
            [requests, "requests", "in", ..] => result.requests = requests.parse()?,
            ["Requests/sec:", rate] => result.per_second = rate.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => result.non_2xx = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                result.socket_errors = rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if percentiles != 3 || result.requests == 0 {
        bail!("no latency distribution or request count");
    }
    Ok(result)
}

/// wrk's durations: `812.00us`, `4.12ms`, `1.02s`, `2.00m`.
fn duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 30s test @ http://127.0.0.1:18081/books
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.12ms    1.23ms  30.50ms   80.00%
    Req/Sec     7.66k   512.00     8.50k    70.00%
  Latency Distribution
     50%    4.00ms
     75%  812.00us
     90%    5.00ms
     99%    1.02s
  457693 requests in 30.03s, 200.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 18
Requests/sec:  15243.12
Transfer/sec:      6.66MB
";

    #[test]
    fn reads_rate_percentiles_and_errors() {
        let t = parse("booksvc", "http://x", REPORT).unwrap();
        assert_eq!(t.requests, 457_693);
        assert_eq!(t.per_second, 15_243.12);
        assert_eq!(t.p50, Duration::from_millis(4));
        assert_eq!(t.p90, Duration::from_millis(5));
        assert_eq!(t.p99, Duration::from_millis(1020));
        assert_eq!(t.max, Duration::from_micros(30_500));
        assert_eq!(t.non_2xx, 18);
        assert_eq!(t.socket_errors, 5);
    }

    #[test]
    fn a_report_without_figures_is_an_error() {
        assert!(
            parse(
                "x",
                "y",
                "unable to connect to 127.0.0.1:1 Connection refused"
            )
            .is_err()
        );
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(duration("812.00us").unwrap(), Duration::from_micros(812));
        assert_eq!(duration("2.00m").unwrap(), Duration::from_secs(120));
        assert!(duration("12").is_err());
        assert!(duration("3.0d").is_err());
    }
}

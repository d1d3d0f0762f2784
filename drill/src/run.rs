//! One scenario, run: the load against every target at once, the fault injected and
//! repaired on schedule, and what the services' metrics say about it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::compose::{Compose, HealthCheck};
use crate::load::{get, run_open_loop};
use crate::metrics::{self, BreakerTimeline};
use crate::sample::{Class, Sample};
use crate::scenario::{Part, Scenario};
use crate::schedule::Plan;

/// A proxy under test, with the storagesvc instance behind it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// What the load reads.
    pub url: String,
    /// `/metrics` of the storagesvc instance this target calls.
    pub upstream_metrics: String,
    /// The compose service of that instance.
    pub upstream_service: String,
    /// `/metrics` with the breaker's state, for a target that has one.
    pub breaker_metrics: Option<String>,
}

/// What a scenario needs to know about the stack.
pub struct Stack {
    pub compose: Compose,
    pub targets: Vec<Target>,
    /// The compose services of each part of the stack.
    pub database: Vec<String>,
    pub redis: Vec<String>,
    pub storagesvc: Vec<String>,
    pub request_timeout: Duration,
}

impl Stack {
    fn services(&self, part: Part) -> &[String] {
        match part {
            Part::Database => &self.database,
            Part::Redis => &self.redis,
            Part::Storagesvc => &self.storagesvc,
        }
    }
}

/// How many requests reached a storagesvc instance during the fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Reached {
    Counted(metrics::ApiRequests),
    /// The instance itself was stopped by the fault: nothing reached it.
    Stopped,
    Unknown(String),
}

/// When the fault went in and came out, from the start of a run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// When the fault was injected, and when the command doing so returned.
    pub fault_at: Duration,
    pub fault_done: Duration,
    /// When the repair began, and when the command returned.
    pub repair_at: Duration,
    pub repair_done: Duration,
    /// When the faulted services' own health checks all passed again.
    pub healthy_at: Option<Duration>,
}

/// One target through one scenario.
#[derive(Debug)]
pub struct TargetRun {
    pub target: Target,
    pub timing: Timing,
    pub samples: Vec<Sample>,
    pub breaker: Option<BreakerTimeline>,
    /// Breaker transitions during the run, as (from, to, count).
    pub transitions: Option<Vec<(String, String, u64)>>,
    pub reached: Reached,
}

/// One scenario: every target through it, one after the other.
#[derive(Debug)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub plan: Plan,
    pub targets: Vec<TargetRun>,
}

/// How often the breaker's state is read.
const BREAKER_POLL: Duration = Duration::from_millis(100);
/// How long the repaired services may take to pass their health checks.
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);

/// Runs `scenario` against each target in turn. One at a time, so that a target is
/// measured with the machine to itself: the other's load (nginx keeps storagesvc busy with
/// doomed requests throughout a fault) would otherwise show in its latency.
pub async fn run(stack: &Stack, scenario: Scenario, plan: Plan) -> anyhow::Result<ScenarioRun> {
    let mut targets = Vec::new();
    for target in &stack.targets {
        progress(&format!(
            "{} against {}: {} s at {} requests/s",
            scenario.name(),
            target.name,
            plan.total().as_secs(),
            plan.rate
        ));
        targets.push(run_target(stack, scenario, plan, target).await?);
    }
    Ok(ScenarioRun {
        scenario,
        plan,
        targets,
    })
}

async fn run_target(
    stack: &Stack,
    scenario: Scenario,
    plan: Plan,
    target: &Target,
) -> anyhow::Result<TargetRun> {
    let faulted: Vec<String> = scenario
        .parts()
        .iter()
        .flat_map(|part| stack.services(*part).iter().cloned())
        .collect();
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client")?;

    stack
        .compose
        .wait_all_healthy(Duration::from_secs(120))
        .await
        .context("the stack is not healthy before the run")?;
    warm_up(&client, target).await?;
    let containers = stack.compose.containers_of(&faulted).await?;
    let mut checks = Vec::new();
    for service in &faulted {
        checks.push(HealthCheck::of(&stack.compose, service).await?);
    }

    let start = Instant::now() + Duration::from_millis(100);
    let url: Arc<str> = target.url.as_str().into();
    let timeout = stack.request_timeout;
    let sender = client.clone();
    let load = tokio::spawn(run_open_loop(plan, start, move |due_at, due| {
        get(sender.clone(), url.to_string(), due_at, due, timeout)
    }));
    let (stop_polling, polling) = watch::channel(false);
    let breaker = target.breaker_metrics.clone().map(|url| {
        let before = tokio::spawn(scrape_transitions(client.clone(), url.clone()));
        let poller = tokio::spawn(poll_breaker(client.clone(), url.clone(), start, polling));
        (url, before, poller)
    });

    // Injects or repairs the fault: when that began, and when the command returned.
    let act = |verb: &'static str| {
        let (containers, faulted) = (&containers, &faulted);
        async move {
            let at = start.elapsed();
            progress(&format!(
                "{}: {verb} {}",
                scenario.name(),
                faulted.join(" ")
            ));
            containers.act(verb).await?;
            anyhow::Ok((at, start.elapsed()))
        }
    };

    tokio::time::sleep_until(start + plan.fault_start()).await;
    let reached_before = api_requests(&client, target).await;
    let (fault_at, fault_done) = act(scenario.action().inject()).await?;

    tokio::time::sleep_until(start + plan.fault_end()).await;
    let reached = match (reached_before, api_requests(&client, target).await) {
        (Ok(before), Ok(after)) => Reached::Counted(after.since(before)),
        (_, Err(_)) if faulted.contains(&target.upstream_service) => Reached::Stopped,
        (Err(error), _) | (_, Err(error)) => Reached::Unknown(format!("{error:#}")),
    };
    let (repair_at, repair_done) = act(scenario.action().repair()).await?;
    let healthy_at = wait_healthy(&checks, start).await;

    let samples = load.await.context("the load task failed")?;
    // Polling went on until the last request was answered.
    let _ = stop_polling.send(true);
    let (timeline, transitions) = match breaker {
        Some((url, before, poller)) => {
            let timeline = poller.await.context("the breaker poller failed")?;
            let transitions = match (before.await, scrape_transitions(client.clone(), url).await) {
                (Ok(Ok(before)), Ok(after)) => Some(metrics::transitions_between(&before, &after)),
                _ => None,
            };
            (Some(timeline), transitions)
        }
        None => (None, None),
    };
    Ok(TargetRun {
        target: target.clone(),
        timing: Timing {
            fault_at,
            fault_done,
            repair_at,
            repair_done,
            healthy_at,
        },
        samples,
        breaker: timeline,
        transitions,
        reached,
    })
}

/// Reads the target until it answers fresh, so its copy of the answer is stored before the
/// fault ("a warm cache").
async fn warm_up(client: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let due_at = Instant::now();
        let sample = get(
            client.clone(),
            target.url.clone(),
            due_at,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .await;
        if sample.class() == Class::Fresh {
            return Ok(());
        }
        last = format!(
            "{:?} {:?} {:?}",
            sample.status, sample.cache_status, sample.error
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!(
        "{} ({}) gave no fresh answer within 30 s; last: {last}",
        target.name,
        target.url
    )
}

async fn api_requests(
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<metrics::ApiRequests> {
    let text = metrics::scrape(client, &target.upstream_metrics).await?;
    metrics::api_requests(&text).with_context(|| {
        format!(
            "{} has no http_server_requests_total",
            target.upstream_metrics
        )
    })
}

async fn scrape_transitions(
    client: reqwest::Client,
    url: String,
) -> anyhow::Result<Vec<(String, String, u64)>> {
    Ok(metrics::breaker_transitions(
        &metrics::scrape(&client, &url).await?,
    ))
}

async fn poll_breaker(
    client: reqwest::Client,
    url: String,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> BreakerTimeline {
    let mut readings = Vec::new();
    let mut ticks = tokio::time::interval_at(start, BREAKER_POLL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if let Ok(text) = metrics::scrape(&client, &url).await
            && let Some(state) = metrics::breaker_state(&text)
        {
            readings.push((start.elapsed(), state));
        }
    }
    BreakerTimeline(readings)
}

/// Runs the repaired services' health checks until all pass; when that happened.
async fn wait_healthy(checks: &[HealthCheck], start: Instant) -> Option<Duration> {
    let deadline = Instant::now() + HEALTHY_WITHIN;
    let mut pending: Vec<&HealthCheck> = checks.iter().collect();
    while Instant::now() < deadline {
        let mut still = Vec::new();
        for check in pending {
            if !check.passes().await {
                still.push(check);
            }
        }
        if still.is_empty() {
            return Some(start.elapsed());
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Progress, on stderr: stdout carries the results.
pub fn progress(message: &str) {
    eprintln!("drill: {message}");
}

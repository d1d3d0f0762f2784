//! One scenario, run: the load against every target at once, the fault injected and
//! repaired on schedule, and what the services' metrics say about it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::analysis::{self, Onset};
use crate::capacity;
use crate::compose::{Compose, HealthCheck};
use crate::fault::Fault;
use crate::load::{get, run_open_loop};
use crate::metrics::{self, BreakerTimeline};
use crate::sample::{Class, Sample};
use crate::scenario::{Action, Part, Promises, Scenario};
use crate::schedule::Plan;

/// A proxy under test, with the storagesvc instance behind it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// Its compose service, whose network namespace a partition cuts.
    pub service: String,
    /// What the load reads.
    pub url: String,
    /// `/metrics` of the storagesvc instance this target calls, where it is published
    /// (not on the swarm stack, whose storagesvc runs as several replicas).
    pub upstream_metrics: Option<String>,
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
    /// storagesvc's fault-injection endpoint, on its admin port.
    pub storagesvc_faults: String,
    /// storagesvc's books, read directly (to measure its capacity), with its token.
    pub storagesvc_url: String,
    pub storagesvc_token: String,
    /// Short repeats of the fault's onset before each main run, for the scenarios whose
    /// promises include the first stale answer.
    pub onset_trials: u32,
}

impl Stack {
    fn services(&self, part: Part) -> &[String] {
        match part {
            Part::Database => &self.database,
            Part::Redis => &self.redis,
            // The first container of storagesvc's services is the one replica faulted.
            Part::Storagesvc | Part::StoragesvcReplica => &self.storagesvc,
        }
    }

    /// The compose services `scenario` faults.
    pub fn faulted(&self, scenario: Scenario) -> Vec<String> {
        scenario
            .parts()
            .iter()
            .flat_map(|part| self.services(*part).iter().cloned())
            .collect()
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
    /// The onsets of the short trials before the main run.
    pub trials: Vec<Onset>,
}

/// One scenario: every target through it, one after the other.
#[derive(Debug)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub plan: Plan,
    pub targets: Vec<TargetRun>,
    /// storagesvc's capacity (2xx reads a second) under the fault's CPU limit, measured
    /// before the overload scenario, which sends twice that.
    pub capacity: Option<f64>,
}

/// How often the breaker's state is read.
const BREAKER_POLL: Duration = Duration::from_millis(100);
/// How long the repaired services may take to pass their health checks.
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);
/// The phases of an onset trial: long enough for the first stale answer (promised within
/// 0.2 s), short enough that a handful of them cost less than one main run.
const TRIAL_BEFORE: Duration = Duration::from_millis(1000);
const TRIAL_FAULT: Duration = Duration::from_millis(1500);
const TRIAL_AFTER: Duration = Duration::from_millis(500);

/// Runs `scenario` against each target in turn. One at a time, so that a target is
/// measured with the machine to itself: the other's load (nginx keeps storagesvc busy with
/// doomed requests throughout a fault) would otherwise show in its latency.
pub async fn run(stack: &Stack, scenario: Scenario, plan: Plan) -> anyhow::Result<ScenarioRun> {
    if scenario.needs_replicas() {
        let service = stack.storagesvc.first().context("no storagesvc service")?;
        let replicas = stack.compose.replicas(service).await?;
        anyhow::ensure!(
            replicas >= 2,
            "{} needs storagesvc to run as several replicas (the swarm stack: \
             scripts/drill-swarm.sh); it runs as {replicas}",
            scenario.name()
        );
    }
    let mut plan = plan;
    let mut capacity = None;
    if scenario.distinct_keys() {
        let measured = measure_capacity(stack, scenario).await?;
        plan.rate = (2.0 * measured).ceil().max(1.0) as u32;
        capacity = Some(measured);
    }
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
        capacity,
    })
}

/// storagesvc's capacity with the scenario's fault in (its CPU limited), read directly.
async fn measure_capacity(stack: &Stack, scenario: Scenario) -> anyhow::Result<f64> {
    let target = stack.targets.first().context("no target")?;
    stack
        .compose
        .wait_all_healthy(Duration::from_secs(120))
        .await
        .context("the stack is not healthy before measuring storagesvc's capacity")?;
    let mut fault = Fault::prepare(stack, scenario, target).await?;
    progress(&format!(
        "{}: storagesvc's capacity, {} closed loops for {} s, with {}",
        scenario.name(),
        capacity::WORKERS,
        capacity::MEASURED.as_secs(),
        fault.what
    ));
    fault.inject().await?;
    let measured = capacity::measure(&stack.storagesvc_url, &stack.storagesvc_token).await;
    fault.repair().await?;
    let measured = measured?;
    println!(
        "{} storagesvc capacity: {measured:.0} reads/s (2xx, closed loop, {})",
        scenario.name(),
        fault.what
    );
    anyhow::ensure!(
        measured > 0.0,
        "storagesvc answered nothing while its capacity was measured"
    );
    Ok(measured)
}

async fn run_target(
    stack: &Stack,
    scenario: Scenario,
    plan: Plan,
    target: &Target,
) -> anyhow::Result<TargetRun> {
    let faulted = stack.faulted(scenario);
    let client = shared::client::http_client_builder()
        .build()
        .context("building the HTTP client")?;

    stack
        .compose
        .wait_all_healthy(Duration::from_secs(120))
        .await
        .context("the stack is not healthy before the run")?;
    let urls: Vec<String> = if scenario.distinct_keys() {
        (0..capacity::KEYS)
            .map(|key| capacity::key_url(&target.url, key))
            .collect()
    } else {
        vec![target.url.clone()]
    };
    for url in &urls {
        warm_up(&client, target, url).await?;
    }
    let urls: Arc<[String]> = urls.into();
    let mut checks = Vec::new();
    for service in &faulted {
        checks.push(HealthCheck::of(&stack.compose, service).await?);
    }

    let mut trials = Vec::new();
    if scenario.promises() == Promises::Outage {
        for trial in 1..=stack.onset_trials {
            let onset = onset_trial(stack, scenario, plan.rate, target, &client, &urls, &checks)
                .await
                .with_context(|| format!("onset trial {trial}"))?;
            progress(&format!(
                "{} against {}: onset trial {trial} of {}: first stale after {}",
                scenario.name(),
                target.name,
                stack.onset_trials,
                onset
                    .first_stale
                    .map_or_else(|| "never".into(), analysis::secs)
            ));
            trials.push(onset);
        }
    }

    let mut fault = Fault::prepare(stack, scenario, target).await?;
    let start = Instant::now() + Duration::from_millis(100);
    let load = spawn_load(plan, start, &client, &urls, stack.request_timeout);
    let (stop_polling, polling) = watch::channel(false);
    let breaker = target.breaker_metrics.clone().map(|url| {
        let before = tokio::spawn(scrape_transitions(client.clone(), url.clone()));
        let poller = tokio::spawn(poll_breaker(client.clone(), url.clone(), start, polling));
        (url, before, poller)
    });

    tokio::time::sleep_until(start + plan.fault_start()).await;
    let reached_before = api_requests(&client, target).await;
    progress(&format!("{}: {}", scenario.name(), fault.what));
    let fault_at = start.elapsed();
    fault.inject().await?;
    let fault_done = start.elapsed();

    tokio::time::sleep_until(start + plan.fault_end()).await;
    let reached = match (reached_before, api_requests(&client, target).await) {
        (Ok(before), Ok(after)) => Reached::Counted(after.since(before)),
        (_, Err(_))
            if scenario.action() == Action::Stop && faulted.contains(&target.upstream_service) =>
        {
            Reached::Stopped
        }
        (Err(error), _) | (_, Err(error)) => Reached::Unknown(format!("{error:#}")),
    };
    progress(&format!("{}: repairing", scenario.name()));
    let repair_at = start.elapsed();
    fault.repair().await?;
    let repair_done = start.elapsed();
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
        trials,
    })
}

/// The open-loop load of `plan` from `start`, over `urls` in turn.
fn spawn_load(
    plan: Plan,
    start: Instant,
    client: &reqwest::Client,
    urls: &Arc<[String]>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    let sender = client.clone();
    let urls = urls.clone();
    tokio::spawn(run_open_loop(plan, start, move |index, due_at, due| {
        let url = urls[(index % urls.len() as u64) as usize].clone();
        get(sender.clone(), url, due_at, due, timeout)
    }))
}

/// One short repeat of the fault's onset: the load at `rate`, the fault in for a moment
/// and repaired, then the target read until it answers fresh again, so that the next
/// trial, or the main run, starts from a healthy stack and a warm cache.
async fn onset_trial(
    stack: &Stack,
    scenario: Scenario,
    rate: u32,
    target: &Target,
    client: &reqwest::Client,
    urls: &Arc<[String]>,
    checks: &[HealthCheck],
) -> anyhow::Result<Onset> {
    let plan = Plan {
        rate,
        baseline: TRIAL_BEFORE,
        fault: TRIAL_FAULT,
        recovery: TRIAL_AFTER,
    };
    let mut fault = Fault::prepare(stack, scenario, target).await?;
    let start = Instant::now() + Duration::from_millis(100);
    let load = spawn_load(plan, start, client, urls, stack.request_timeout);
    tokio::time::sleep_until(start + plan.fault_start()).await;
    let fault_at = start.elapsed();
    fault.inject().await?;
    tokio::time::sleep_until(start + plan.fault_end()).await;
    fault.repair().await?;
    if wait_healthy(checks, start).await.is_none() {
        bail!("the repaired services did not pass their health checks within 90 s");
    }
    let samples = load.await.context("the load task failed")?;
    for url in urls.iter() {
        warm_up(client, target, url).await?;
    }
    Ok(analysis::onset(&samples, fault_at))
}

/// Reads the target until it answers fresh, so its copy of the answer is stored before the
/// fault ("a warm cache").
async fn warm_up(client: &reqwest::Client, target: &Target, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let due_at = Instant::now();
        let sample = get(
            client.clone(),
            url.to_owned(),
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
        "{} ({url}) gave no fresh answer within 30 s; last: {last}",
        target.name
    )
}

/// storagesvc's request counts, asked up to three times: an overloaded storagesvc may be
/// slow to answer even on its admin port.
async fn api_requests(
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<metrics::ApiRequests> {
    let url = target
        .upstream_metrics
        .as_deref()
        .context("storagesvc's metrics are not published on this stack")?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let read = async {
            let text = metrics::scrape(client, url).await?;
            metrics::api_requests(&text)
                .with_context(|| format!("{url} has no http_server_requests_total"))
        };
        match read.await {
            Ok(requests) => return Ok(requests),
            Err(error) if attempt >= 3 => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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

//! The report: markdown tables, one chart per scenario, and the raw samples as CSV.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::analysis::{self, Findings, ms, secs};
use crate::run::{Reached, ScenarioRun};
use crate::sample::Class;
use crate::schedule::Phase;
use crate::throughput::Throughput;

/// What the report is made of.
pub struct Inputs<'a> {
    pub generated: String,
    pub command: String,
    pub connections: u32,
    pub throughput_secs: u64,
    pub throughput: &'a [Throughput],
    pub runs: &'a [ScenarioRun],
    /// Where the charts are, relative to the report.
    pub charts_dir: &'a str,
    /// The runs were on the swarm stack, not the compose project.
    pub on_swarm: bool,
}

pub fn markdown(inputs: &Inputs<'_>) -> String {
    let mut out = String::new();
    let _ = write_report(&mut out, inputs);
    out
}

fn write_report(out: &mut String, inputs: &Inputs<'_>) -> std::fmt::Result {
    writeln!(
        out,
        "# Resilience report: booksvc and an nginx stale-if-error proxy, through real faults"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Generated {} by `{}`. Every figure below comes from that run; nothing is edited by hand.",
        inputs.generated, inputs.command
    )?;
    writeln!(out)?;
    out.push_str(METHOD);
    if inputs.on_swarm {
        out.push_str(ON_SWARM);
    }
    if let Some(run) = inputs.runs.first() {
        writeln!(
            out,
            "This run: {} requests a second to each target, {} s baseline, {} s fault, {} s recovery.",
            run.plan.rate,
            run.plan.baseline.as_secs(),
            run.plan.fault.as_secs(),
            run.plan.recovery.as_secs()
        )?;
        writeln!(out)?;
    }

    if !inputs.throughput.is_empty() {
        throughput_section(out, inputs)?;
    }
    if !inputs.runs.is_empty() {
        promises_section(out, inputs.runs)?;
    }
    for run in inputs.runs {
        scenario_section(out, run, inputs.charts_dir)?;
    }
    out.push_str(NGINX_DIFFERENCES);
    out.push_str(READING);
    Ok(())
}

fn throughput_section(out: &mut String, inputs: &Inputs<'_>) -> std::fmt::Result {
    writeln!(out, "## Throughput, healthy stack")?;
    writeln!(out)?;
    writeln!(
        out,
        "Closed loop: wrk, {} connections, {} s after a warm-up, one target at a time, `GET /books` (storagesvc directly with its bearer token).",
        inputs.connections, inputs.throughput_secs
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| target | requests/s | p50 | p90 | p99 | max | non-2xx | socket errors |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for t in inputs.throughput {
        writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            t.name,
            t.per_second,
            ms(t.p50),
            ms(t.p90),
            ms(t.p99),
            ms(t.max),
            t.non_2xx,
            t.socket_errors
        )?;
    }
    writeln!(out)?;
    let find = |name: &str| inputs.throughput.iter().find(|t| t.name == name);
    if let (Some(booksvc), Some(nginx)) = (find("booksvc"), find("nginx")) {
        writeln!(
            out,
            "Target: booksvc's throughput ≥ nginx's: **{}** ({:.0} against {:.0} requests/s, {:.0}%). booksvc's p99 ≤ nginx's: **{}** ({} against {}).",
            verdict(booksvc.per_second >= nginx.per_second),
            booksvc.per_second,
            nginx.per_second,
            100.0 * booksvc.per_second / nginx.per_second.max(1.0),
            verdict(booksvc.p99 <= nginx.p99),
            ms(booksvc.p99),
            ms(nginx.p99)
        )?;
        writeln!(out)?;
    }
    Ok(())
}

fn promises_section(out: &mut String, runs: &[ScenarioRun]) -> std::fmt::Result {
    writeln!(out, "## Promises, warm cache")?;
    writeln!(out)?;
    writeln!(
        out,
        "Each scenario's promises, judged for every target; booksvc's own (compared with nginx, its breaker, its stale share while healthy) are shown for nginx as figures, unjudged (-)."
    )?;
    writeln!(out)?;
    for run in runs {
        let judged: Vec<_> = run
            .targets
            .iter()
            .map(|target| {
                let findings = analysis::findings(run, target);
                analysis::checks(run, target, &findings)
            })
            .collect();
        let Some(first) = judged.first() else {
            continue;
        };
        writeln!(out, "### {}", run.scenario.name())?;
        writeln!(out)?;
        if let Some(capacity) = run.capacity {
            writeln!(
                out,
                "storagesvc's measured capacity: {capacity:.0} reads/s; load: {} requests/s.",
                run.plan.rate
            )?;
            writeln!(out)?;
        }
        write!(out, "| promise |")?;
        for target in &run.targets {
            write!(out, " {} |", target.target.name)?;
        }
        writeln!(out)?;
        writeln!(out, "|---|{}", "---|".repeat(run.targets.len()))?;
        for (row, check) in first.iter().enumerate() {
            write!(out, "| {} |", check.promise)?;
            for checks in &judged {
                match checks.get(row) {
                    Some(c) if c.met == Some(false) => {
                        write!(out, " **MISSED: {}** |", c.measured)?;
                    }
                    Some(c) => write!(out, " {}: {} |", c.verdict(), c.measured)?,
                    None => write!(out, " |")?,
                }
            }
            writeln!(out)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn scenario_section(out: &mut String, run: &ScenarioRun, charts_dir: &str) -> std::fmt::Result {
    let name = run.scenario.name();
    writeln!(out, "## {name}")?;
    writeln!(out)?;
    writeln!(out, "{}", run.scenario.what())?;
    writeln!(out)?;
    if let Some(capacity) = run.capacity {
        writeln!(
            out,
            "storagesvc's capacity with the fault's CPU limit, measured first: {capacity:.0} reads/s; this scenario's load: {} requests/s.",
            run.plan.rate
        )?;
        writeln!(out)?;
    }
    writeln!(out, "![{name} timeline]({charts_dir}/{name}.svg)")?;
    writeln!(out)?;

    let findings: Vec<Findings> = run
        .targets
        .iter()
        .map(|t| analysis::findings(run, t))
        .collect();
    write!(out, "| |")?;
    for target in &run.targets {
        write!(out, " {} |", target.target.name)?;
    }
    writeln!(out)?;
    writeln!(out, "|---|{}", "---:|".repeat(run.targets.len()))?;
    let row = |out: &mut String, label: &str, cell: &dyn Fn(usize) -> String| -> std::fmt::Result {
        write!(out, "| {label} |")?;
        for index in 0..run.targets.len() {
            write!(out, " {} |", cell(index))?;
        }
        writeln!(out)
    };
    row(out, "fault injected at (command returned at)", &|i| {
        let timing = &run.targets[i].timing;
        format!("{} ({})", secs(timing.fault_at), secs(timing.fault_done))
    })?;
    row(out, "repaired at (returned at)", &|i| {
        let timing = &run.targets[i].timing;
        format!("{} ({})", secs(timing.repair_at), secs(timing.repair_done))
    })?;
    row(out, "health checks passing again at", &|i| {
        run.targets[i]
            .timing
            .healthy_at
            .map_or_else(|| "not within 90 s".into(), secs)
    })?;
    row(out, "first stale answer after the fault", &|i| {
        findings[i].first_stale.map_or_else(|| "none".into(), secs)
    })?;
    if findings.iter().any(|found| found.onsets.len() > 1) {
        row(out, "first stale answer, every onset", &|i| {
            analysis::spread(findings[i].first_stale_spread(), secs)
        })?;
        row(out, "from the last fresh answer to the first stale", &|i| {
            analysis::spread(findings[i].turned_in_spread(), ms)
        })?;
    }
    row(out, "first fresh answer after healthy again", &|i| {
        findings[i]
            .fresh_after_healthy
            .map_or_else(|| "none".into(), secs)
    })?;
    row(
        out,
        "requests that reached storagesvc during the fault",
        &|i| match &run.targets[i].reached {
            Reached::Counted(count) if count.ok > 0 => {
                format!("{} ({} answered 2xx)", count.total, count.ok)
            }
            Reached::Counted(count) => count.total.to_string(),
            Reached::Stopped => "0 (stopped)".into(),
            Reached::Unknown(why) => format!("unknown ({why})"),
        },
    )?;
    row(out, "healthy phases: stale share", &|i| {
        let healthy = &findings[i].healthy;
        format!("{:.2}% of {}", healthy.percent(healthy.stale), healthy.sent)
    })?;
    if run.capacity.is_some() {
        row(out, "fault phase: fresh answers a second", &|i| {
            format!(
                "{:.0}",
                analysis::fresh_per_second(&run.plan, &findings[i].phase(Phase::Fault))
            )
        })?;
    }
    row(out, "fault phase: p99 / max", &|i| {
        let fault = findings[i].phase(Phase::Fault);
        format!("{} / {}", ms(fault.p99), ms(fault.max))
    })?;
    row(
        out,
        "breaker open: requests, p99, max",
        &|i| match &findings[i].while_open {
            Some(open) if open.sent > 0 => {
                format!("{}, {}, {}", open.sent, ms(open.p99), ms(open.max))
            }
            Some(_) => "never seen open".into(),
            None => "no breaker".into(),
        },
    )?;
    row(
        out,
        "breaker transitions",
        &|i| match &run.targets[i].transitions {
            Some(transitions) if transitions.is_empty() => "none".into(),
            Some(transitions) => transitions
                .iter()
                .map(|(from, to, count)| format!("{from}→{to} ×{count}"))
                .collect::<Vec<_>>()
                .join(", "),
            None if run.targets[i].breaker.is_some() => "unknown".into(),
            None => "no breaker".into(),
        },
    )?;
    writeln!(out)?;

    writeln!(
        out,
        "| target | phase | sent | 2xx | stale | errors | p50 | p90 | p99 | max |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (target, found) in run.targets.iter().zip(&findings) {
        for (phase, s) in &found.phases {
            writeln!(
                out,
                "| {} | {phase} | {} | {:.1}% | {:.1}% | {:.1}% | {} | {} | {} | {} |",
                target.target.name,
                s.sent,
                s.percent(s.ok),
                s.percent(s.stale),
                s.percent(s.errors),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            )?;
        }
    }
    writeln!(out)?;
    // Each kind of error, with how often it came.
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for target in &run.targets {
        for sample in target.samples.iter().filter(|s| s.class() == Class::Error) {
            let kind = match (&sample.status, &sample.error) {
                (Some(status), _) => format!("HTTP {status}"),
                (None, Some(error)) => error.clone(),
                (None, None) => "no answer".to_owned(),
            };
            *errors
                .entry(format!("{}: {kind}", target.target.name))
                .or_default() += 1;
        }
    }
    let errors: Vec<String> = errors
        .into_iter()
        .map(|(kind, count)| format!("{kind} ×{count}"))
        .collect();
    if !errors.is_empty() {
        writeln!(out, "Errors: {}.", errors.join("; "))?;
        writeln!(out)?;
    }
    let lag = crate::stats::send_lag(run.targets.iter().flat_map(|t| t.samples.iter()));
    writeln!(
        out,
        "Load generator check: requests went out {} late at p99, {} at worst.",
        ms(lag.0),
        ms(lag.1)
    )?;
    writeln!(out)?;
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Every sample of every target of `run`, as CSV.
pub fn write_samples(run: &ScenarioRun, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for target in &run.targets {
        let mut csv =
            String::from("due_s,latency_ms,send_lag_ms,status,cache_status,class,error\n");
        for s in &target.samples {
            let _ = writeln!(
                csv,
                "{:.6},{:.3},{:.3},{},\"{}\",{:?},\"{}\"",
                s.due.as_secs_f64(),
                s.latency.as_secs_f64() * 1000.0,
                s.send_lag.as_secs_f64() * 1000.0,
                s.status.map(|c| c.to_string()).unwrap_or_default(),
                s.cache_status
                    .as_deref()
                    .unwrap_or_default()
                    .replace('"', "'"),
                s.class(),
                s.error.as_deref().unwrap_or_default().replace('"', "'"),
            );
        }
        let path = dir.join(format!(
            "{}-{}.csv",
            run.scenario.name(),
            target.target.name
        ));
        std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const METHOD: &str = "## How it is measured

- **The stack** is the project's compose file plus `bench/docker-compose.drill.yaml`: booksvc → storagesvc → PostgreSQL, with Redis for booksvc's last good answers, and nginx (the peer) in front of the same storagesvc. Everything runs on one 2-core machine, the load generator included.
- **Each scenario runs twice, one target at a time**: booksvc, then nginx, with the same schedule and the same fault. One at a time so that each is measured with the machine to itself (run together, nginx's doomed requests kept storagesvc busy through the fault and showed in booksvc's latency), and so that the requests reaching storagesvc during the fault are that target's alone.
- **The load** is open-loop: each request is sent when it is due, on a fixed schedule, whether or not earlier ones were answered, and its latency counts from when it was due. A stall therefore shows as latency instead of as fewer requests.
- **Each answer** is *fresh* (2xx from the origin), *stale* (2xx with a `Cache-Status` that has the `hit` parameter: served from a stored copy) or an *error* (any other status, a timeout after 5 s, a refused or reset connection). Requests are attributed to the phase in which they were due.
- **Faults** go in with the Docker CLI on the compose project's containers (`docker stop`, which uses the stop signal the compose file sets, or `docker pause`) and are undone with `start` or `unpause`; a partition is iptables DROP rules (both directions, storagesvc's address and port) in the proxy container's network namespace; slow and flaky are storagesvc's fault-injection layer, set through its admin port; overload limits storagesvc's CPU with `docker update --cpus`. Every fault is undone at the end of its phase, and on any error or interrupt. The fault's moment is when that command is issued; the tables also give when it returned. *Health checks passing again* is the moment the repaired containers' own health checks (the ones in the compose file, run by the drill every 50 ms) all pass.
- **Requests that reached storagesvc** during the fault are the growth of its `http_server_requests_total` on the book routes (its health and metrics endpoints left out) between the fault's injection and its repair; those it answered 2xx were served before the fault took effect. booksvc's breaker is read from its `/metrics` every 100 ms; a request counts as *breaker open* only when the readings before and after its due time both say open.
- **Onsets are repeated.** The moment a fault takes effect varies from one `docker stop` to the next by tens of milliseconds (the signal's delivery, the request storagesvc is still finishing), which is the size of the difference being judged. So before each main run of a scenario judged on its first stale answer, the same target goes through short trials of the same fault (1 s healthy, 1.5 s of fault, repaired, then read until fresh again). *First stale answer ≤ 0.2 s* is judged on the worst of all onsets, the main run's included; *≤ nginx's + 20 ms* on the medians. Each scenario's table also shows how long after the last fresh answer the first stale one came: how fast the target turned, whenever the fault took effect.
- **Every sample** (due time, latency, send lag, status, `Cache-Status`) is written as CSV under `target/drill/` by the same run.

";

const ON_SWARM: &str = "## This run: the swarm stack

- **The stack** is `deploy/swarm/stack.yaml` plus `bench/swarm-drill.yaml` on a single-node Docker Swarm (`scripts/drill-swarm.sh` deploys it and removes it again): storagesvc ×3 and booksvc ×2 behind the HAProxy edge, which the load reads; PostgreSQL and Redis ×1. booksvc balances over storagesvc's replicas itself (the less loaded of two random picks, ejecting an address that fails). The nginx peer has all three storagesvc replicas as the servers of its upstream group (`tasks.storagesvc`, every replica's address), moves a failed or timed-out request to the next server (`proxy_next_upstream error timeout`, at most 2 tries within 500 ms) and takes a failing server out for 10 s (`max_fails=1 fail_timeout=10s`): nginx's own outlier ejection.
- **The fault** is `docker pause` of one storagesvc container of the three (the first `docker ps` lists).
- **Not read here**: the swarm stack publishes no admin port, so booksvc's breaker and the requests reaching storagesvc are not read; the promises judged need only the answers.

";

const NGINX_DIFFERENCES: &str = "## How nginx's policy differs from booksvc's

The peer (`bench/nginx/`) is nginx 1.22 from Debian's packages, configured to do what booksvc does as far as nginx can: every read goes to storagesvc while storagesvc answers (`proxy_cache_bypass`: the lookup is skipped, the 200 answer still stored, for 24 h); one attempt of at most 500 ms (booksvc's attempt timeout), no retry; when it fails (a 5xx, refused, timed out) the stored copy is served, marked `Cache-Status: nginx; hit`; with nothing stored, a 503 at once. It tells storagesvc its 500 ms bound in `x-request-timeout-ms`, as booksvc does. The comments in `bench/nginx/nginx.conf.template` say why each directive is there. What it cannot express:

- **No circuit breaker.** Open-source nginx ignores `max_fails`/`fail_timeout` for an upstream group of one server, so every request still goes to a failing storagesvc and waits for it to fail. The *fault phase* rows and the *requests that reached storagesvc* row show the cost.
- **No retries, so no retry budget**: nginx retries only by moving to another server of the group, and there is one; booksvc retries once or twice within a budget of 20% of requests.
- **No coalescing** of identical concurrent reads: `proxy_cache_lock` holds back only requests that look the cache up and miss, and here every read bypasses the lookup.
- **No request deadline**: the 500 ms it announces is fixed, not what a caller's deadline still leaves.
- **No `Age`** on stale answers (storagesvc's `Date` is kept with the copy instead), and no health probe that ends an outage early.
- **A local copy**: the cache is files (a tmpfs in the drill's compose file), one set per nginx instance; booksvc keeps its copies in Redis, shared between instances, and in memory.
- **Names are resolved once**: nginx 1.22 resolves an upstream's name only when it loads its configuration. The image's entrypoint therefore re-resolves storagesvc every second and reloads nginx when the address changes, marking the server down while the name does not resolve (a stopped container). That is what lets nginx answer from its copy at once, instead of after a 500 ms timeout, within about a second of storagesvc stopping.

";

const READING: &str = "## Reading the numbers

- Everything runs on one machine: the proxy under test, storagesvc, PostgreSQL, Redis, Docker's health checks and the load generator share its two cores, so absolute latencies include that contention (the spikes of 10 to 50 ms that both proxies show in every phase). The comparison is fair in that both proxies see the same load on the same machine, each with the machine to itself but for the other's idle container.
- In the throughput table every connection asks for the same list, so booksvc lets concurrent identical reads share one call to storagesvc (coalescing), which nginx cannot do for requests it forwards; that, not a faster hop, is most of booksvc's lead. nginx also writes every answer to its cache, where booksvc writes to memory and, at most once a second per key, to Redis.
- The *load generator check* line under each scenario is the drill's own lateness in sending: when it is large, the machine, not the target, made requests late, and their latency (counted from when they were due) includes it.
- *First fresh answer after healthy again* is zero when the first fresh answer came before the drill's health check saw the database healthy (the checks run every 50 ms and each takes tens of milliseconds).
- booksvc's last good answer is the last answer it read: a write made through booksvc does not change it, so while storagesvc is down a deleted book can still be listed.
";

//! The failure drill: constant-rate load through real faults, against booksvc and an
//! nginx stale-if-error proxy side by side, written up as a report with charts.

mod analysis;
mod capacity;
mod chart;
mod compose;
mod fault;
mod load;
mod metrics;
mod process;
mod report;
mod run;
mod sample;
mod scenario;
mod schedule;
mod stats;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;

use crate::compose::Compose;
use crate::run::{Stack, Target, progress};
use crate::scenario::Scenario;
use crate::schedule::{Phase, Plan};
use crate::throughput::{Load, Throughput};

const ABOUT: &str = "\
Runs each SCENARIO against a running compose stack: open-loop load at a constant rate (each
request sent when due, its latency counted from when it was due) through three phases,
baseline, fault and recovery. The fault goes in at the start of the fault phase (docker stop
or pause on the compose project's containers, DROP rules in the proxy's network namespace,
a fault set on storagesvc's admin port, a CPU limit) and is repaired at its end, or on any
error or interrupt before.
Each scenario runs against booksvc, then against the nginx peer, with the same load and
the same fault, one target at a time.

Prints per-phase figures for every target; with --report, also writes the markdown report,
one SVG timeline per scenario next to it, and every sample as CSV under --samples-dir.

The stack is the project's docker-compose.yaml plus bench/docker-compose.drill.yaml (nginx
in front of the same storagesvc, published ports: the services' admin ports, where their
/metrics are, on 127.0.0.1:19081 and 19082). scripts/drill-report.sh starts it, runs
`drill --throughput all --report docs/resilience-report.md` and removes it again.";

/// The failure drill.
#[derive(Parser, Debug)]
#[command(version, about = "The failure drill: load through real faults, booksvc beside an nginx stale-if-error proxy", long_about = ABOUT)]
struct Cli {
    /// Scenarios to run, in order: database-stop, database-pause, storagesvc-stop,
    /// redis-stop, database-and-redis-stop, storagesvc-partition, storagesvc-slow,
    /// storagesvc-flaky, overload, or all; and, on the swarm stack (--swarm),
    /// storagesvc-replica-pause.
    #[arg(required = true, value_name = "SCENARIO", value_parser = parse_scenarios)]
    scenarios: Vec<Vec<Scenario>>,

    /// Requests a second, to each target.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    rate: u32,
    /// Length of the baseline phase (healthy stack).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Length of the fault phase.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    fault: Duration,
    /// Length of the recovery phase.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    recovery: Duration,
    /// Short repeats of the fault's onset (1.5 s faults) before each main run of the
    /// scenarios judged on their first stale answer; those promises are judged over every
    /// onset, the main run's included.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=50))]
    onset_trials: u32,
    /// A request without an answer by then counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,

    /// What the load reads from booksvc.
    #[arg(long, default_value = "http://127.0.0.1:18081/books")]
    booksvc_url: String,
    /// booksvc's metrics (its breaker), on its admin port.
    #[arg(long, default_value = "http://127.0.0.1:19081/metrics")]
    booksvc_metrics: String,
    /// storagesvc's metrics (the requests that reached it), on its admin port.
    #[arg(long, default_value = "http://127.0.0.1:19082/metrics")]
    storagesvc_metrics: String,
    /// storagesvc's fault-injection endpoint (FAULT_INJECTION=true), on its admin port.
    #[arg(long, default_value = "http://127.0.0.1:19082/faults")]
    storagesvc_faults: String,
    /// What the load reads from the nginx peer.
    #[arg(long, default_value = "http://127.0.0.1:18080/books")]
    nginx_url: String,
    /// Drill booksvc alone (a stack without the nginx peer).
    #[arg(long)]
    no_nginx: bool,

    /// The compose project of the stack.
    #[arg(long, default_value = "bookstore-drill")]
    project: String,
    /// Drill this swarm stack (`docker stack deploy`, `scripts/drill-swarm.sh`) instead of
    /// the compose project: containers are found by swarm's labels, and the services'
    /// metrics (booksvc's breaker, the requests reaching storagesvc), which the swarm stack
    /// does not publish, are not read.
    #[arg(long, value_name = "STACK")]
    swarm: Option<String>,
    /// The compose files of the stack.
    #[arg(long = "compose-file", default_values = ["docker-compose.yaml", "bench/docker-compose.drill.yaml"])]
    compose_files: Vec<PathBuf>,
    /// The compose services that are "the database".
    #[arg(long, value_delimiter = ',', default_value = "database")]
    database_services: Vec<String>,
    /// The compose services that are "Redis".
    #[arg(long, value_delimiter = ',', default_value = "redis")]
    redis_services: Vec<String>,
    /// The compose services that are "storagesvc".
    #[arg(long, value_delimiter = ',', default_value = "storagesvc")]
    storagesvc_services: Vec<String>,

    /// First measure closed-loop throughput (wrk) of booksvc, nginx and storagesvc directly.
    #[arg(long)]
    throughput: bool,
    /// storagesvc's books, read directly for the throughput comparison.
    #[arg(long, default_value = "http://127.0.0.1:18082/books")]
    storagesvc_url: String,
    /// storagesvc's bearer token, for reading it directly.
    #[arg(
        long,
        env = "STORAGESVC_TOKEN",
        default_value = "bookstore-dev-token",
        hide_env_values = true
    )]
    storagesvc_token: String,
    /// wrk's connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Length of each measured throughput run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    throughput_duration: Duration,
    /// Unmeasured run before each throughput run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Write the markdown report here, and the charts in a folder named after it.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Where every sample is written, as CSV.
    #[arg(long, default_value = "target/drill")]
    samples_dir: PathBuf,
}

fn parse_scenarios(name: &str) -> Result<Vec<Scenario>, String> {
    if name == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    clap::ValueEnum::from_str(name, false)
        .map(|scenario| vec![scenario])
        .map_err(|_| {
            let names: Vec<_> = Scenario::ALL
                .iter()
                .chain(&Scenario::REPLICATED)
                .map(|s| s.name())
                .collect();
            format!("unknown scenario; one of: {}, all", names.join(", "))
        })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // On SIGINT or SIGTERM the drill's future is dropped, and with it a fault in force,
    // which undoes itself (see fault.rs).
    let outcome = tokio::select! {
        outcome = drill(cli) => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drill: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The first SIGINT or SIGTERM; never, where they cannot be watched.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

async fn drill(cli: Cli) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = cli.scenarios.iter().flatten().copied().collect();
    let plan = Plan {
        rate: cli.rate,
        baseline: cli.baseline,
        fault: cli.fault,
        recovery: cli.recovery,
    };
    if plan.baseline.is_zero() || plan.fault.is_zero() || plan.recovery.is_zero() {
        bail!("--baseline, --fault and --recovery must be longer than zero");
    }
    let stack = stack(&cli).await?;

    let mut throughput = Vec::new();
    if cli.throughput {
        stack
            .compose
            .wait_all_healthy(Duration::from_secs(120))
            .await?;
        throughput = measure_throughput(&cli).await?;
    }

    let mut runs = Vec::new();
    for scenario in scenarios {
        let run = run::run(&stack, scenario, plan)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        report::write_samples(&run, &cli.samples_dir)?;
        print_run(&run);
        runs.push(run);
    }

    if let Some(path) = &cli.report {
        write_report(&cli, path, &throughput, &runs)?;
    }
    Ok(())
}

async fn stack(cli: &Cli) -> anyhow::Result<Stack> {
    let on_compose = cli.swarm.is_none();
    let upstream_metrics = on_compose.then(|| cli.storagesvc_metrics.clone());
    let mut targets = vec![Target {
        name: "booksvc".into(),
        service: "booksvc".into(),
        url: cli.booksvc_url.clone(),
        upstream_metrics: upstream_metrics.clone(),
        upstream_service: cli.storagesvc_services.first().cloned().unwrap_or_default(),
        breaker_metrics: on_compose.then(|| cli.booksvc_metrics.clone()),
    }];
    if !cli.no_nginx {
        targets.push(Target {
            name: "nginx".into(),
            service: "nginx".into(),
            url: cli.nginx_url.clone(),
            upstream_metrics,
            upstream_service: cli.storagesvc_services.first().cloned().unwrap_or_default(),
            breaker_metrics: None,
        });
    }
    let compose = match &cli.swarm {
        Some(stack) => Compose::swarm(stack.clone()),
        None => {
            for file in &cli.compose_files {
                if !file.exists() {
                    bail!(
                        "compose file {} not found (run the drill from the project root)",
                        file.display()
                    );
                }
            }
            Compose::detect(cli.project.clone(), cli.compose_files.clone()).await?
        }
    };
    Ok(Stack {
        compose,
        targets,
        database: cli.database_services.clone(),
        redis: cli.redis_services.clone(),
        storagesvc: cli.storagesvc_services.clone(),
        request_timeout: cli.request_timeout,
        storagesvc_faults: cli.storagesvc_faults.clone(),
        storagesvc_url: cli.storagesvc_url.clone(),
        storagesvc_token: cli.storagesvc_token.clone(),
        onset_trials: cli.onset_trials,
    })
}

async fn measure_throughput(cli: &Cli) -> anyhow::Result<Vec<Throughput>> {
    let load = Load {
        connections: cli.connections,
        threads: 2.min(cli.connections),
        duration: cli.throughput_duration,
        warmup: cli.warmup,
    };
    let bearer = vec![format!("Authorization: Bearer {}", cli.storagesvc_token)];
    let mut targets = vec![("booksvc", cli.booksvc_url.as_str(), Vec::new())];
    if !cli.no_nginx {
        targets.push(("nginx", cli.nginx_url.as_str(), Vec::new()));
    }
    targets.push(("storagesvc directly", cli.storagesvc_url.as_str(), bearer));
    let mut results = Vec::new();
    for (name, url, headers) in targets {
        progress(&format!(
            "throughput: {name} ({url}), {} connections, {} s",
            load.connections,
            load.duration.as_secs()
        ));
        let result = throughput::measure(name, url, &headers, &load).await?;
        println!(
            "throughput {name}: {:.0} requests/s, p50 {}, p99 {}, non-2xx {}",
            result.per_second,
            analysis::ms(result.p50),
            analysis::ms(result.p99),
            result.non_2xx
        );
        results.push(result);
    }
    Ok(results)
}

fn print_run(run: &run::ScenarioRun) {
    for target in &run.targets {
        let found = analysis::findings(run, target);
        for phase in Phase::ALL {
            let s = found.phase(phase);
            println!(
                "{} {} {phase}: sent {}, 2xx {:.1}%, stale {:.1}%, errors {:.1}%, p50 {}, p90 {}, p99 {}, max {}",
                run.scenario.name(),
                target.target.name,
                s.sent,
                s.percent(s.ok),
                s.percent(s.stale),
                s.percent(s.errors),
                analysis::ms(s.p50),
                analysis::ms(s.p90),
                analysis::ms(s.p99),
                analysis::ms(s.max)
            );
        }
        for check in analysis::checks(run, target, &found) {
            println!(
                "{} {} {}: {} ({})",
                run.scenario.name(),
                target.target.name,
                check.verdict(),
                check.promise,
                check.measured
            );
        }
    }
}

fn write_report(
    cli: &Cli,
    path: &Path,
    throughput: &[Throughput],
    runs: &[run::ScenarioRun],
) -> anyhow::Result<()> {
    let stem = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .context("the report path needs a file name")?;
    let charts = path.with_file_name(stem);
    std::fs::create_dir_all(&charts).with_context(|| format!("creating {}", charts.display()))?;
    for run in runs {
        let chart = charts.join(format!("{}.svg", run.scenario.name()));
        chart::draw(run, &chart)?;
        progress(&format!("wrote {}", chart.display()));
    }
    let generated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let markdown = report::markdown(&report::Inputs {
        generated,
        command: if cli.swarm.is_some() {
            "scripts/drill-swarm.sh".into()
        } else {
            "scripts/drill-report.sh".into()
        },
        on_swarm: cli.swarm.is_some(),
        connections: cli.connections,
        throughput_secs: cli.throughput_duration.as_secs(),
        throughput,
        runs,
        charts_dir: stem,
    });
    std::fs::write(path, markdown).with_context(|| format!("writing {}", path.display()))?;
    progress(&format!("wrote {}", path.display()));
    Ok(())
}

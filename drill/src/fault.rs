//! A scenario's fault as commands: those that put it in, and those that take it out again.
//!
//! Every fault is undone by commands known before it goes in, so a [`Fault`] that was
//! injected and not repaired (an error, a panic, Ctrl-C: the drill's future dropped) runs
//! its repair when it is dropped. No DROP rule, paused container or CPU limit outlives
//! the drill.

use std::time::Duration;

use anyhow::Context;

use crate::compose::docker;
use crate::process;
use crate::run::{Stack, Target};
use crate::scenario::{Action, Scenario};

/// storagesvc's port in its container, where the proxies reach it.
pub const STORAGESVC_PORT: u16 = 8082;

/// storagesvc's CPUs during the overload fault, and while its capacity is measured. Low
/// enough that twice its capacity stays within what the load generator and the proxy under
/// test can do on a 2-core machine: with 0.1 CPU storagesvc answered 430 to 690 reads/s,
/// and at twice that the load generator itself sent 180 ms late at p99.
pub const LIMITED_CPUS: f64 = 0.05;

/// The CFS period storagesvc's limited CPU time is handed out in. Docker's `--cpus` uses
/// 100 ms periods: at 5% of a CPU storagesvc would run for 5 ms, then stand frozen for 95 ms,
/// and every request arriving in the freeze would wait for the next period whatever the
/// load. That is a periodic hang, not overload, and a latency-based limiter or timeout reads
/// it as a sick upstream at any concurrency. In 20 ms periods (1 ms of CPU each, the
/// smallest quota the kernel takes) the same share freezes it for at most 19 ms, and its
/// latency grows with the queue, as an overloaded server's does.
pub const LIMITED_CPU_PERIOD: Duration = Duration::from_millis(20);

/// How long one command of a fault may take (a `docker stop` of PostgreSQL is the slowest).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One command line.
type Command = Vec<String>;

/// The commands of one fault, for one target.
#[derive(Debug)]
pub struct Fault {
    /// What the progress line says.
    pub what: String,
    inject: Vec<Command>,
    repair: Vec<Command>,
    /// Injected and not repaired yet.
    armed: bool,
}

impl Fault {
    /// The fault of `scenario` against `target`, with the containers looked up now, so
    /// that injecting it is one quick command.
    pub async fn prepare(
        stack: &Stack,
        scenario: Scenario,
        target: &Target,
    ) -> anyhow::Result<Self> {
        let faulted = stack.faulted(scenario);
        let containers = stack.compose.containers_of(&faulted).await?;
        let docker_all = |verb: &str| {
            let mut command = words(&["docker", verb]);
            command.extend(containers.ids().iter().cloned());
            command
        };
        let (what, inject, repair) = match scenario.action() {
            Action::Stop => (
                format!("docker stop {}", faulted.join(" ")),
                vec![docker_all("stop")],
                vec![docker_all("start")],
            ),
            Action::Pause => (
                format!("docker pause {}", faulted.join(" ")),
                vec![docker_all("pause")],
                vec![docker_all("unpause")],
            ),
            Action::Partition => {
                let proxy = stack.compose.container(&target.service).await?;
                let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &proxy]).await?;
                let mut addresses = Vec::new();
                for id in containers.ids() {
                    addresses.extend(container_addresses(id).await?);
                }
                let rules = partition_rules(pid.trim(), &addresses, STORAGESVC_PORT);
                (
                    format!(
                        "DROP {} (port {STORAGESVC_PORT}) in {}'s network namespace",
                        addresses.join(", "),
                        target.service
                    ),
                    rules.iter().map(|rule| rule("-I")).collect(),
                    rules.iter().map(|rule| rule("-D")).collect(),
                )
            }
            Action::StoragesvcFault {
                delay_ms,
                error_rate,
            } => {
                let body = format!(r#"{{"delay_ms":{delay_ms},"error_rate":{error_rate}}}"#);
                let url = &stack.storagesvc_faults;
                (
                    format!("PUT {url} {body}"),
                    vec![curl(&[
                        "-X",
                        "PUT",
                        "-H",
                        "content-type: application/json",
                        "-d",
                        &body,
                        url,
                    ])],
                    vec![curl(&["-X", "DELETE", url])],
                )
            }
            Action::CpuLimit => {
                let limited = LIMITED_CPUS.to_string();
                let mut inject = Vec::new();
                let mut repair = Vec::new();
                for id in containers.ids() {
                    let normal = cpus_of(id).await?;
                    inject.push(words(&["docker", "update", "--cpus", &limited, id]));
                    inject.push(shorter_cpu_period(&cpu_cgroup_of(id).await?));
                    // Docker sets its 100 ms period again with the quota it computes.
                    repair.push(words(&["docker", "update", "--cpus", &normal, id]));
                }
                (
                    format!(
                        "docker update --cpus {limited} {}, in {} ms CFS periods",
                        faulted.join(" "),
                        LIMITED_CPU_PERIOD.as_millis()
                    ),
                    inject,
                    repair,
                )
            }
        };
        Ok(Self {
            what,
            inject,
            repair,
            armed: false,
        })
    }

    /// Puts the fault in. From the first command on it counts as injected, so that a
    /// failure halfway is still undone.
    pub async fn inject(&mut self) -> anyhow::Result<()> {
        self.armed = true;
        for command in &self.inject {
            run(command).await?;
        }
        Ok(())
    }

    /// Takes the fault out: every repair command runs even if one fails.
    pub async fn repair(&mut self) -> anyhow::Result<()> {
        self.armed = false;
        let mut first_error = None;
        for command in &self.repair {
            if let Err(error) = run(command).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The drill is ending abnormally; blocking here is what makes the repair happen.
        for command in &self.repair {
            let Some((program, args)) = command.split_first() else {
                continue;
            };
            let outcome = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output();
            match outcome {
                Ok(out) if out.status.success() => {}
                _ => eprintln!("drill: could not undo the fault: `{}`", command.join(" ")),
            }
        }
        eprintln!("drill: fault undone on the way out: {}", self.what);
    }
}

/// The DROP rules of a partition from the proxy (whose process is `pid`) to storagesvc's
/// `addresses` on `port`, both directions, as functions of the verb: `-I` inserts a
/// rule, `-D` deletes it. Dropping, not rejecting: connects and reads hang.
fn partition_rules(
    pid: &str,
    addresses: &[String],
    port: u16,
) -> Vec<impl Fn(&str) -> Command + use<>> {
    let port = port.to_string();
    let mut rules = Vec::new();
    for address in addresses {
        for (chain, peer, peer_port) in [("OUTPUT", "-d", "--dport"), ("INPUT", "-s", "--sport")] {
            let (pid, address, port) = (pid.to_owned(), address.clone(), port.clone());
            rules.push(move |verb: &str| {
                words(&[
                    "nsenter", "-t", &pid, "-n", "iptables", "-w", verb, chain, peer, &address,
                    "-p", "tcp", peer_port, &port, "-j", "DROP",
                ])
            });
        }
    }
    rules
}

/// The container's addresses on every network it is on.
async fn container_addresses(id: &str) -> anyhow::Result<Vec<String>> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        id,
    ])
    .await?;
    let addresses: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    anyhow::ensure!(!addresses.is_empty(), "container {id} has no address");
    Ok(addresses)
}

/// The container's CPU limit, as `docker update --cpus` takes it back ("0" for none).
async fn cpus_of(id: &str) -> anyhow::Result<String> {
    let nano = docker(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", id]).await?;
    let nano: u64 = nano
        .trim()
        .parse()
        .with_context(|| format!("the CPU limit of {id}: {nano:?}"))?;
    Ok(format_cpus(nano))
}

/// Where a container's CPU quota is set: its cgroup, found from its main process.
#[derive(Debug, PartialEq)]
enum CpuCgroup {
    /// cgroup v1: the directory under the `cpu` controller's hierarchy.
    V1(String),
    /// cgroup v2: the directory under the unified hierarchy.
    V2(String),
}

async fn cpu_cgroup_of(id: &str) -> anyhow::Result<CpuCgroup> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", id]).await?;
    let path = format!("/proc/{}/cgroup", pid.trim());
    let table = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_cgroup(&table).with_context(|| format!("no cpu cgroup for {id} in {path}"))
}

/// The `cpu` controller's line of `/proc/PID/cgroup` (`3:cpu,cpuacct:/docker/ID`), or the
/// unified one (`0::/system.slice/docker-ID.scope`) where there is no v1 `cpu` line.
fn parse_cpu_cgroup(table: &str) -> Option<CpuCgroup> {
    let mut unified = None;
    for line in table.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.split(',').any(|controller| controller == "cpu") {
            return Some(CpuCgroup::V1(path.to_owned()));
        }
        if controllers.is_empty() {
            unified = Some(CpuCgroup::V2(path.to_owned()));
        }
    }
    unified
}

/// The command that hands the container's [`LIMITED_CPUS`] out in [`LIMITED_CPU_PERIOD`]s.
/// On v1 the quota is lowered before the period, so the share never rises above the limit
/// on the way.
fn shorter_cpu_period(cgroup: &CpuCgroup) -> Command {
    let period = LIMITED_CPU_PERIOD.as_micros() as f64;
    let quota = (LIMITED_CPUS * period).round() as u64;
    let period = period as u64;
    let script = match cgroup {
        CpuCgroup::V1(path) => format!(
            "echo {quota} > /sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us && \
             echo {period} > /sys/fs/cgroup/cpu{path}/cpu.cfs_period_us"
        ),
        CpuCgroup::V2(path) => format!("echo '{quota} {period}' > /sys/fs/cgroup{path}/cpu.max"),
    };
    words(&["sh", "-c", &script])
}

fn format_cpus(nano_cpus: u64) -> String {
    (nano_cpus as f64 / 1e9).to_string()
}

fn curl(args: &[&str]) -> Command {
    let mut command = words(&["curl", "-fsS", "--max-time", "5", "-o", "/dev/null"]);
    command.extend(args.iter().map(|arg| (*arg).to_owned()));
    command
}

fn words(words: &[&str]) -> Command {
    words.iter().map(|word| (*word).to_owned()).collect()
}

async fn run(command: &Command) -> anyhow::Result<()> {
    let (program, args) = command.split_first().context("an empty command")?;
    process::output(program, args, COMMAND_TIMEOUT)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_drops_both_directions_and_deletes_what_it_inserted() {
        let rules = partition_rules("4242", &["172.18.0.3".to_owned()], 8082);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0]("-I").join(" "),
            "nsenter -t 4242 -n iptables -w -I OUTPUT -d 172.18.0.3 -p tcp --dport 8082 -j DROP"
        );
        assert_eq!(
            rules[1]("-D").join(" "),
            "nsenter -t 4242 -n iptables -w -D INPUT -s 172.18.0.3 -p tcp --sport 8082 -j DROP"
        );
    }

    #[test]
    fn cpus_are_given_back_as_docker_update_takes_them() {
        assert_eq!(format_cpus(1_000_000_000), "1");
        assert_eq!(format_cpus(100_000_000), "0.1");
        assert_eq!(format_cpus(0), "0");
    }

    #[test]
    fn the_cpu_cgroup_is_the_cpu_controllers_or_else_the_unified_one() {
        let v1 = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(
            parse_cpu_cgroup(v1),
            Some(CpuCgroup::V1("/docker/abc".into()))
        );
        let v2 = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_cpu_cgroup(v2),
            Some(CpuCgroup::V2("/system.slice/docker-abc.scope".into()))
        );
        assert_eq!(parse_cpu_cgroup("4:memory:/docker/abc\n"), None);
    }

    #[test]
    fn the_limited_share_is_handed_out_in_short_periods() {
        let v1 = shorter_cpu_period(&CpuCgroup::V1("/docker/abc".into())).join(" ");
        assert_eq!(
            v1,
            "sh -c echo 1000 > /sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us && \
             echo 20000 > /sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us"
        );
        let v2 = shorter_cpu_period(&CpuCgroup::V2("/x.scope".into())).join(" ");
        assert_eq!(
            v2,
            "sh -c echo '1000 20000' > /sys/fs/cgroup/x.scope/cpu.max"
        );
    }

    fn fault(armed: bool, marker: &std::path::Path) -> Fault {
        Fault {
            what: "test".into(),
            inject: Vec::new(),
            repair: vec![words(&["touch", &marker.display().to_string()])],
            armed,
        }
    }

    #[test]
    fn an_injected_fault_is_undone_when_dropped_and_a_repaired_one_is_not() {
        let dir = std::env::temp_dir().join(format!("drill-fault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (undone, repaired) = (dir.join("undone"), dir.join("repaired"));
        drop(fault(true, &undone));
        drop(fault(false, &repaired));
        assert!(undone.exists(), "the repair ran on drop");
        assert!(
            !repaired.exists(),
            "nothing ran for a fault already repaired"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The stack under test: a compose project, whose containers are found through the compose
//! CLI, or a swarm stack, whose containers are found by the labels swarm gives them. Faults
//! go in with the Docker CLI, and health is read with the containers' own health checks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

use crate::process;

/// A compose project (`docker compose`, or the older `docker-compose`, with its files), or
/// a swarm stack deployed with `docker stack deploy`.
pub struct Compose {
    program: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    /// A swarm stack rather than a compose project: `project` is the stack's name.
    swarm: bool,
}

/// How long a compose or docker command may take. Stopping PostgreSQL is the slowest
/// (a fast shutdown, well under compose's own 10 s stop timeout).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Compose {
    /// Finds the compose CLI: the `docker compose` plugin, else `docker-compose`.
    pub async fn detect(project: String, files: Vec<PathBuf>) -> anyhow::Result<Self> {
        let plugin = vec!["docker".to_owned(), "compose".to_owned()];
        let standalone = vec!["docker-compose".to_owned()];
        for program in [plugin, standalone] {
            if run_cli(&program, &["version"]).await.is_ok() {
                return Ok(Self {
                    program,
                    project,
                    files,
                    swarm: false,
                });
            }
        }
        bail!("neither `docker compose` nor `docker-compose` works here")
    }

    /// The swarm stack `stack`, found by the labels swarm puts on its containers.
    pub fn swarm(stack: String) -> Self {
        Self {
            program: Vec::new(),
            project: stack,
            files: Vec::new(),
            swarm: true,
        }
    }

    /// `compose ps -q [service]`, or the swarm stack's running containers (of `service`).
    async fn ps(&self, service: Option<&str>) -> anyhow::Result<Vec<String>> {
        let ids = if self.swarm {
            let label = match service {
                Some(service) => format!(
                    "label=com.docker.swarm.service.name={}_{service}",
                    self.project
                ),
                None => format!("label=com.docker.stack.namespace={}", self.project),
            };
            docker(&["ps", "-q", "--filter", &label]).await?
        } else {
            let mut args = vec!["ps", "-q"];
            args.extend(service);
            self.compose(&args).await?
        };
        Ok(ids
            .lines()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect())
    }

    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full: Vec<String> = vec!["--project-name".into(), self.project.clone()];
        for file in &self.files {
            full.push("-f".into());
            full.push(file.display().to_string());
        }
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        run_cli(&self.program, &full).await
    }

    /// The containers of `services`, looked up once before a run, so that a fault goes in
    /// with one quick `docker` command rather than through compose, whose own start-up
    /// (a second or more for `docker-compose`) would blur the moment of the fault.
    pub async fn containers_of(&self, services: &[String]) -> anyhow::Result<Containers> {
        let mut ids = Vec::new();
        for service in services {
            ids.push(self.container(service).await?);
        }
        Ok(Containers(ids))
    }

    /// The container running `service`: the first, where it runs as several replicas.
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        match self.ps(Some(service)).await?.into_iter().next() {
            Some(id) => Ok(id),
            None => bail!("{} has no container for {service}", self.describe()),
        }
    }

    /// How many containers run `service`.
    pub async fn replicas(&self, service: &str) -> anyhow::Result<usize> {
        Ok(self.ps(Some(service)).await?.len())
    }

    /// Every container of the project.
    async fn containers(&self) -> anyhow::Result<Vec<String>> {
        self.ps(None).await
    }

    fn describe(&self) -> String {
        let kind = if self.swarm {
            "swarm stack"
        } else {
            "compose project"
        };
        format!("{kind} {}", self.project)
    }

    /// Waits until every container of the project reports healthy, or says which did not.
    pub async fn wait_all_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let containers = self.containers().await?;
            if containers.is_empty() {
                bail!("{} has no containers: is the stack up?", self.describe());
            }
            let mut args = vec![
                "inspect",
                "--format",
                "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            ];
            args.extend(containers.iter().map(String::as_str));
            let states = docker(&args).await?;
            let unhealthy: Vec<&str> = states
                .lines()
                .map(str::trim)
                .filter(|state| !(state.ends_with(" healthy") || state.ends_with(" running")))
                .map(|state| state.trim_start_matches('/'))
                .collect();
            if unhealthy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not healthy within {within:?}: {}", unhealthy.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Containers of the project, looked up once, for a fault to act on together.
pub struct Containers(Vec<String>);

impl Containers {
    pub fn ids(&self) -> &[String] {
        &self.0
    }
}

/// A container's own health check, run on demand. Docker runs it only every few seconds;
/// the drill runs it as often as it likes, to see the moment a service is healthy again.
pub struct HealthCheck {
    container: String,
    command: Vec<String>,
}

impl HealthCheck {
    pub async fn of(compose: &Compose, service: &str) -> anyhow::Result<Self> {
        let container = compose.container(service).await?;
        let test = docker(&[
            "inspect",
            "--format",
            "{{json .Config.Healthcheck.Test}}",
            &container,
        ])
        .await?;
        let test: Vec<String> = serde_json::from_str(test.trim())
            .with_context(|| format!("{service} has no health check to run ({})", test.trim()))?;
        let command = match test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, [shell])) if kind == "CMD-SHELL" => {
                vec!["sh".into(), "-c".into(), shell.clone()]
            }
            _ => bail!("{service}'s health check {test:?} cannot be run by the drill"),
        };
        Ok(Self { container, command })
    }

    pub async fn passes(&self) -> bool {
        let mut args = vec!["exec", self.container.as_str()];
        args.extend(self.command.iter().map(String::as_str));
        docker(&args).await.is_ok()
    }
}

/// Runs a CLI given as its program and leading arguments (`docker compose`).
async fn run_cli(program: &[String], args: &[&str]) -> anyhow::Result<String> {
    let (executable, leading) = program.split_first().context("no program")?;
    let mut all: Vec<&str> = leading.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    process::output(executable, &all, COMMAND_TIMEOUT).await
}

pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    process::output("docker", args, COMMAND_TIMEOUT).await
}

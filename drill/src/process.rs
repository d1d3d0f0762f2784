//! Running the tools the drill drives (docker, compose, wrk), each bounded in time.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Runs `program args`, for at most `bound`, and returns its stdout; a failure carries its
/// stderr.
pub async fn output<S: AsRef<str>>(
    program: &str,
    args: &[S],
    bound: Duration,
) -> anyhow::Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let line = format!("{program} {}", args.join(" "));
    let child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(bound, child)
        .await
        .with_context(|| format!("`{line}` took longer than {bound:?}"))?
        .with_context(|| format!("could not run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

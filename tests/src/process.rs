//! Running a service binary as a user would, to completion, with a bound.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// How long a binary may take to refuse its configuration or print its help.
const MUST_END_WITHIN: Duration = Duration::from_secs(10);

/// Runs `command` to completion with its output captured. One still running after 10 s
/// has accepted a configuration it should have refused (it started serving?): it is
/// killed, and the test fails.
pub async fn run_to_completion(command: &mut Command) -> Output {
    let finished = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(MUST_END_WITHIN, finished).await {
        Ok(output) => output.expect("the binary runs"),
        Err(_) => panic!("still running after {MUST_END_WITHIN:?} (it started serving?)"),
    }
}

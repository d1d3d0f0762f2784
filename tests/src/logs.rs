//! The services' log lines, captured in memory in their production JSON format
//! (`shared::telemetry::json_layer`), for tests that check what the services log.
//!
//! The subscriber is process-wide and both services run in the test's process, so every
//! line of both lands in one capture, as it would in a log collector. Use it in a test
//! binary of its own: installing it fails if another subscriber is already in place.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What is captured: the services at `debug`, so the lines a request span holds include
/// the request's start and the upstream connection, plus everything else at `info`.
const FILTER: &str = "info,booksvc=debug,storagesvc=debug,shared=debug,tower_http=debug";

/// Every log line written since the process-wide subscriber was installed.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Installs the capturing subscriber (once per process) and returns the capture.
    pub fn install() -> Self {
        static CAPTURED: OnceLock<CapturedLogs> = OnceLock::new();
        CAPTURED
            .get_or_init(|| {
                let captured = CapturedLogs::default();
                let writer = captured.clone();
                tracing_subscriber::registry()
                    .with(EnvFilter::new(FILTER))
                    .with(shared::telemetry::json_layer(move || writer.clone()))
                    .try_init()
                    .expect("no other subscriber is installed in this test binary");
                captured
            })
            .clone()
    }

    /// The lines captured so far, each parsed as the JSON object it is.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

impl io::Write for CapturedLogs {
    /// The fmt layer hands over each event as one whole line in one `write_all`, taken
    /// here in one piece under the lock, so lines of concurrent requests never interleave.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

//! The services' log lines, captured in memory in their production JSON format
//! (`shared::telemetry::json_layer`), for tests that check what the services log.
//!
//! The subscriber is process-wide and both services run in the test's process, so every
//! line of both lands in one capture, as it would in a log collector. Use it in a test
//! binary of its own: installing it fails if another subscriber is already in place.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
                tracing_subscriber::registry()
                    .with(Self::filter())
                    .with(captured.layer())
                    .try_init()
                    .expect("no other subscriber is installed in this test binary");
                captured
            })
            .clone()
    }

    /// The filter of the whole subscriber (as `RUST_LOG` is the services').
    pub fn filter() -> EnvFilter {
        EnvFilter::new(FILTER)
    }

    /// The capturing log layer, which skips the spans made only for traces as the
    /// services' log layer does: for a test that installs it, under [`Self::filter`], along
    /// with another layer (the export of traces).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let writer = self.clone();
        shared::telemetry::json_layer(move || writer.clone())
            .with_filter(filter_fn(shared::telemetry::traces::is_logged))
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

//! W3C Trace Context: one trace id for everything one client request causes, in every service.
//!
//! A request arrives with a `traceparent` header (or without one, and then starts a new
//! trace). [`propagate`], a server middleware, turns it into a [`TraceContext`], puts that
//! in the request's extensions (where the request span reads the trace id from, so every
//! log line of the request carries it) and makes it the *current* context while the request
//! is handled. The service client asks for [`current`] and sends a `traceparent` with the
//! same trace id and a new span id, plus the request's `x-request-id`. So the log lines of
//! one request share a trace id in booksvc and in storagesvc.
//!
//! The current context lives in a tokio task-local, not in a global: it belongs to the task
//! handling the request. A task started with `tokio::spawn` does not inherit it; wrap such a
//! future in [`scope`] to carry it along.
//!
//! Parsing follows the W3C recommendation (level 1, version `00`): lowercase hex only,
//! all-zero ids and version `ff` are invalid, an invalid header starts a new trace (and its
//! `tracestate` is dropped with it), a higher version is read as far as version `00` goes.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The header carrying trace id, parent span id and flags.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor-specific trace data, forwarded unchanged along with a valid `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The request id header, set by the server's request-id layer and forwarded upstream.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The version this module writes, and the only one whose exact layout it knows.
const VERSION: u8 = 0x00;
/// Length of a version `00` header: `vv-` + 32 + `-` + 16 + `-` + `ff`.
const HEADER_LEN: usize = 55;
/// The only flag defined by version `00`; other bits are reserved and sent as zero.
const SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// A random trace id, every one of its 128 bits random. Two v4 UUIDs (from a CSPRNG
    /// seeded by the operating system), one turned by half its width before they are
    /// folded together, so that the 6 fixed bits of each meet random bits of the other. A
    /// single UUID's fixed variant bits sit in the low 8 bytes, which ratio samplers read
    /// as a number: OpenTelemetry's `traceidratio` then sampled no trace below a ratio of
    /// about one half.
    pub fn random() -> Self {
        loop {
            let one = uuid::Uuid::new_v4().as_u128();
            let two = uuid::Uuid::new_v4().as_u128().rotate_left(64);
            if let Some(id) = Self::from_bytes((one ^ two).to_be_bytes()) {
                return id;
            }
        }
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// A random span id: the two halves of a v4 UUID folded together, so the fixed version
    /// bits of one half meet random bits of the other and all 64 bits are random.
    pub fn random() -> Self {
        loop {
            let uuid = uuid::Uuid::new_v4().as_u128();
            // The casts truncate on purpose: the high and the low half of the 128 bits.
            let folded = ((uuid >> 64) as u64) ^ (uuid as u64);
            if let Some(id) = Self::from_bytes(folded.to_be_bytes()) {
                return id;
            }
        }
    }

    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Lowercase hex, in one write: every request logs its trace id and sends a `traceparent`,
/// and formatting it a byte at a time through `write!` took about 1% of booksvc's
/// instructions per proxied read.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    // A trace id, the longest value written here, is 16 bytes.
    let mut text = [0u8; 32];
    let text = text.get_mut(..2 * bytes.len()).ok_or(fmt::Error)?;
    hex::encode_to_slice(bytes, text).map_err(|_| fmt::Error)?;
    f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
}

/// Why a `traceparent` value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error(
        "traceparent must be `version-traceid-parentid-flags` ({HEADER_LEN} characters for version 00), got {0} characters"
    )]
    Length(usize),
    #[error("traceparent fields must be separated by `-`")]
    Separator,
    #[error("traceparent {0} must be lowercase hex")]
    NotHex(&'static str),
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    #[error("traceparent trace id must not be all zeros")]
    ZeroTraceId,
    #[error("traceparent parent id must not be all zeros")]
    ZeroParentId,
}

/// A parsed `traceparent`: which trace, which span the request came from, and whether the
/// caller records the trace (the `sampled` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// The start of a new trace. Marked sampled: every request is logged, so the trace is
    /// in fact recorded.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: SpanId::random(),
            sampled: true,
        }
    }

    /// The same trace seen from a new span: what a call made on behalf of this one sends.
    pub fn child(&self) -> Self {
        Self {
            parent_id: SpanId::random(),
            ..*self
        }
    }

    /// Parses a header value, as the W3C recommendation says a receiver must.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let bytes = value.as_bytes();
        if bytes.len() < HEADER_LEN {
            return Err(TraceParentError::Length(bytes.len()));
        }
        let version = parse_hex::<1>(&bytes[0..2], "version")?[0];
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        // Version 00 is exactly 55 characters; a later version may append fields after a
        // dash, which a version 00 reader skips.
        let fits = bytes.len() == HEADER_LEN || (version > VERSION && bytes[HEADER_LEN] == b'-');
        if !fits {
            return Err(TraceParentError::Length(bytes.len()));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceParentError::Separator);
        }
        let trace_id = TraceId::from_bytes(parse_hex(&bytes[3..35], "trace id")?)
            .ok_or(TraceParentError::ZeroTraceId)?;
        let parent_id = SpanId::from_bytes(parse_hex(&bytes[36..52], "parent id")?)
            .ok_or(TraceParentError::ZeroParentId)?;
        let flags = parse_hex::<1>(&bytes[53..55], "flags")?[0];
        Ok(Self {
            trace_id,
            parent_id,
            sampled: flags & SAMPLED != 0,
        })
    }

    /// The header value, always version `00`.
    pub fn to_header_value(&self) -> HeaderValue {
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_str(&self.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { SAMPLED } else { 0 };
        write!(
            f,
            "{VERSION:02x}-{}-{}-{flags:02x}",
            self.trace_id, self.parent_id
        )
    }
}

/// Decodes exactly `N` bytes of lowercase hex (uppercase is invalid in `traceparent`).
fn parse_hex<const N: usize>(hex: &[u8], field: &'static str) -> Result<[u8; N], TraceParentError> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0u8; N];
    if hex.len() != 2 * N {
        return Err(TraceParentError::NotHex(field));
    }
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(TraceParentError::NotHex(field));
        };
        *byte = high << 4 | low;
    }
    Ok(out)
}

/// What one request carries into the calls made while handling it.
#[derive(Debug, Clone)]
pub struct TraceContext {
    traceparent: TraceParent,
    /// Whether `traceparent` came from the caller (else this service started the trace).
    incoming: bool,
    tracestate: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// Whether the trace is recorded while exporting traces (the sampler's decision).
    recorded: bool,
}

impl TraceContext {
    /// Continues the trace of the incoming `traceparent`, or starts a new one when it is
    /// absent or invalid (a malformed header from a client must not fail its request).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers.get(X_REQUEST_ID).cloned();
        let incoming = headers.get(TRACEPARENT).map(|value| {
            value
                .to_str()
                .map_err(|_| TraceParentError::NotHex("header"))
                .and_then(TraceParent::parse)
        });
        match incoming {
            Some(Ok(traceparent)) => Self {
                traceparent,
                incoming: true,
                tracestate: headers.get(TRACESTATE).cloned(),
                request_id,
                recorded: true,
            },
            Some(Err(err)) => {
                let context = Self::new_root(request_id);
                // Logged before the request span exists, so it names the ids itself.
                tracing::debug!(
                    error = %err,
                    trace_id = %context.trace_id(),
                    request_id = context.request_id().and_then(|id| id.to_str().ok()),
                    "ignoring an invalid traceparent; starting a new trace"
                );
                context
            }
            None => Self::new_root(request_id),
        }
    }

    /// A new trace, for work that no incoming request started (a background probe, say).
    pub fn new_root(request_id: Option<HeaderValue>) -> Self {
        Self {
            traceparent: TraceParent::new_root(),
            incoming: false,
            tracestate: None,
            request_id,
            recorded: true,
        }
    }

    /// Whether the trace is recorded (always, when not exporting traces).
    pub fn recorded(&self) -> bool {
        self.recorded
    }

    pub fn trace_id(&self) -> TraceId {
        self.traceparent.trace_id
    }

    /// The `traceparent` this request arrived with (or the root it started).
    pub fn traceparent(&self) -> TraceParent {
        self.traceparent
    }

    /// The caller's `traceparent`, when the request came with a valid one: the span this
    /// request's span is a child of.
    pub fn incoming(&self) -> Option<TraceParent> {
        self.incoming.then_some(self.traceparent)
    }

    /// The `traceparent` for one outgoing call: same trace, a new span id.
    pub fn outgoing_traceparent(&self) -> TraceParent {
        self.traceparent.child()
    }

    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// The request's `x-request-id`, forwarded so both services log the same one.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The context of the request being handled by this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(TraceContext::clone).ok()
}

/// Whether the trace of the request being handled by this task is recorded: `true`
/// outside a request, and when not exporting traces.
pub fn current_recorded() -> bool {
    CURRENT.try_with(TraceContext::recorded).unwrap_or(true)
}

/// The trace id of the request being handled by this task, if any.
pub fn current_trace_id() -> Option<TraceId> {
    CURRENT.try_with(TraceContext::trace_id).ok()
}

/// Runs `future` with `context` as the current context: calls it makes continue that trace.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// Server middleware: reads the incoming trace context, stores it in the request's
/// extensions and makes it current while the rest of the stack handles the request.
///
/// It must run after the request id is set and before the request span is created.
pub async fn propagate(mut request: Request, next: Next) -> Response {
    let mut context = TraceContext::from_headers(request.headers());
    context.recorded = crate::telemetry::traces::head_decision(&context);
    request.extensions_mut().insert(context.clone());
    scope(context, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_traceparent() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), VALID);
        assert_eq!(parsed.to_header_value(), VALID);
    }

    #[test]
    fn keeps_the_sampled_flag_and_zeroes_reserved_flags() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled).unwrap().sampled);
        assert_eq!(
            TraceParent::parse(unsampled).unwrap().to_string(),
            unsampled
        );
        let reserved = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        assert_eq!(
            TraceParent::parse(reserved).unwrap().to_string(),
            VALID,
            "only the sampled bit is defined by version 00"
        );
    }

    #[test]
    fn reads_a_higher_version_as_far_as_version_00_goes() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceParent::parse(future).unwrap().to_string(), VALID);
        let future_exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(future_exact).unwrap().to_string(), VALID);
    }

    #[test]
    fn rejects_malformed_traceparents() {
        use TraceParentError::*;
        let cases: &[(&str, TraceParentError)] = &[
            ("", Length(0)),
            (&VALID[..54], Length(54)),
            (&format!("{VALID}0"), Length(56)),
            (&format!("{VALID}-extra"), Length(61)),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ForbiddenVersion,
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                NotHex("version"),
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                NotHex("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                NotHex("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                NotHex("parent id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                NotHex("flags"),
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                Separator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
                Separator,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroParentId,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                TraceParent::parse(value).as_ref(),
                Err(expected),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_child_keeps_the_trace_id_and_gets_a_new_span_id() {
        let parent = TraceParent::parse(VALID).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(child.sampled, parent.sampled);
        assert_eq!(TraceParent::parse(&child.to_string()).unwrap(), child);
    }

    #[test]
    fn trace_ids_are_random_in_every_bit_as_ratio_samplers_need() {
        // Ratio samplers read the low 8 bytes as a number (the sampling itself is tested
        // with the SDK's sampler in `telemetry::traces`).
        let mut ones = [0u32; 128];
        let n = 4000;
        for _ in 0..n {
            let id = u128::from_be_bytes(TraceId::random().to_bytes());
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += ((id >> bit) & 1) as u32;
            }
        }
        for (bit, count) in ones.iter().enumerate() {
            assert!(
                (1600..2400).contains(count),
                "bit {bit} set {count} times of {n}"
            );
        }
    }

    #[test]
    fn new_roots_are_valid_and_distinct() {
        let one = TraceParent::new_root();
        let two = TraceParent::new_root();
        assert_ne!(one.trace_id, two.trace_id);
        assert_eq!(TraceParent::parse(&one.to_string()).unwrap(), one);
    }

    #[test]
    fn context_continues_a_valid_incoming_trace_and_forwards_its_state() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
        let context = TraceContext::from_headers(&headers);
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.tracestate().unwrap(), "vendor=abc");
        assert_eq!(context.request_id().unwrap(), "req-1");
        assert_eq!(context.incoming(), Some(TraceParent::parse(VALID).unwrap()));
    }

    #[test]
    fn context_starts_a_new_trace_and_drops_tracestate_when_traceparent_is_invalid() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let context = TraceContext::from_headers(&headers);
        assert_ne!(context.trace_id().to_bytes(), [0; 16]);
        assert!(context.tracestate().is_none());
        assert!(context.request_id().is_none());
        assert_eq!(context.incoming(), None, "a trace this service started");
    }

    #[tokio::test]
    async fn current_is_the_scoped_context_and_nothing_outside() {
        assert!(current().is_none());
        let context = TraceContext::new_root(None);
        let trace_id = context.trace_id();
        let seen = scope(context, async {
            (current().map(|c| c.trace_id()), current_trace_id())
        })
        .await;
        assert_eq!(seen, (Some(trace_id), Some(trace_id)));
        assert!(current().is_none());
        assert!(current_trace_id().is_none());
    }
}

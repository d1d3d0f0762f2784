//! An OTLP/HTTP receiver for the tests: it accepts `POST /v1/traces` (protobuf), decodes
//! each `ExportTraceServiceRequest` and keeps the spans, so a test can check what a service
//! exported, as a collector would receive it.
//!
//! It runs on a thread and a runtime of its own: the exporter that sends to it lives as long
//! as the process (its subscriber is global), longer than any one test's runtime.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// OTLP's span kinds, as numbered in the protocol.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
/// OTLP's status code of a span that failed.
pub const STATUS_ERROR: i32 = 2;

/// One span as it arrived: ids in lowercase hex (the parent's empty for a root).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub status_code: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration_ms(&self) -> f64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e6
    }
}

/// The receiver: where to send, and what was received.
#[derive(Clone)]
pub struct OtlpReceiver {
    pub address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free local port, on a thread of its own.
    pub fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&spans));
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
            })
            .unwrap();
        Self { address, spans }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far, of every trace.
    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Every span of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// `POST /v1/traces`: decodes the protobuf body, keeps its spans, answers an empty success.
async fn receive(
    State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = [(header::CONTENT_TYPE, "application/x-protobuf")];
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, protobuf, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, protobuf, Vec::new());
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.push(ReceivedSpan {
                service_name: service_name.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                status_code: span.status.map_or(0, |status| status.code),
                start_unix_nanos: span.start_time_unix_nano,
                end_unix_nanos: span.end_time_unix_nano,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.clone(),
                            kv.value.as_ref().map(text).unwrap_or_default(),
                        )
                    })
                    .collect(),
            });
        }
    }
    spans.lock().unwrap().extend(received);
    let answer = ExportTraceServiceResponse {
        partial_success: None,
    };
    (StatusCode::OK, protobuf, answer.encode_to_vec())
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        other => format!("{other:?}"),
    }
}

/// A trace as an indented tree, children under their parent by start time: each span's
/// name, the service it ran in (`service_of`), when it started and how long it took
/// (milliseconds from the first span's start), its status if an error, and `attributes`
/// that it has.
pub fn render_tree(
    spans: &[ReceivedSpan],
    service_of: impl Fn(&ReceivedSpan) -> String,
    attributes: &[&str],
) -> String {
    let origin = spans
        .iter()
        .map(|span| span.start_unix_nanos)
        .min()
        .unwrap_or(0);
    let ids: Vec<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| !ids.contains(&span.parent_span_id.as_str()))
        .collect();
    roots.sort_by_key(|span| span.start_unix_nanos);
    let mut out = String::new();
    let mut stack: Vec<(&ReceivedSpan, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        let start = (span.start_unix_nanos.saturating_sub(origin)) as f64 / 1e6;
        let mut line = format!(
            "{}{} [{}] +{start:.1} ms, {:.1} ms",
            "  ".repeat(depth),
            span.name,
            service_of(span),
            span.duration_ms()
        );
        if span.status_code == STATUS_ERROR {
            line.push_str(", ERROR");
        }
        for key in attributes {
            if let Some(value) = span.attribute(key) {
                let _ = write!(line, ", {key}={value}");
            }
        }
        out.push_str(&line);
        out.push('\n');
        let mut children: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|child| child.parent_span_id == span.span_id)
            .collect();
        children.sort_by_key(|child| child.start_unix_nanos);
        stack.extend(children.into_iter().rev().map(|child| (child, depth + 1)));
    }
    out
}

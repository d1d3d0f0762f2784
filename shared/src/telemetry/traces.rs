//! Traces over OTLP: the spans a request produces in each service, exported to an
//! OpenTelemetry collector, off unless an endpoint is configured.
//!
//! The spans are `tracing` spans; a `tracing-opentelemetry` layer turns them into
//! OpenTelemetry spans and the SDK's batch processor sends them, from a thread of its own,
//! as OTLP/HTTP protobuf: nothing is encoded or sent on a request's path, and a collector
//! that is slow or down costs dropped spans, never a slower request. Without an endpoint
//! the layer is not installed at all, and the spans made only for traces (target
//! [`TRACE_ONLY`]) are disabled at their call sites, so they cost nothing.
//!
//! **Only recorded traces pay for their spans.** With a sampler that leaves traces out
//! (`parentbased_traceidratio`), the request spans are made anyway (the logs need them),
//! but the spans made only for traces are made only under a recorded trace
//! ([`trace_only_span!`](crate::trace_only_span), [`recording`]); a call made outside any
//! of them tells the called service that its trace is not recorded
//! ([`current_traceparent`]), so that service does not record its part either.
//!
//! **One trace id, in the logs and in the traces.** [`crate::trace_context`] decides a
//! request's trace id (the caller's `traceparent`, or a new one), and the logs carry it. The
//! exported spans use the same: a request span continues the caller's span as its remote
//! parent ([`continue_remote_parent`]); a request without a `traceparent` starts a root
//! span whose trace id the SDK takes from the request's context ([`RequestTraceIds`]). An
//! outgoing call sends the span it is made in as the parent ([`current_traceparent`]), so
//! the called service's request span is a child of the attempt that called it.
//!
//! Which spans there are, and their attributes, is listed in README ("Traces").

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, trace as otel};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider};
use reqwest::Url;
use tracing::Span;
use tracing::subscriber::Interest;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::registry::LookupSpan;

use crate::trace_context::{self, SpanId, TraceContext, TraceId, TraceParent};

/// The target of spans made only for traces (an attempt, the fallback decision, a store
/// read, a query): the log layer skips them, so the logs read as before, and without an
/// OTLP endpoint no layer wants them.
pub const TRACE_ONLY: &str = "traces";

/// Added to `RUST_LOG`'s filter while exporting, so that what is traced does not depend on
/// what is logged: the spans made for traces only, and the request span.
pub const ALWAYS_TRACED: [&str; 2] = ["traces=info", "shared::telemetry=info"];

/// Crates whose spans are exported (besides [`TRACE_ONLY`]): ours, not our dependencies'.
const OUR_CRATES: [&str; 4] = ["booksvc", "storagesvc", "shared", "resilience"];

/// How long an export may take before the exporter gives up on it (the OTLP default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this process exports traces: set once the layer is built.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The sampler of the exporting layer, asked once per request ([`head_decision`]).
static HEAD_SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Whether the OpenTelemetry layer is installed: spans carry their OpenTelemetry
/// attributes, and calls send their span as the parent.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`), with the OpenTelemetry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// The standard OpenTelemetry variables this service honours, flattened into each
/// service's configuration (so `--help` lists them and a bad value stops start-up naming
/// the variable). The exporter itself also reads `OTEL_EXPORTER_OTLP_HEADERS` (and
/// `_TRACES_HEADERS`) for a collector that wants credentials.
#[derive(Debug, Clone, clap::Args)]
pub struct TracesArgs {
    /// Base URL of an OTLP/HTTP collector (protobuf); traces go to `{this}/v1/traces`.
    /// Unset, with `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` unset too: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<Url>,

    /// The full URL traces are sent to, instead of the base URL's `/v1/traces`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_exporter_otlp_traces_endpoint: Option<Url>,

    /// `service.name` of the exported spans; unset: the service's own name.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Which traces are recorded.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub otel_traces_sampler: SamplerKind,

    /// The ratio of the `traceidratio` samplers, 0 to 1 (unset: 1).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub otel_traces_sampler_arg: Option<f64>,
}

impl Default for TracesArgs {
    /// No endpoint: no traces.
    fn default() -> Self {
        Self {
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_traces_endpoint: None,
            otel_service_name: None,
            otel_traces_sampler: SamplerKind::ParentBasedAlwaysOn,
            otel_traces_sampler_arg: None,
        }
    }
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("expected a ratio between 0 and 1, such as `0.25`".to_owned()),
    }
}

/// What the exporter is built from: where spans go, under which service name, and which
/// are recorded.
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// The full URL spans are sent to (`…/v1/traces`).
    pub endpoint: Url,
    pub service_name: String,
    pub sampler: Sampler,
}

impl TracesArgs {
    /// The configuration of the exporter of `service`, or `None` when no endpoint is set.
    pub fn config(&self, service: &str) -> Option<TracesConfig> {
        let endpoint = match (
            &self.otel_exporter_otlp_traces_endpoint,
            &self.otel_exporter_otlp_endpoint,
        ) {
            (Some(traces), _) => traces.clone(),
            (None, Some(base)) => traces_url(base),
            (None, None) => return None,
        };
        let ratio = self.otel_traces_sampler_arg.unwrap_or(1.0);
        let parent_based = |root| Sampler::ParentBased(Box::new(root));
        let sampler = match self.otel_traces_sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
            SamplerKind::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            SamplerKind::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            SamplerKind::ParentBasedTraceIdRatio => parent_based(Sampler::TraceIdRatioBased(ratio)),
        };
        Some(TracesConfig {
            endpoint,
            service_name: self
                .otel_service_name
                .clone()
                .unwrap_or_else(|| service.to_owned()),
            sampler,
        })
    }
}

/// `{base}/v1/traces`, keeping a path prefix of the base URL (as the OTLP specification
/// says for `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn traces_url(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// The exporting half of the traces: flushes and stops on [`Traces::shutdown`].
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans that ended so far now, rather than at the next batch (waits for
    /// the export, up to its timeout).
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "could not flush the traces");
        }
    }

    /// Exports what is left and stops the exporter: the last spans of a service that is
    /// shutting down are not lost.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(err)) = stopped {
            tracing::warn!(error = %err, "could not export the last traces");
        }
    }
}

/// The layer that exports this process's spans as `config` says, and the handle that
/// flushes them. Only spans are exported (log events stay in the logs), and only ours.
pub fn layer<S>(config: &TracesConfig) -> anyhow::Result<(impl Layer<S> + use<S>, Traces)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let client = crate::client::blocking_http_client(EXPORT_TIMEOUT)
        .context("cannot build the OTLP exporter's HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("cannot export traces to {}", config.endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(config.sampler.clone())
        .with_id_generator(RequestTraceIds::default())
        .with_resource(
            Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // The span is started when it is first asked for its context (an outgoing call)
        // or when it ends, so attributes recorded before then (a span's name) still count.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(
            // Per span, not per call site: whether the request's trace is recorded.
            DynFilterFn::new(|meta, _| {
                meta.is_span() && is_exported(meta) && trace_context::current_recorded()
            })
            .with_callsite_filter(|meta| {
                if meta.is_span() && is_exported(meta) {
                    Interest::sometimes()
                } else {
                    Interest::never()
                }
            }),
        );
    let _first_layer_only = HEAD_SAMPLER.set(config.sampler.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, Traces { provider }))
}

/// Whether a request's trace is recorded, decided once as it arrives by the sampler the
/// exporter was built with (the caller's `sampled` flag for the `parentbased_` ones, the
/// trace id for a ratio): the SDK would decide the same for its request span. A trace that
/// is not recorded costs no span in the export layer at all, as if not exporting. `true`
/// when not exporting.
pub fn head_decision(context: &TraceContext) -> bool {
    HEAD_SAMPLER
        .get()
        .filter(|_| exporting())
        .is_none_or(|sampler| samples(sampler, context))
}

/// What `sampler` decides for the request span of `context`.
fn samples(sampler: &Sampler, context: &TraceContext) -> bool {
    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    let parent = context
        .incoming()
        .map(|parent| remote_parent(parent, TraceState::default()));
    let result = sampler.should_sample(
        parent.as_ref(),
        otel::TraceId::from_bytes(context.trace_id().to_bytes()),
        "request",
        &SpanKind::Server,
        &[],
        &[],
    );
    result.decision != SamplingDecision::Drop
}

/// Spans of our crates at `INFO` or above, and those made for traces only.
fn is_exported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let ours = target == TRACE_ONLY
        || OUR_CRATES.iter().any(|name| {
            target
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
    ours && *meta.level() <= tracing::Level::INFO
}

/// Whether the log layer writes a span: every one but those made for traces only.
pub fn is_logged(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.is_span() && meta.target() == TRACE_ONLY)
}

/// Trace ids for new root spans: the trace id of the request being handled (what its log
/// lines carry), or a random one outside a request. Span ids are random.
///
/// The SDK asks for a trace id only for a span without a parent, which in a request is
/// its request span when the caller sent no `traceparent`; every other span inherits its
/// parent's.
#[derive(Debug, Default)]
pub struct RequestTraceIds {
    random: RandomIdGenerator,
}

impl IdGenerator for RequestTraceIds {
    fn new_trace_id(&self) -> otel::TraceId {
        trace_context::current_trace_id().map_or_else(
            || self.random.new_trace_id(),
            |id| otel::TraceId::from_bytes(id.to_bytes()),
        )
    }

    fn new_span_id(&self) -> otel::SpanId {
        self.random.new_span_id()
    }
}

/// Makes `span` (a request span) a child of the caller's span `parent`, which came in a
/// `traceparent` (with its `tracestate`, if valid). Does nothing when not exporting.
pub fn continue_remote_parent(span: &Span, parent: TraceParent, tracestate: Option<&str>) {
    if !exporting() {
        return;
    }
    let state = tracestate
        .and_then(|value| value.parse::<TraceState>().ok())
        .unwrap_or_default();
    // Fails only for a span no layer records; it then has no parent to set.
    let _ = span.set_parent(remote_parent(parent, state));
}

/// The caller's span `parent` (from a `traceparent`) as an OpenTelemetry parent context.
fn remote_parent(parent: TraceParent, state: TraceState) -> Context {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(
        otel::TraceId::from_bytes(parent.trace_id.to_bytes()),
        otel::SpanId::from_bytes(parent.parent_id.to_bytes()),
        flags,
        true,
        state,
    ))
}

/// Whether the current span's trace is recorded: false when not exporting, outside any
/// exported span, or when the sampler left the trace out. The first call decides the
/// sampling of a span not yet started (it starts it); the decision then holds.
pub fn recording() -> bool {
    exporting()
        && trace_context::current_recorded()
        && Span::current().context().span().span_context().is_sampled()
}

/// A span made only for traces (target [`TRACE_ONLY`], level `INFO`, the arguments of
/// `tracing::info_span!`), made only when the current trace is recorded ([`recording`]);
/// otherwise `Span::none()`. Under a trace the sampler left out, such a span would cost a
/// span's bookkeeping in every layer, for nothing.
#[macro_export]
macro_rules! trace_only_span {
    ($($span:tt)+) => {
        if $crate::telemetry::traces::recording() {
            ::tracing::info_span!(target: $crate::telemetry::TRACE_ONLY, $($span)+)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// The `traceparent` of a call made in the current span: this span as the parent, with its
/// sampling decision. `None` when not exporting, or outside any request. Outside any
/// exported span, within a request, the request's trace unsampled: the call is made where
/// a span made only for traces was not, because the trace is not recorded.
pub fn current_traceparent() -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return trace_context::current().map(|request| TraceParent {
            sampled: false,
            ..request.outgoing_traceparent()
        });
    }
    Some(TraceParent {
        trace_id: TraceId::from_bytes(span_context.trace_id().to_bytes())?,
        parent_id: SpanId::from_bytes(span_context.span_id().to_bytes())?,
        sampled: span_context.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct OnlyTraces {
        #[command(flatten)]
        traces: TracesArgs,
    }

    fn parse(args: &[&str]) -> Result<OnlyTraces, clap::Error> {
        OnlyTraces::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
    }

    #[test]
    fn no_endpoint_means_no_traces() {
        assert!(parse(&[]).unwrap().traces.config("booksvc").is_none());
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_taken_as_it_is() {
        let config = |args: &[&str]| parse(args).unwrap().traces.config("booksvc").unwrap();
        let base = config(&["--otel-exporter-otlp-endpoint", "http://collector:4318"]);
        assert_eq!(base.endpoint.as_str(), "http://collector:4318/v1/traces");
        let prefixed = config(&["--otel-exporter-otlp-endpoint", "http://gw/otlp/"]);
        assert_eq!(prefixed.endpoint.as_str(), "http://gw/otlp/v1/traces");
        let both = config(&[
            "--otel-exporter-otlp-endpoint",
            "http://collector:4318",
            "--otel-exporter-otlp-traces-endpoint",
            "http://traces:9999/in",
        ]);
        assert_eq!(both.endpoint.as_str(), "http://traces:9999/in");
        assert_eq!(both.service_name, "booksvc", "the service's own name");
    }

    #[test]
    fn the_sampler_is_the_standard_one_named() {
        let config = |args: &[&str]| {
            let mut args = args.to_vec();
            args.extend(["--otel-exporter-otlp-endpoint", "http://c:4318"]);
            parse(&args).unwrap().traces.config("svc").unwrap().sampler
        };
        let named = |args: &[&str]| format!("{:?}", config(args));
        assert_eq!(named(&[]), "ParentBased(AlwaysOn)");
        assert_eq!(
            named(&[
                "--otel-traces-sampler",
                "parentbased_traceidratio",
                "--otel-traces-sampler-arg",
                "0.25"
            ]),
            "ParentBased(TraceIdRatioBased(0.25))"
        );
        assert_eq!(named(&["--otel-traces-sampler", "always_off"]), "AlwaysOff");
        let err = parse(&["--otel-traces-sampler-arg", "2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
        let err = parse(&["--otel-traces-sampler", "sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_TRACES_SAMPLER"), "{err}");
    }

    #[test]
    fn a_ratio_sampler_records_that_share_of_the_requests_traces() {
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1)));
        let n = 4000;
        // The context of a request without a `traceparent`: a new trace id.
        let sampled = (0..n)
            .filter(|_| samples(&sampler, &TraceContext::new_root(None)))
            .count();
        assert!((250..550).contains(&sampled), "{sampled} of {n} at 0.1");
    }

    #[test]
    fn a_parent_based_sampler_follows_the_callers_flag() {
        let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        let request = |flags: &str| {
            let mut headers = axum::http::HeaderMap::new();
            let traceparent =
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            headers.insert("traceparent", traceparent.parse().unwrap());
            TraceContext::from_headers(&headers)
        };
        assert!(samples(&sampler, &request("01")));
        assert!(!samples(&sampler, &request("00")));
        assert!(samples(&sampler, &TraceContext::new_root(None)), "a root");
        let off = Sampler::TraceIdRatioBased(0.0);
        assert!(!samples(&off, &TraceContext::new_root(None)));
    }

    #[test]
    fn only_our_spans_are_exported_and_trace_only_spans_are_not_logged() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;

        struct Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level, kind| {
            tracing::Metadata::new(
                "span",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&SITE)),
                kind,
            )
        };
        use tracing::Level;
        assert!(is_exported(&meta(TRACE_ONLY, Level::INFO, Kind::SPAN)));
        assert!(is_exported(&meta(
            "shared::telemetry",
            Level::INFO,
            Kind::SPAN
        )));
        assert!(is_exported(&meta("booksvc", Level::INFO, Kind::SPAN)));
        assert!(!is_exported(&meta("booksvc_x", Level::INFO, Kind::SPAN)));
        assert!(!is_exported(&meta("hyper::proto", Level::INFO, Kind::SPAN)));
        assert!(!is_exported(&meta("booksvc", Level::DEBUG, Kind::SPAN)));
        assert!(!is_logged(&meta(TRACE_ONLY, Level::INFO, Kind::SPAN)));
        assert!(is_logged(&meta(TRACE_ONLY, Level::INFO, Kind::EVENT)));
        assert!(is_logged(&meta(
            "shared::telemetry",
            Level::INFO,
            Kind::SPAN
        )));
    }
}

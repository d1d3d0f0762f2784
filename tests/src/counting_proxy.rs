//! A counting proxy in front of a service: it forwards every request unchanged and notes
//! when each one arrived, on which path and for which request id.
//!
//! Why not the service's own `/metrics`: a request is counted there when its response is
//! ready, so one its caller gave up on (an attempt timeout cuts the connection) is never
//! counted, although the service received it and did the work. The proxy counts on arrival,
//! which is what "the load on the service" means. A caller that hangs up on the proxy drops
//! the forwarded request too, so the service sees exactly what it would see without it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::server::RunningServer;

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub path: String,
    /// Path and query exactly as received.
    pub target: String,
    /// The caller's `x-request-id`: retries of one request carry the same one.
    pub request_id: Option<String>,
}

#[derive(Clone)]
struct Forwarding {
    target: SocketAddr,
    http: reqwest::Client,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

/// A running proxy to `target`. Dropping it stops the proxy.
pub struct CountingProxy {
    pub address: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    _server: RunningServer,
}

impl CountingProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let forwarding = Forwarding {
            target,
            // No timeout of its own: the caller's timeouts are the ones under test.
            http: shared::client::http_client_builder().build().unwrap(),
            arrivals: Arc::clone(&arrivals),
        };
        let router = Router::new().fallback(forward).with_state(forwarding);
        let server = RunningServer::spawn(address, |shutdown| {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .into_future()
        });
        Self {
            address,
            arrivals,
            _server: server,
        }
    }

    /// Every request received so far, in order of arrival.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }
}

async fn forward(State(forwarding): State<Forwarding>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    forwarding.arrivals.lock().unwrap().push(Arrival {
        at: Instant::now(),
        path: parts.uri.path().to_owned(),
        target: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_owned(),
            |target| target.as_str().to_owned(),
        ),
        request_id: parts
            .headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    });
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    let sent = forwarding
        .http
        .request(
            parts.method,
            format!("http://{}{path_and_query}", forwarding.target),
        )
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    let Ok(body) = upstream.bytes().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    // The body is passed on whole, so the framing headers of the hop before no longer apply.
    for hop_by_hop in [header::TRANSFER_ENCODING, header::CONNECTION] {
        headers.remove(hop_by_hop);
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

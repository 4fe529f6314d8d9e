//! The HTTP endpoints of an operator process: `/healthz` (liveness),
//! `/readyz` (readiness) and `/metrics` (Prometheus), served over plain
//! HTTP by axum until a shutdown token fires.
//!
//! [`router`] returns an axum [`Router`] so that a program can add its own
//! routes (`bosun leader-elector` adds `/leader`) before [`serve`]ing it.

use std::future::IntoFuture;
use std::time::Duration;

use axum::Router;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::health::{Health, HealthReport};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// How long open requests may go on after shutdown before their
/// connections are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `/healthz`, `/readyz` and `/metrics` for `health` and `metrics`.
///
/// The probes answer 200 when every check passes and 503 otherwise, with one
/// line per check. `/metrics` answers in the OpenMetrics text format when
/// the scraper asks for it (`Accept: application/openmetrics-text`, as
/// Prometheus does), otherwise in the Prometheus text format 0.0.4.
pub fn router(health: &Health, metrics: &Metrics) -> Router {
    let liveness = health.clone();
    let readiness = health.clone();
    let metrics = metrics.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || async move { probe_response(&liveness.liveness()) }),
        )
        .route(
            "/readyz",
            get(move || async move { probe_response(&readiness.readiness()) }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| async move { metrics_response(&metrics, &headers) }),
        )
}

/// Serves `router` on `listener` until `shutdown` fires, then lets open
/// requests finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = server => result,
        () = drained => {
            warn!(timeout = ?DRAIN_TIMEOUT, "HTTP requests still open after shutdown; dropped them");
            Ok(())
        }
    }
}

fn probe_response(report: &HealthReport) -> Response {
    let status = if report.passed() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.to_string()).into_response()
}

fn metrics_response(metrics: &Metrics, headers: &HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let (encoded, content_type) = if wants_openmetrics(accept) {
        (metrics.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            metrics.encode_prometheus_text(),
            PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(text) => ([(CONTENT_TYPE, content_type)], text).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {error}\n"),
        )
            .into_response(),
    }
}

/// Whether an `Accept` header asks for OpenMetrics text.
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|media| media.trim().starts_with("application/openmetrics-text"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        // What Prometheus sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
        )));
    }
}

//! The admission server: handlers registered by type under
//! controller-runtime's paths, served over HTTPS with the
//! [`ServingCertificate`] of the moment, until a shutdown token fires.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kube::Resource;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::metrics::WebhookMetrics;
use super::path::{HandlerKind, path_for};
use super::review::{Handler, answer};
use super::tls::{ServingCertificate, TlsError};
use crate::metrics::Metrics;

/// The port controller-runtime's webhook server listens on, and so the one
/// Services and charts expect.
pub const DEFAULT_PORT: u16 = 9443;

/// The largest request body read: an `AdmissionReview` carries the object
/// and the old object, each up to etcd's 1.5 MiB request limit, and their
/// JSON wrapping.
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open requests may go on after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A handler with its type erased: body in, status and body out.
type ErasedHandler = Arc<dyn Fn(&[u8]) -> (u16, Vec<u8>) + Send + Sync>;

/// The handlers of an admission server, by path.
///
/// ```no_run
/// # async fn example(serving: bosun_runtime::webhook::ServingCertificate) -> Result<(), Box<dyn std::error::Error>> {
/// use bosun_runtime::metrics::Metrics;
/// use bosun_runtime::webhook::AdmissionServer;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::core::admission::{AdmissionRequest, AdmissionResponse};
///
/// fn validate(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
///     AdmissionResponse::from(request)
/// }
///
/// let server = AdmissionServer::new()
///     .validate::<ConfigMap>(validate) // at /validate--v1-configmap
///     .with_metrics(&Metrics::new());
/// let listener = tokio::net::TcpListener::bind(("0.0.0.0", 9443)).await?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// server.serve(listener, serving, shutdown).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct AdmissionServer {
    handlers: Vec<(String, ErasedHandler)>,
    metrics: Option<WebhookMetrics>,
}

impl fmt::Debug for AdmissionServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionServer")
            .field("paths", &self.paths())
            .finish_non_exhaustive()
    }
}

impl AdmissionServer {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a validating handler for `K` at `/validate-<group>-<version>-<kind>`.
    pub fn validate<K>(
        self,
        handler: impl Fn(&AdmissionRequest<K>) -> AdmissionResponse + Send + Sync + 'static,
    ) -> Self
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + 'static,
    {
        self.at(&path_for::<K>(HandlerKind::Validating), handler)
    }

    /// Adds a mutating handler for `K` at `/mutate-<group>-<version>-<kind>`;
    /// build its answer with [`super::mutated`].
    pub fn mutate<K>(
        self,
        handler: impl Fn(&AdmissionRequest<K>) -> AdmissionResponse + Send + Sync + 'static,
    ) -> Self
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + 'static,
    {
        self.at(&path_for::<K>(HandlerKind::Mutating), handler)
    }

    /// Adds a handler at a path of the caller's choosing (a dynamic type,
    /// or a second handler for one kind). A later handler at the same path
    /// replaces the earlier one.
    pub fn at<K>(
        mut self,
        path: &str,
        handler: impl Fn(&AdmissionRequest<K>) -> AdmissionResponse + Send + Sync + 'static,
    ) -> Self
    where
        K: Resource + DeserializeOwned + Clone + 'static,
    {
        let handler: Box<Handler<K>> = Box::new(handler);
        let erased: ErasedHandler = Arc::new(move |body: &[u8]| {
            let answer = answer(body, handler.as_ref());
            (answer.status, answer.body())
        });
        self.handlers.retain(|(p, _)| p != path);
        self.handlers.push((path.to_string(), erased));
        self
    }

    /// Records the `controller_runtime_webhook_*` series into `metrics`'
    /// registry. Call it once per registry.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(WebhookMetrics::register(metrics));
        self
    }

    /// The paths handlers are registered at.
    pub fn paths(&self) -> Vec<&str> {
        self.handlers.iter().map(|(p, _)| p.as_str()).collect()
    }

    /// The axum router of the handlers (plain HTTP), for callers that serve
    /// it themselves or test it.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for (path, handler) in &self.handlers {
            if let Some(metrics) = &self.metrics {
                metrics.declare(path);
            }
            let handler = handler.clone();
            let metrics = self.metrics.clone();
            let webhook = path.clone();
            router = router.route(
                path,
                post(move |body: Bytes| async move {
                    let _in_flight = metrics.as_ref().map(|m| m.start(&webhook));
                    let started = Instant::now();
                    let (status, body) = handler(&body);
                    if let Some(metrics) = &metrics {
                        metrics.record(&webhook, status, started.elapsed());
                    }
                    respond(status, body)
                }),
            );
        }
        router.layer(DefaultBodyLimit::max(BODY_LIMIT))
    }

    /// Serves the handlers over HTTPS on `listener`, presenting whatever
    /// `certificate` holds at each handshake, until `shutdown` fires; then
    /// lets open requests finish for a few seconds.
    pub async fn serve(
        &self,
        listener: TcpListener,
        certificate: ServingCertificate,
        shutdown: CancellationToken,
    ) -> Result<(), TlsError> {
        let acceptor = TlsAcceptor::from(certificate.server_config()?);
        let router = self.router();
        let graceful = GracefulShutdown::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a
                        // little rather than spin.
                        warn!(%error, "accepting a webhook connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(error) = watcher.watch(connection).await {
                    debug!(%peer, %error, "webhook connection ended with an error");
                }
            });
        }
        drop(listener);
        if timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            warn!(timeout = ?DRAIN_TIMEOUT, "webhook requests still open after shutdown; dropped them");
        }
        Ok(())
    }
}

fn respond(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

//! The admission server's series, under controller-runtime's names so that
//! dashboards and alerts written for Go operators read them unchanged:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `controller_runtime_webhook_requests_total` | counter | `webhook` (the path), `code` (HTTP status) |
//! | `controller_runtime_webhook_latency_seconds` | histogram | `webhook` |
//! | `controller_runtime_webhook_requests_in_flight` | gauge | `webhook` |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    webhook: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

type LatencyFamily = Family<WebhookLabels, Histogram, fn() -> Histogram>;

/// Prometheus' default buckets, which controller-runtime's histogram uses:
/// 5 ms to 10 s, beyond any webhook timeout the API server allows.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The webhook series in a process's registry. Register them once per
/// registry ([`WebhookMetrics::register`]); clones share the series.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    in_flight: Family<WebhookLabels, Gauge>,
}

impl WebhookMetrics {
    /// Adds the webhook series to `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = WebhookMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        };
        metrics.register(
            "controller_runtime_webhook_requests",
            "Admission requests answered, by webhook path and HTTP status code",
            this.requests.clone(),
        );
        metrics.register_with_unit(
            "controller_runtime_webhook_latency",
            "How long admission requests took to answer, by webhook path",
            Unit::Seconds,
            this.latency.clone(),
        );
        metrics.register(
            "controller_runtime_webhook_requests_in_flight",
            "Admission requests being answered now, by webhook path",
            this.in_flight.clone(),
        );
        this
    }

    /// Makes the series of `webhook` exist (at zero) before its first call.
    pub(crate) fn declare(&self, webhook: &str) {
        let labels = WebhookLabels {
            webhook: webhook.to_string(),
        };
        let _ = self.in_flight.get_or_create_owned(&labels);
        let _ = self.latency.get_or_create_owned(&labels);
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn start(&self, webhook: &str) -> InFlight {
        let gauge = self.in_flight.get_or_create_owned(&WebhookLabels {
            webhook: webhook.to_string(),
        });
        gauge.inc();
        InFlight(gauge)
    }

    /// Records one answered request.
    pub(crate) fn record(&self, webhook: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                webhook: webhook.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// A request counted in `controller_runtime_webhook_requests_in_flight`;
/// dropping it (also when the request is cancelled) counts it out.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_controller_runtimes_names() {
        let metrics = Metrics::new();
        let webhook = WebhookMetrics::register(&metrics);
        webhook.declare("/validate-x-v1-y");
        {
            let _busy = webhook.start("/validate-x-v1-y");
            let text = metrics.encode_prometheus_text().unwrap_or_default();
            assert!(
                text.contains(
                    r#"controller_runtime_webhook_requests_in_flight{webhook="/validate-x-v1-y"} 1"#
                ),
                "{text}"
            );
        }
        webhook.record("/validate-x-v1-y", 200, Duration::from_millis(3));
        let text = metrics.encode_prometheus_text().unwrap_or_default();
        for line in [
            "# TYPE controller_runtime_webhook_requests_total counter",
            "# TYPE controller_runtime_webhook_latency_seconds histogram",
            "# TYPE controller_runtime_webhook_requests_in_flight gauge",
            r#"controller_runtime_webhook_requests_total{webhook="/validate-x-v1-y",code="200"} 1"#,
            r#"controller_runtime_webhook_latency_seconds_bucket{webhook="/validate-x-v1-y",le="0.005"} 1"#,
            r#"controller_runtime_webhook_requests_in_flight{webhook="/validate-x-v1-y"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}

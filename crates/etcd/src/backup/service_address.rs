//! Reaching in-cluster Services from an operator that runs on a host.
//!
//! Users write in-cluster endpoints such as `http://s3.bosun-system.svc:8333`
//! into their specs; that is right for the operator in a pod and for member
//! pods. A `bosun operator` on a host cannot resolve cluster DNS names but
//! can reach a Service's ClusterIP, so there (and only there) the host of a
//! `<service>.<namespace>.svc[.cluster.local]` URL is replaced by the
//! Service's ClusterIP. The URL is parsed, never cut as text, so userinfo,
//! ports, paths and IPv6 addresses come through whole.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use url::{Host, Url};

/// Whether this process runs in a pod.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The Service (name, namespace) a URL's host names, if it is a cluster
/// Service name.
fn service_of(url: &Url) -> Option<(String, String)> {
    let Some(Host::Domain(host)) = url.host() else {
        return None;
    };
    // A fully qualified name may end in a dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    let name_ns = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))?;
    let (name, namespace) = name_ns.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some((name.to_string(), namespace.to_string()))
}

/// `url` (parsed from `written`) with its host replaced by `ip`, all else
/// kept. A URL written without a path stays without one: the parser's
/// serialisation would add a `/`.
fn with_host(url: &Url, written: &str, ip: IpAddr) -> Option<String> {
    let mut url = url.clone();
    url.set_ip_host(ip).ok()?;
    let mut text = String::from(url);
    let path_added = !written.trim_end().ends_with('/');
    if text.ends_with('/') && path_added {
        text.pop();
    }
    Some(text)
}

/// `url`, with a cluster Service host replaced by its ClusterIP when this
/// process runs outside the cluster; otherwise `url` unchanged.
pub async fn reachable_url(client: &Client, url: &str) -> String {
    if in_cluster() {
        return url.to_string();
    }
    let Ok(parsed) = Url::parse(url) else {
        return url.to_string();
    };
    let Some((name, namespace)) = service_of(&parsed) else {
        return url.to_string();
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    match services.get(&name).await {
        // A headless Service's ClusterIP is "None": no address to use.
        Ok(service) => service
            .spec
            .and_then(|s| s.cluster_ip)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .and_then(|ip| with_host(&parsed, url, ip))
            .unwrap_or_else(|| url.to_string()),
        Err(e) => {
            tracing::debug!("looking up Service {namespace}/{name} for {url}: {e}");
            url.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(url: &str) -> Option<(String, String)> {
        service_of(&Url::parse(url).ok()?)
    }

    fn replaced(url: &str, ip: &str) -> String {
        let parsed = Url::parse(url).expect("a URL");
        with_host(&parsed, url, ip.parse().expect("an IP")).expect("replaced")
    }

    fn named(name: &str, namespace: &str) -> Option<(String, String)> {
        Some((name.to_string(), namespace.to_string()))
    }

    #[test]
    fn service_hosts_are_recognised_with_and_without_the_domain() {
        assert_eq!(
            service("http://s3.bosun-system.svc:8333"),
            named("s3", "bosun-system")
        );
        assert_eq!(
            service("https://minio.storage.svc.cluster.local/path"),
            named("minio", "storage")
        );
        assert_eq!(
            service("https://minio.storage.svc.cluster.local./path"),
            named("minio", "storage")
        );
        // Hosts are case-insensitive; the parser lowercases them.
        assert_eq!(service("http://S3.Storage.SVC"), named("s3", "storage"));
        assert_eq!(
            service("http://user:secret@s3.storage.svc:8333/bucket?x=1#f"),
            named("s3", "storage")
        );
    }

    #[test]
    fn other_hosts_are_left_alone() {
        for url in [
            "https://objects.example.com",
            "https://s3.storage.svc.example.com",
            "http://10.96.0.20:8333",
            "http://[fd00::20]:8333",
            "http://a.b.c.svc:80",
            "http://.storage.svc",
            "http://s3..svc",
            "http://svc",
            "file:///var/backups",
            "not a url",
            "",
        ] {
            assert_eq!(service(url), None, "{url}");
        }
    }

    #[test]
    fn only_the_host_is_replaced() {
        let cases = [
            // (written, ClusterIP, reachable)
            (
                "http://s3.bosun-system.svc:8333",
                "10.96.0.20",
                "http://10.96.0.20:8333",
            ),
            (
                "http://s3.bosun-system.svc:8333/",
                "10.96.0.20",
                "http://10.96.0.20:8333/",
            ),
            ("https://s3.storage.svc", "10.96.0.20", "https://10.96.0.20"),
            (
                "https://minio.storage.svc.cluster.local:9000/bucket/prefix?region=x",
                "10.0.0.5",
                "https://10.0.0.5:9000/bucket/prefix?region=x",
            ),
            (
                "http://user:secret@s3.storage.svc:8333/bucket",
                "10.96.0.20",
                "http://user:secret@10.96.0.20:8333/bucket",
            ),
            (
                "http://s3.storage.svc:8333",
                "fd00:10:96::20",
                "http://[fd00:10:96::20]:8333",
            ),
            (
                "http://s3.storage.svc/a/b/",
                "fd00::1",
                "http://[fd00::1]/a/b/",
            ),
        ];
        for (written, ip, reachable) in cases {
            assert_eq!(replaced(written, ip), reachable, "{written}");
        }
    }
}

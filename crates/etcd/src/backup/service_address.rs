//! Reaching in-cluster Services from an operator that runs on a host.
//!
//! Users write in-cluster endpoints such as `http://s3.bosun-system.svc:8333`
//! into their specs; that is right for the operator in a pod and for member
//! pods. A `bosun operator` on a host cannot resolve cluster DNS names but
//! can reach a Service's ClusterIP, so there (and only there) the host of a
//! `<service>.<namespace>.svc[.cluster.local]` URL is replaced by the
//! Service's ClusterIP.

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

/// Whether this process runs in a pod.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The Service a URL's host names, if it is a cluster Service name.
fn service_of(url: &str) -> Option<(String, String, std::ops::Range<usize>)> {
    let host_start = url.find("://")? + 3;
    let rest = &url[host_start..];
    let host_len = rest.find([':', '/']).unwrap_or(rest.len());
    let host = &rest[..host_len];
    let name_ns = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))?;
    let (name, namespace) = name_ns.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some((
        name.to_string(),
        namespace.to_string(),
        host_start..host_start + host_len,
    ))
}

/// `url`, with a cluster Service host replaced by its ClusterIP when this
/// process runs outside the cluster; otherwise `url` unchanged.
pub async fn reachable_url(client: &Client, url: &str) -> String {
    if in_cluster() {
        return url.to_string();
    }
    let Some((name, namespace, host)) = service_of(url) else {
        return url.to_string();
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    match services.get(&name).await {
        Ok(service) => match service.spec.and_then(|s| s.cluster_ip) {
            Some(ip) if ip != "None" => {
                let mut reachable = url.to_string();
                reachable.replace_range(host, &ip);
                reachable
            }
            _ => url.to_string(),
        },
        Err(e) => {
            tracing::debug!("looking up Service {namespace}/{name} for {url}: {e}");
            url.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_hosts_are_recognised_with_and_without_the_domain() {
        let (name, ns, range) = service_of("http://s3.bosun-system.svc:8333").expect("service");
        assert_eq!((name.as_str(), ns.as_str()), ("s3", "bosun-system"));
        assert_eq!(
            &"http://s3.bosun-system.svc:8333"[range],
            "s3.bosun-system.svc"
        );
        let (name, ns, _) =
            service_of("https://minio.storage.svc.cluster.local/path").expect("service");
        assert_eq!((name.as_str(), ns.as_str()), ("minio", "storage"));
    }

    #[test]
    fn other_hosts_are_left_alone() {
        for url in [
            "https://objects.example.com",
            "http://10.96.0.20:8333",
            "http://a.b.c.svc:80",
            "not a url",
        ] {
            assert!(service_of(url).is_none(), "{url}");
        }
    }
}

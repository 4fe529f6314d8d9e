//! The dev cluster is a usable Kubernetes of the pinned release: its node is
//! Ready, its API server says it is ready, and kubectl and the server both
//! report the Kubernetes version the tools were built from.

use std::time::Duration;

use bosun_devcluster::components::NODE_NAME;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::{dns_lookup, node_ready, wait_until};

#[tokio::test]
async fn node_is_ready_and_client_and_server_run_the_pinned_release() {
    let cluster = TestCluster::connect().await;

    wait_until(
        &format!("node {NODE_NAME} to be Ready"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || node_ready(&cluster.client, NODE_NAME),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let readyz = cluster.kubectl_ok(&["get", "--raw", "/readyz"]);
    assert_eq!(readyz.trim(), "ok", "/readyz answered {readyz:?}");

    let pinned = cluster
        .tools
        .version("KUBERNETES_VERSION")
        .expect("versions.env names KUBERNETES_VERSION");
    let version: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["version", "--output=json"]))
            .expect("kubectl version prints JSON");
    for side in ["clientVersion", "serverVersion"] {
        assert_eq!(
            version[side]["gitVersion"].as_str(),
            Some(pinned),
            "{side} of `kubectl version`: {}",
            version[side]
        );
    }
}

/// The readiness probe's DNS query, against the cluster's DNS Service: the
/// API server's Service name resolves to its ClusterIP, as the API server
/// reports it, and a name that does not exist is an error, not an empty
/// answer.
#[tokio::test]
async fn cluster_dns_answers_the_probe_with_the_api_servers_cluster_ip() {
    let cluster = TestCluster::connect().await;
    let cluster_ip = |ns: &str, name: &str| {
        cluster
            .kubectl_ok(&[
                "-n",
                ns,
                "get",
                "service",
                name,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .trim()
            .parse::<std::net::Ipv4Addr>()
            .unwrap_or_else(|e| panic!("the ClusterIP of {ns}/{name}: {e}"))
    };
    let dns = cluster_ip("kube-system", "kube-dns");
    let api = cluster_ip("default", "kubernetes");

    let answer = dns_lookup(
        dns,
        "kubernetes.default.svc.cluster.local",
        Duration::from_secs(2),
    )
    .await
    .expect("cluster DNS answers");
    assert_eq!(answer, [api]);

    let missing = dns_lookup(
        dns,
        "no-such-service.default.svc.cluster.local",
        Duration::from_secs(2),
    )
    .await
    .expect_err("a name that does not exist");
    assert!(missing.contains("DNS error"), "{missing}");
}

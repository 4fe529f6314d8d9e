//! etcd runs on the dev cluster the way the operator will run it: one member
//! in a pod, Ready through its `/health` endpoint and reachable from the host
//! by pod IP and by ClusterIP Service; and three members that find each
//! other only by the DNS names a headless Service gives them.

mod common;

use std::time::{Duration, Instant};

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{
    CLIENT_PORT, Etcdctl, PEER_PORT, POLL, client_endpoint, create_pod, describe, member_fqdn,
    peer_member_pod, pod_ip, restart_count, single_member_pod, wait_ready,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

async fn create_service(services: &Api<Service>, spec: serde_json::Value) -> Service {
    let service: Service = serde_json::from_value(spec).expect("service object");
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|e| panic!("creating service: {e}"))
}

#[tokio::test]
async fn etcd_pod_becomes_ready_by_health_probe_and_serves_keys_by_pod_ip_and_cluster_ip() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd_pod_serves_keys").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let etcdctl = Etcdctl::new(&cluster);

    create_pod(&pods, &single_member_pod("etcd-0", "etcd", None)).await;
    let service = create_service(
        &services,
        json!({
            "metadata": {"name": "etcd-client"},
            "spec": {
                "selector": {"app": "etcd"},
                "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT}]
            }
        }),
    )
    .await;
    let pod = wait_ready(&pods, "etcd-0").await;

    // Ready came from the probe on /health: the container declares it, and
    // the endpoint answers as the probe saw it.
    let probe = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].readiness_probe.as_ref())
        .and_then(|p| p.http_get.as_ref())
        .expect("etcd has an httpGet readiness probe");
    assert_eq!(probe.path.as_deref(), Some("/health"));
    let ip = pod_ip(&pod).expect("a Ready pod has an IP");
    let by_pod_ip = vec![client_endpoint(&ip)];
    let health = etcdctl
        .run(&by_pod_ip, &["endpoint", "health", "--write-out=json"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let health: serde_json::Value = serde_json::from_str(&health).expect("health JSON");
    assert_eq!(health[0]["health"], true, "endpoint health: {health}");

    etcdctl
        .put(&by_pod_ip, "/by-pod-ip", "written through the pod IP")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        etcdctl.get(&by_pod_ip, "/by-pod-ip").await,
        Ok(Some("written through the pod IP".to_string()))
    );

    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the Service has a ClusterIP");
    let by_cluster_ip = vec![client_endpoint(&cluster_ip)];
    // kube-proxy programs the Service once the EndpointSlice lists the Ready pod.
    let start = Instant::now();
    wait_until(
        &format!("a put through ClusterIP {cluster_ip}"),
        Duration::from_secs(60),
        POLL,
        || async {
            etcdctl
                .put(
                    &by_cluster_ip,
                    "/by-cluster-ip",
                    "written through the Service",
                )
                .await
                .map(|()| true)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("ClusterIP answered after {:?}", start.elapsed());
    assert_eq!(
        etcdctl.get(&by_cluster_ip, "/by-pod-ip").await,
        Ok(Some("written through the pod IP".to_string()))
    );
    assert_eq!(
        etcdctl.get(&by_pod_ip, "/by-cluster-ip").await,
        Ok(Some("written through the Service".to_string()))
    );
}

#[tokio::test]
async fn three_etcd_pods_form_one_cluster_by_headless_service_dns_names() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("three_etcd_pods_one_cluster").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let etcdctl = Etcdctl::new(&cluster);
    let service = "etcd";
    let members = ["etcd-0", "etcd-1", "etcd-2"];

    // Peers must resolve each other before any is Ready: a member is Ready
    // only once a quorum has elected a leader.
    create_service(
        &services,
        json!({
            "metadata": {"name": service},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {"app": service},
                "ports": [
                    {"name": "client", "port": CLIENT_PORT},
                    {"name": "peer", "port": PEER_PORT}
                ]
            }
        }),
    )
    .await;
    let start = Instant::now();
    for member in members {
        create_pod(&pods, &peer_member_pod(member, service, &ns.name, &members)).await;
    }
    let mut endpoints = vec![];
    for member in members {
        let pod = wait_ready(&pods, member).await;
        // The init container held etcd back until its name resolved, so
        // etcd started once instead of crash-looping.
        assert_eq!(
            restart_count(&pod, "etcd"),
            0,
            "{member}: {}",
            describe(&pod)
        );
        endpoints.push(client_endpoint(
            &pod_ip(&pod).expect("a Ready pod has an IP"),
        ));
    }
    eprintln!("three members Ready after {:?}", start.elapsed());

    let list = etcdctl
        .run(&endpoints[..1], &["member", "list", "--write-out=json"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let list: serde_json::Value = serde_json::from_str(&list).expect("member list JSON");
    let listed = list["members"].as_array().expect("members");
    assert_eq!(listed.len(), 3, "member list: {list}");
    for member in members {
        let fqdn = member_fqdn(member, service, &ns.name);
        let entry = listed
            .iter()
            .find(|m| m["name"] == member)
            .unwrap_or_else(|| panic!("{member} is not a started member: {list}"));
        assert_eq!(
            entry["peerURLs"],
            json!([format!("http://{fqdn}:{PEER_PORT}")]),
            "{member} is known by its DNS name"
        );
        assert_eq!(
            entry["clientURLs"],
            json!([format!("http://{fqdn}:{CLIENT_PORT}")]),
            "{member} has started and published its client URL"
        );
    }

    let health = etcdctl
        .run(&endpoints, &["endpoint", "health", "--write-out=json"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let health: serde_json::Value = serde_json::from_str(&health).expect("health JSON");
    let healthy = health
        .as_array()
        .expect("one entry per endpoint")
        .iter()
        .filter(|h| h["health"] == true)
        .count();
    assert_eq!(healthy, 3, "endpoint health: {health}");

    // One cluster, not three one-member ones: every member reports the same
    // cluster ID and the same leader.
    let status = etcdctl
        .run(&endpoints, &["endpoint", "status", "--write-out=json"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let statuses = status.as_array().expect("one entry per endpoint");
    assert_eq!(statuses.len(), 3, "endpoint status: {status}");
    for s in statuses {
        assert_eq!(
            s["Status"]["header"]["cluster_id"], list["header"]["cluster_id"],
            "endpoint status: {status}"
        );
        assert_eq!(
            s["Status"]["leader"], statuses[0]["Status"]["leader"],
            "endpoint status: {status}"
        );
    }

    // Inside the cluster the members are reachable by their DNS names too.
    let by_name = members
        .iter()
        .map(|m| format!("http://{}:{CLIENT_PORT}", member_fqdn(m, service, &ns.name)))
        .collect::<Vec<_>>()
        .join(",");
    let inside = cluster.kubectl_ok(&[
        "--namespace",
        &ns.name,
        "exec",
        "etcd-0",
        "--container=etcd",
        "--",
        "/usr/local/bin/etcdctl",
        &format!("--endpoints={by_name}"),
        "endpoint",
        "health",
    ]);
    assert_eq!(
        inside.matches("is healthy").count(),
        3,
        "endpoint health by DNS name from inside: {inside}"
    );
}

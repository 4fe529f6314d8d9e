//! Three webhook replicas against the dev cluster's real API server, with
//! self-managed certificates, through a CA rotation forced by a shortened
//! schedule; the Lease holder is deleted in the middle of the rotation, as
//! `kubectl delete pod` would (graceful: it leaves the Service first, then
//! stops, then gives the Lease back), and a replacement replica starts, as
//! its Deployment would start one. Meanwhile a client applies objects
//! continuously and counts failures: zero, from before the rotation until
//! after it completed under the next Lease holder. Every `caBundle` holds
//! old and new CA together during the overlap, and no surviving replica
//! goes unready. Independently of the API server, every ready replica is
//! checked at each step with a TLS handshake that trusts only the published
//! `caBundle`s.
//!
//! The API server reaches the replicas through a round-robin TCP balancer
//! in the test, which stands in for the Service: it sends each new
//! connection to the next replica that is in service and ready, as
//! kube-proxy does with a Service's ready endpoints. The replicas run in
//! the test process, so it is a stand-in, not a mock: the API server, the
//! Lease, the Secret and the configurations are the cluster's.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::leader_election::{ElectionConfig, LeaderState};
use bosun_runtime::manager::Manager;
use bosun_runtime::metrics::Metrics;
use bosun_runtime::webhook::certificate::pem_certificates;
use bosun_runtime::webhook::{
    AdmissionServer, ConfigurationNames, WebhookCertificates, WebhookReadiness,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::admission::{
    ConfigurationsGuard, RotationWatch, ca_subjects, default_label, install_configurations, probe,
    short_rotation, validate, wait_for,
};
use support::parse_prometheus_text;

/// Probes in flight at once.
const PARALLEL_PROBES: u64 = 3;

const SECRET: &str = "webhook-certificates";
const LEASE: &str = "webhook-certificates";

/// A replica as the balancer sees it.
#[derive(Clone)]
struct Backend {
    identity: String,
    addr: SocketAddr,
    readiness: WebhookReadiness,
}

/// The Service's stand-in: each new connection goes to the next backend
/// that is ready.
#[derive(Clone, Default)]
struct Balancer {
    backends: Arc<Mutex<Vec<Backend>>>,
    next: Arc<AtomicUsize>,
}

impl Balancer {
    fn add(&self, backend: Backend) {
        self.backends.lock().expect("lock").push(backend);
    }

    /// Takes a backend out of service: no new connection reaches it.
    fn remove(&self, identity: &str) {
        self.backends
            .lock()
            .expect("lock")
            .retain(|b| b.identity != identity);
    }

    fn pick(&self) -> Option<SocketAddr> {
        let backends = self.backends.lock().expect("lock");
        let ready: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.readiness.check().is_ok())
            .collect();
        if ready.is_empty() {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % ready.len();
        Some(ready[at].addr)
    }

    async fn run(self, listener: TcpListener) {
        while let Ok((mut inbound, _)) = listener.accept().await {
            // No ready backend: the connection is refused, and the call
            // counts as failed.
            let Some(addr) = self.pick() else { continue };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }
}

/// One operator replica: an admission server, its certificates, and a
/// manager that runs the certificate writer while it holds the Lease.
struct Replica {
    identity: String,
    backend: Backend,
    state: watch::Receiver<LeaderState>,
    certificates: WebhookCertificates,
    metrics: Metrics,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    async fn start(
        cluster: &TestCluster,
        namespace: &str,
        names: &ConfigurationNames,
        identity: &str,
    ) -> Replica {
        // Each replica has a client of its own, as a pod has.
        let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("admin kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("client config");
        let client = Client::try_from(config).expect("client");

        let certificates = WebhookCertificates::self_managed(
            client.clone(),
            namespace,
            SECRET,
            "unused",
            names.clone(),
        )
        .with_names(vec!["127.0.0.1".into()])
        .with_policy(short_rotation());
        let mut election = ElectionConfig::new(namespace, LEASE, identity);
        election.lease_duration = Duration::from_secs(6);
        election.renew_deadline = Duration::from_secs(4);
        election.retry_period = Duration::from_secs(1);
        let mut manager = Manager::new()
            .with_leader_election(client, election)
            .expect("a valid election");
        let writer = certificates
            .leader_writer()
            .expect("self-managed certificates have a writer");
        manager.add_controller("webhook-certificates", move |stop| writer.run(stop));
        let state = manager.leader_state().expect("election is configured");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let metrics = Metrics::new();
        let server = AdmissionServer::new()
            .validate::<ConfigMap>(validate)
            .mutate::<ConfigMap>(default_label)
            .with_metrics(&metrics);
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn({
                let serving = certificates.serving();
                let shutdown = shutdown.clone();
                async move {
                    server
                        .serve(listener, serving, shutdown)
                        .await
                        .expect("the server ran");
                }
            }),
            tokio::spawn(certificates.clone().run_replica(shutdown.clone())),
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    manager
                        .run(shutdown)
                        .await
                        .expect("the manager stops gracefully");
                }
            }),
        ];
        Replica {
            identity: identity.to_string(),
            backend: Backend {
                identity: identity.to_string(),
                addr,
                readiness: certificates.readiness().clone(),
            },
            state,
            certificates,
            metrics,
            shutdown,
            tasks,
        }
    }

    /// How many admission calls this replica answered.
    fn answered(&self) -> f64 {
        let text = self
            .metrics
            .encode_prometheus_text()
            .expect("metrics encode");
        parse_prometheus_text(&text)
            .expect("Prometheus text")
            .iter()
            .filter(|s| s.name == "controller_runtime_webhook_requests_total")
            .map(|s| s.value)
            .sum()
    }

    fn leads(&self) -> bool {
        self.state.borrow().is_leader
    }

    /// Stops the replica gracefully (server drained, writer stopped, Lease
    /// given back) and waits for it.
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .unwrap_or_else(|_| panic!("{} stops within 15 s", self.identity))
                .unwrap_or_else(|e| panic!("{} does not panic: {e}", self.identity));
        }
    }
}

/// The `caBundle` of every webhook of both configurations named `name`.
async fn published_pems(client: &Client, name: &str) -> Vec<Vec<u8>> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .expect("the validating configuration");
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .expect("the mutating configuration");
    let from_validating = validating
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle);
    let from_mutating = mutating
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle);
    from_validating
        .chain(from_mutating)
        .map(|bundle| bundle.map(|b| b.0).unwrap_or_default())
        .collect()
}

/// A TLS handshake with the server at `addr`, for the name `127.0.0.1`,
/// trusting only the CAs of `bundle_pem`: as the API server connects.
async fn trusted_by(bundle_pem: &[u8], addr: SocketAddr) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certificates(bundle_pem).map_err(|e| format!("the caBundle: {e}"))? {
        roots
            .add(cert)
            .map_err(|e| format!("a CA of the caBundle: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(drop)
        .map_err(|e| format!("handshake: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_their_leader_mid_rotation_without_a_failed_call() {
    let cluster = TestCluster::connect().await;
    let operator_ns = cluster.namespace("webhook_replicas_operator").await;
    let tenant_ns = cluster.namespace("webhook_replicas_tenant").await;
    let client = cluster.client.clone();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let service = listener.local_addr().expect("address");
    let balancer = Balancer::default();
    let balancing = tokio::spawn(balancer.clone().run(listener));

    let name = format!("bosun-e2e-{}", tenant_ns.name);
    let _guard = ConfigurationsGuard {
        cluster: &cluster,
        name: name.clone(),
    };
    install_configurations(
        &client,
        &name,
        &operator_ns.name,
        &tenant_ns.name,
        service,
        None,
    )
    .await;
    let names = ConfigurationNames {
        validating: vec![name.clone()],
        mutating: vec![name.clone()],
    };

    let mut replicas = Vec::new();
    for n in 0..3 {
        let replica =
            Replica::start(&cluster, &operator_ns.name, &names, &format!("replica-{n}")).await;
        balancer.add(replica.backend.clone());
        replicas.push(replica);
    }
    wait_for("every replica is ready", Duration::from_secs(60), || {
        let checks: Result<Vec<()>, String> = replicas
            .iter()
            .map(|r| r.backend.readiness.check())
            .collect();
        async move { checks.map(|_| ()) }
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant_ns.name);
    wait_for(
        "the API server calls the webhooks",
        Duration::from_secs(30),
        || probe(&config_maps, 0),
    )
    .await;

    // The client: creates through the webhooks, without pause, until told
    // to stop; returns how many calls it made and which failed.
    let probing = CancellationToken::new();
    let prober = tokio::spawn({
        let (config_maps, stop) = (config_maps.clone(), probing.clone());
        async move {
            let (mut calls, mut failures) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                // Concurrent probes, so that the API server keeps several
                // connections open, which the balancer spreads over the
                // replicas.
                let burst = futures::future::join_all(
                    (1..=PARALLEL_PROBES).map(|n| probe(&config_maps, calls + n)),
                )
                .await;
                for (n, result) in (1..).zip(burst) {
                    if let Err(failure) = result {
                        failures.push(format!("call {}: {failure}", calls + n));
                    }
                }
                calls += PARALLEL_PROBES;
            }
            (calls, failures)
        }
    });

    let mut rotation = RotationWatch::new(&ca_subjects(&client, &names).await);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut not_ready = Vec::new();
    let mut untrusted = Vec::new();
    let mut deleted: Option<String> = None;
    // Calls answered, by replica: the balancer spreads them over all.
    let mut answered = Vec::new();
    let mut completed_at: Option<Instant> = None;
    // Observe until five seconds after the rotation completed.
    while completed_at.is_none_or(|at| at.elapsed() < Duration::from_secs(5)) {
        assert!(
            Instant::now() < deadline,
            "no completed CA rotation within 180 s (overlap seen: {}, leader deleted: {deleted:?})",
            rotation.saw_overlap
        );
        // Independently of the API server: every ready replica serves a
        // certificate that every published caBundle trusts.
        let pems = published_pems(&client, &name).await;
        for replica in replicas
            .iter()
            .filter(|r| r.backend.readiness.check().is_ok())
        {
            for pem in &pems {
                if let Err(why) = trusted_by(pem, replica.backend.addr).await {
                    untrusted.push(format!("{}: {why}", replica.identity));
                }
            }
        }
        // The replicas that were never deleted stay ready throughout; the
        // replacement joins the balancer when it is ready.
        for replica in replicas.iter().filter(|r| r.identity != "replica-3") {
            if let Err(why) = replica.backend.readiness.check() {
                not_ready.push(format!("{}: {why}", replica.identity));
            }
        }
        let bundles = ca_subjects(&client, &names).await;
        let served: Vec<_> = replicas
            .iter()
            .map(|r| r.certificates.serving().issuer())
            .collect();
        if completed_at.is_none() && rotation.completed(&bundles, &served) {
            completed_at = Some(Instant::now());
        }
        // Mid-rotation, both CAs published: delete the Lease holder while
        // the client goes on.
        if rotation.saw_overlap && deleted.is_none() {
            let at = replicas
                .iter()
                .position(Replica::leads)
                .expect("a replica leads during the rotation");
            let leader = replicas.remove(at);
            answered.push((leader.identity.clone(), leader.answered()));
            println!("deleting the leader {} in the overlap", leader.identity);
            balancer.remove(&leader.identity);
            deleted = Some(leader.identity.clone());
            leader.stop().await;
            let replacement =
                Replica::start(&cluster, &operator_ns.name, &names, "replica-3").await;
            balancer.add(replacement.backend.clone());
            replicas.push(replacement);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probing.cancel();
    let (calls, failures) = tokio::time::timeout(Duration::from_secs(30), prober)
        .await
        .expect("the client stops")
        .expect("the client does not panic");

    let deleted = deleted.expect("the leader was deleted during the rotation");
    assert!(calls >= 300, "only {calls} calls were made");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert!(
        untrusted.is_empty(),
        "a ready replica served a certificate a caBundle does not trust: {untrusted:?}"
    );
    assert!(
        not_ready.is_empty(),
        "a surviving replica went unready: {not_ready:?}"
    );
    let leaders: Vec<&str> = replicas
        .iter()
        .filter(|r| r.leads())
        .map(|r| r.identity.as_str())
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "one leader after the rotation: {leaders:?}"
    );
    assert_ne!(leaders[0], deleted, "the deleted replica leads no more");
    println!(
        "{calls} calls, none failed; {deleted} deleted mid-rotation, {} completed it",
        leaders[0]
    );

    answered.extend(replicas.iter().map(|r| (r.identity.clone(), r.answered())));
    // The replacement may find the API server's connections all taken.
    assert!(
        answered
            .iter()
            .filter(|(identity, _)| identity != "replica-3")
            .all(|(_, calls)| *calls > 0.0),
        "every first replica answered calls: {answered:?}"
    );
    println!("calls answered by replica: {answered:?}");
    for replica in replicas {
        replica.stop().await;
    }
    balancing.abort();
}

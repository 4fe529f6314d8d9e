//! Helpers shared by the install and RBAC end-to-end tests.

use bosun_devcluster::fixture::TestCluster;

/// The dev cluster keeps its object store in the operator's namespace, so
/// it is there on a cluster that ran the backup tests; on a fresh one it is
/// created, as `bosun install` would, and left for the object store.
pub fn ensure_operator_namespace(cluster: &TestCluster) {
    if cluster
        .kubectl(&["get", "namespace", "bosun-system"])
        .status
        .success()
    {
        return;
    }
    let out = cluster.kubectl(&["create", "namespace", "bosun-system"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("AlreadyExists"),
        "creating bosun-system: {stderr}"
    );
}

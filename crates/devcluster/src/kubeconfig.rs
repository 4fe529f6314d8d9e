//! Kubeconfig files for the components and the admin: client certificates,
//! the cluster CA, and the API server's address.

use std::path::Path;

use crate::pki::CertFiles;

/// Renders a kubeconfig that authenticates with a client certificate.
/// Paths are absolute, so the file works from any working directory.
pub fn render(server: &str, ca_cert: &Path, client: &CertFiles, user: &str) -> String {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bosun-dev", "cluster": {
            "server": server,
            "certificate-authority": ca_cert,
        }}],
        "users": [{"name": user, "user": {
            "client-certificate": client.cert,
            "client-key": client.key,
        }}],
        "contexts": [{"name": "bosun-dev", "context": {"cluster": "bosun-dev", "user": user}}],
        "current-context": "bosun-dev",
        "preferences": {},
    });
    serde_yaml_ng::to_string(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn names_server_ca_and_client_certificate() {
        let text = render(
            "https://10.88.0.1:6443",
            Path::new("/state/pki/ca.crt"),
            &CertFiles {
                cert: PathBuf::from("/state/pki/admin.crt"),
                key: PathBuf::from("/state/pki/admin.key"),
            },
            "admin",
        );
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://10.88.0.1:6443"
        );
        assert_eq!(
            parsed["users"][0]["user"]["client-key"],
            "/state/pki/admin.key"
        );
        assert_eq!(parsed["current-context"], "bosun-dev");
    }
}

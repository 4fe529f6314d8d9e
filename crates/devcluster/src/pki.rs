//! The dev cluster's certificates: one CA, a serving certificate for the
//! API server and the kubelet, a client certificate per component (their
//! identities are what RBAC's bootstrap roles expect), and the
//! service-account signing key. Written once into `<state>/pki` and reused,
//! so kubeconfigs handed out stay valid across restarts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing failed.
    #[error("generating certificate {name}: {source}")]
    Generate {
        /// The certificate.
        name: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A certificate and key as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// Who a client certificate speaks for.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity<'a> {
    /// File stem, e.g. `admin`.
    pub file: &'a str,
    /// Common name: the Kubernetes user name.
    pub user: &'a str,
    /// Organization: the Kubernetes group, if any.
    pub group: Option<&'a str>,
}

/// The certificate authority of a dev cluster, able to sign more certificates.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Loads the CA from `dir`, creating it (and `dir`) when absent.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        create_dir(dir)?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !cert_path.is_file() || !key_path.is_file() {
            let key = KeyPair::generate().map_err(generate_error("ca"))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(generate_error("ca"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, "bosun-dev-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).map_err(generate_error("ca"))?;
            write(&key_path, &key.serialize_pem(), 0o600)?;
            write(&cert_path, &cert.pem(), 0o644)?;
        }
        let key_pem = read(&key_path)?;
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(generate_error("ca"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(generate_error("ca"))?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer,
        })
    }

    /// The CA certificate file.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA key file (the controller-manager signs with it).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// A serving certificate for `hosts` (DNS names and IP addresses), made once.
    pub fn serving(
        &self,
        file: &str,
        common_name: &str,
        hosts: &[String],
    ) -> Result<CertFiles, PkiError> {
        self.issue(file, |params| {
            params.subject_alt_names = hosts
                .iter()
                .map(|h| match h.parse::<IpAddr>() {
                    Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
                    Err(_) => h.clone().try_into().map(rcgen::SanType::DnsName),
                })
                .collect::<Result<_, _>>()?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            Ok(())
        })
    }

    /// A client certificate for a Kubernetes user (and group), made once.
    pub fn client(&self, identity: ClientIdentity<'_>) -> Result<CertFiles, PkiError> {
        self.issue(identity.file, |params| {
            params
                .distinguished_name
                .push(DnType::CommonName, identity.user);
            if let Some(group) = identity.group {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, group);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            Ok(())
        })
    }

    /// The service-account signing key pair (`sa.key`, `sa.pub`), made once.
    pub fn service_account_key(&self) -> Result<CertFiles, PkiError> {
        let key_path = self.dir.join("sa.key");
        let pub_path = self.dir.join("sa.pub");
        if !key_path.is_file() || !pub_path.is_file() {
            let key = KeyPair::generate().map_err(generate_error("sa"))?;
            write(&key_path, &key.serialize_pem(), 0o600)?;
            write(&pub_path, &key.public_key_pem(), 0o644)?;
        }
        Ok(CertFiles {
            cert: pub_path,
            key: key_path,
        })
    }

    fn issue(
        &self,
        file: &str,
        fill: impl FnOnce(&mut CertificateParams) -> Result<(), rcgen::Error>,
    ) -> Result<CertFiles, PkiError> {
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        if files.cert.is_file() && files.key.is_file() {
            return Ok(files);
        }
        let key = KeyPair::generate().map_err(generate_error(file))?;
        let mut params = CertificateParams::default();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        fill(&mut params).map_err(generate_error(file))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error(file))?;
        write(&files.key, &key.serialize_pem(), 0o600)?;
        write(&files.cert, &cert.pem(), 0o644)?;
        Ok(files)
    }
}

fn generate_error(name: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        name: name.to_string(),
        source,
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let io_error = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(io_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_once_and_reuses() {
        let dir = std::env::temp_dir().join(format!("bosun-pki-{}", std::process::id()));
        let pki = Pki::open(&dir).expect("ca");
        let admin = pki
            .client(ClientIdentity {
                file: "admin",
                user: "kubernetes-admin",
                group: Some("system:masters"),
            })
            .expect("admin cert");
        let first = std::fs::read_to_string(&admin.cert).expect("cert written");
        assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = Pki::open(&dir)
            .expect("ca reloads")
            .client(ClientIdentity {
                file: "admin",
                user: "kubernetes-admin",
                group: Some("system:masters"),
            })
            .expect("admin cert");
        assert_eq!(std::fs::read_to_string(again.cert).expect("cert"), first);
        pki.serving(
            "apiserver",
            "kube-apiserver",
            &["localhost".into(), "10.96.0.1".into()],
        )
        .expect("serving cert");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! The certificate Secret: its keys, reading it into what
//! [`super::rotation::next_step`] looks at, and carrying out the steps that
//! change it (making keys is the only thing here that is not pure).
//!
//! | key | holds | written by |
//! |---|---|---|
//! | `tls.crt`, `tls.key` | the serving certificate and key every replica serves | the Lease holder (or a certificate manager) |
//! | `ca.crt` | every CA to trust, PEM blocks one after the other: the `caBundle` | the Lease holder (or a certificate manager) |
//! | `signing-ca.crt`, `signing-ca.key` | the CA that signs the next serving certificate | the Lease holder only |
//!
//! `tls.crt`, `tls.key` and `ca.crt` are the keys a cert-manager
//! `Certificate` writes, so one reader serves both modes.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;

use super::certificate::{
    CertInfo, CertificateError, PemPair, generate_ca, issue_serving, parse_pem_bundle,
};
use super::rotation::{RotationPolicy, Step, StoredCertificates, ca_validity, leaf_validity};

/// The serving certificate (and chain).
pub const TLS_CERT: &str = "tls.crt";
/// The serving key.
pub const TLS_KEY: &str = "tls.key";
/// The CAs to trust.
pub const CA_BUNDLE: &str = "ca.crt";
/// The CA that signs serving certificates.
pub const SIGNING_CA_CERT: &str = "signing-ca.crt";
/// Its key.
pub const SIGNING_CA_KEY: &str = "signing-ca.key";

/// The Secret's certificate keys, as text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretContents {
    /// `tls.crt`.
    pub tls_cert: Option<String>,
    /// `tls.key`.
    pub tls_key: Option<String>,
    /// `ca.crt`.
    pub ca_bundle: Option<String>,
    /// `signing-ca.crt`.
    pub signing_cert: Option<String>,
    /// `signing-ca.key`.
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for SecretContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretContents")
            .field("tls_cert", &self.tls_cert.is_some())
            .field("ca_bundle", &self.ca_bundle.is_some())
            .field("signing_cert", &self.signing_cert.is_some())
            .finish_non_exhaustive()
    }
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
        .filter(|value| !value.trim().is_empty())
}

impl SecretContents {
    /// The keys of `secret` (missing or non-UTF-8 values read as absent).
    pub fn from_secret(secret: &Secret) -> Self {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        SecretContents {
            tls_cert: text(data, TLS_CERT),
            tls_key: text(data, TLS_KEY),
            ca_bundle: text(data, CA_BUNDLE),
            signing_cert: text(data, SIGNING_CA_CERT),
            signing_key: text(data, SIGNING_CA_KEY),
        }
    }

    /// The keys as Secret data; absent keys are left out.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (TLS_CERT, &self.tls_cert),
            (TLS_KEY, &self.tls_key),
            (CA_BUNDLE, &self.ca_bundle),
            (SIGNING_CA_CERT, &self.signing_cert),
            (SIGNING_CA_KEY, &self.signing_key),
        ]
        .into_iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|v| (key.to_string(), ByteString(v.clone().into_bytes())))
        })
        .collect()
    }

    /// What the rotation decision looks at. What cannot be read counts as
    /// absent: the decision then replaces it.
    pub fn stored(&self) -> StoredCertificates {
        let first = |pem: &Option<String>| -> Option<CertInfo> {
            pem.as_ref()
                .and_then(|p| parse_pem_bundle(p.as_bytes()).ok())
                .and_then(|certs| certs.into_iter().next())
        };
        let signing_ca = if self.signing_key.is_some() {
            first(&self.signing_cert).filter(|ca| ca.is_ca)
        } else {
            None
        };
        let trusted = self
            .ca_bundle
            .as_deref()
            .map(pem_blocks)
            .unwrap_or_default()
            .iter()
            .filter_map(|block| parse_pem_bundle(block.as_bytes()).ok()?.into_iter().next())
            .collect();
        StoredCertificates {
            signing_ca,
            trusted,
            leaf: first(&self.tls_cert),
        }
    }

    /// The contents after `step`, made at `now`. `PublishBundle` and
    /// `Wait` leave the Secret as it is.
    pub fn apply(
        &self,
        step: &Step,
        now: Timestamp,
        policy: &RotationPolicy,
        dns_names: &[String],
        ca_common_name: &str,
    ) -> Result<SecretContents, CertificateError> {
        let mut next = self.clone();
        match step {
            Step::CreateCa => {
                let (not_before, not_after) = ca_validity(now, policy);
                // The time makes the name unique: a CA is matched with what
                // it signed by name.
                let name = format!("{ca_common_name} {}", now.as_nanosecond());
                let ca = generate_ca(&name, not_before, not_after)?;
                next.add_to_bundle(&ca.cert);
                next.signing_cert = Some(ca.cert);
                next.signing_key = Some(ca.key);
            }
            Step::TrustSigningCa => {
                if let Some(cert) = self.signing_cert.clone() {
                    next.add_to_bundle(&cert);
                }
            }
            Step::DropCa { subject } => {
                let kept: Vec<String> = self
                    .ca_bundle
                    .as_deref()
                    .map(pem_blocks)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|block| {
                        parse_pem_bundle(block.as_bytes())
                            .ok()
                            .and_then(|c| c.into_iter().next())
                            .is_some_and(|ca| ca.subject != *subject)
                    })
                    .collect();
                next.ca_bundle = Some(kept.concat());
            }
            Step::IssueLeaf => {
                let (Some(cert), Some(key)) = (&self.signing_cert, &self.signing_key) else {
                    return Err(CertificateError::Parse(
                        "no signing CA to issue with".into(),
                    ));
                };
                let ca = PemPair {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let ca_info = parse_pem_bundle(cert.as_bytes())?
                    .into_iter()
                    .next()
                    .ok_or_else(|| CertificateError::Parse("an empty signing CA".into()))?;
                let (not_before, not_after) = leaf_validity(&ca_info, now, policy);
                let leaf = issue_serving(&ca, dns_names, not_before, not_after)?;
                next.tls_cert = Some(leaf.cert);
                next.tls_key = Some(leaf.key);
            }
            Step::PublishBundle | Step::Wait { .. } => {}
        }
        Ok(next)
    }

    fn add_to_bundle(&mut self, cert_pem: &str) {
        let mut blocks = self
            .ca_bundle
            .as_deref()
            .map(pem_blocks)
            .unwrap_or_default();
        let block = pem_blocks(cert_pem);
        for b in block {
            if !blocks.contains(&b) {
                blocks.push(b);
            }
        }
        self.ca_bundle = Some(blocks.concat());
    }
}

/// The PEM blocks of a text, each with its BEGIN and END lines and a final
/// newline; whatever lies between blocks is dropped.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from_start = &rest[start..];
        let Some(end) = from_start.find(END) else {
            break;
        };
        let after_end = &from_start[end..];
        let line_end = after_end.find('\n').map_or(after_end.len(), |i| i + 1);
        let mut block = from_start[..end + line_end].trim_end().to_string();
        block.push('\n');
        blocks.push(block);
        rest = &after_end[line_end..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["hooks.ops.svc".into()]
    }

    fn run(contents: &SecretContents, step: &Step, now: Timestamp) -> SecretContents {
        contents
            .apply(step, now, &RotationPolicy::default(), &names(), "test CA")
            .expect("step applies")
    }

    #[test]
    fn steps_change_the_secret_as_the_decision_expects() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
        let empty = SecretContents::default();
        assert_eq!(empty.stored(), StoredCertificates::default());

        let with_ca = run(&empty, &Step::CreateCa, now);
        let stored = with_ca.stored();
        let first = stored.signing_ca.clone().expect("a signing CA");
        assert_eq!(stored.trusted, vec![first.clone()]);
        assert_eq!(stored.leaf, None);

        let with_leaf = run(&with_ca, &Step::IssueLeaf, now);
        let leaf = with_leaf.stored().leaf.expect("a leaf");
        assert_eq!(leaf.issuer, first.subject);
        assert_eq!(leaf.alt_names, names());

        let rotated = run(
            &with_leaf,
            &Step::CreateCa,
            now + k8s_openapi::jiff::SignedDuration::from_secs(1),
        );
        let stored = rotated.stored();
        let second = stored.signing_ca.clone().expect("a new signing CA");
        assert_ne!(second.subject, first.subject);
        assert_eq!(stored.trusted.len(), 2, "old and new together");
        assert_eq!(
            stored.leaf.map(|l| l.issuer),
            Some(first.subject.clone()),
            "leaf untouched"
        );

        let dropped = run(
            &rotated,
            &Step::DropCa {
                subject: first.subject.clone(),
            },
            now,
        );
        assert_eq!(dropped.stored().trusted, vec![second.clone()]);

        let round_trip = SecretContents::from_secret(&Secret {
            data: Some(dropped.to_data()),
            ..Secret::default()
        });
        assert_eq!(round_trip, dropped);
        assert!(
            !format!("{dropped:?}").contains("PRIVATE"),
            "keys stay out of logs"
        );
    }

    #[test]
    fn unreadable_contents_count_as_absent() {
        let garbage = SecretContents {
            tls_cert: Some("not a certificate".into()),
            tls_key: Some("x".into()),
            ca_bundle: Some(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ),
            signing_cert: Some("nope".into()),
            signing_key: Some("nope".into()),
        };
        assert_eq!(garbage.stored(), StoredCertificates::default());
    }

    #[test]
    fn pem_blocks_split_and_normalise() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\n-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----";
        assert_eq!(
            pem_blocks(text),
            [
                "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n"
            ]
        );
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nunterminated").is_empty());
    }
}

//! Certificates as the webhook machinery sees them: the few fields that
//! decisions need (who issued it, who it names, when it is valid), read
//! from PEM; and the making of a CA and of a serving certificate signed by
//! it, with rcgen on ring.

use std::net::IpAddr;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

/// Why a certificate could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The PEM or DER could not be read.
    #[error("reading a certificate: {0}")]
    Parse(String),
    /// rcgen could not make or sign a certificate.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A validity date is outside what X.509 can hold.
    #[error("a certificate date out of range: {0}")]
    Date(String),
}

/// What the certificate decisions look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject distinguished name, DER: identifies a CA.
    pub subject: Vec<u8>,
    /// The issuer distinguished name, DER: the subject of the CA that
    /// signed it.
    pub issuer: Vec<u8>,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
    /// Its subject alternative names: DNS names, and IP addresses written
    /// as text.
    pub alt_names: Vec<String>,
    /// Whether it may sign certificates.
    pub is_ca: bool,
}

impl CertInfo {
    /// Whether it is valid at `now`.
    pub fn valid_at(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The point `fraction` of the way through its validity.
    pub fn fraction_of_life(&self, fraction: f64) -> Timestamp {
        let life = self.not_before.duration_until(self.not_after);
        let part = SignedDuration::from_secs_f64(life.as_secs_f64() * fraction);
        self.not_before.checked_add(part).unwrap_or(self.not_after)
    }
}

/// The fields of one DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo, CertificateError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertificateError::Parse(e.to_string()))?;
    let timestamp = |seconds: i64| {
        Timestamp::from_second(seconds).map_err(|e| CertificateError::Parse(e.to_string()))
    };
    let alt_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_string()),
                GeneralName::IPAddress(bytes) => ip_text(bytes),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(CertificateError::Parse(e.to_string())),
    };
    Ok(CertInfo {
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        not_before: timestamp(cert.validity().not_before.timestamp())?,
        not_after: timestamp(cert.validity().not_after.timestamp())?,
        alt_names,
        is_ca: cert.is_ca(),
    })
}

/// An IP address SAN (4 or 16 bytes) as text.
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        _ => None,
    }
}

/// Every certificate in a PEM text, in order, as DER.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::Parse(e.to_string()))
}

/// Every certificate in a PEM text, read.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<CertInfo>, CertificateError> {
    pem_certificates(pem)?
        .iter()
        .map(|der| parse_certificate(der))
        .collect()
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private key in a log line.
        f.debug_struct("PemPair")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

fn offset_date_time(at: Timestamp) -> Result<time::OffsetDateTime, CertificateError> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|e| CertificateError::Date(e.to_string()))
}

fn validity(
    params: &mut CertificateParams,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<(), CertificateError> {
    params.not_before = offset_date_time(not_before)?;
    params.not_after = offset_date_time(not_after)?;
    Ok(())
}

/// A new self-signed CA named `common_name`, valid from `not_before` to
/// `not_after`. Its name must differ from every other CA's: the leaf's
/// issuer name is how a CA is matched with what it signed.
pub fn generate_ca(
    common_name: &str,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<PemPair, CertificateError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, not_before, not_after)?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names, or IP addresses for a
/// webhook reached by address), signed by `ca`.
pub fn issue_serving(
    ca: &PemPair,
    names: &[String],
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<PemPair, CertificateError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, not_before, not_after)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The DNS names a webhook Service answers to inside the cluster.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn a_leaf_names_its_ca_as_issuer_and_carries_the_requested_fields() {
        let ca = generate_ca(
            "test-ca-1",
            at("2026-01-01T00:00:00Z"),
            at("2027-01-01T00:00:00Z"),
        )
        .expect("CA");
        let names = service_dns_names("hooks", "ops");
        let leaf = issue_serving(
            &ca,
            &names,
            at("2026-02-01T00:00:00Z"),
            at("2026-05-01T00:00:00Z"),
        )
        .expect("leaf");
        let ca_info = parse_pem_bundle(ca.cert.as_bytes()).expect("CA parses");
        let leaf_info = parse_pem_bundle(leaf.cert.as_bytes()).expect("leaf parses");
        assert_eq!(ca_info.len(), 1);
        assert!(ca_info[0].is_ca);
        assert!(!leaf_info[0].is_ca);
        assert_eq!(leaf_info[0].issuer, ca_info[0].subject);
        assert_eq!(
            leaf_info[0].alt_names,
            ["hooks.ops.svc", "hooks.ops.svc.cluster.local", "hooks.ops"]
        );
        assert_eq!(leaf_info[0].not_before, at("2026-02-01T00:00:00Z"));
        assert_eq!(leaf_info[0].not_after, at("2026-05-01T00:00:00Z"));
        assert!(format!("{leaf:?}").contains("CERTIFICATE"));
        assert!(
            !format!("{leaf:?}").contains("PRIVATE"),
            "keys stay out of logs"
        );
    }

    #[test]
    fn ip_addresses_are_served_as_ip_sans_and_read_back_as_text() {
        let from = at("2026-01-01T00:00:00Z");
        let to = at("2027-01-01T00:00:00Z");
        let ca = generate_ca("ca-ip", from, to).expect("CA");
        let names = vec!["127.0.0.1".to_string(), "::1".into(), "localhost".into()];
        let leaf = issue_serving(&ca, &names, from, to).expect("leaf");
        let info = parse_pem_bundle(leaf.cert.as_bytes()).expect("leaf parses");
        assert_eq!(info[0].alt_names, names);
    }

    #[test]
    fn cas_with_different_names_are_told_apart() {
        let from = at("2026-01-01T00:00:00Z");
        let to = at("2027-01-01T00:00:00Z");
        let one = generate_ca("ca-1", from, to).expect("CA");
        let two = generate_ca("ca-2", from, to).expect("CA");
        let bundle = format!("{}{}", one.cert, two.cert);
        let infos = parse_pem_bundle(bundle.as_bytes()).expect("bundle");
        assert_eq!(infos.len(), 2);
        assert_ne!(infos[0].subject, infos[1].subject);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_certificate(b"\x30\x03\x02\x01").is_err());
        assert!(
            parse_pem_bundle(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert_eq!(parse_pem_bundle(b"").map(|v| v.len()).ok(), Some(0));
    }

    #[test]
    fn fractions_of_life() {
        let info = CertInfo {
            subject: vec![],
            issuer: vec![],
            not_before: at("2026-01-01T00:00:00Z"),
            not_after: at("2026-01-04T00:00:00Z"),
            alt_names: vec![],
            is_ca: false,
        };
        assert_eq!(info.fraction_of_life(2.0 / 3.0), at("2026-01-03T00:00:00Z"));
        assert!(info.valid_at(at("2026-01-01T00:00:00Z")));
        assert!(!info.valid_at(at("2026-01-04T00:00:00Z")));
    }
}

//! The two bucket requests the add-on makes (HEAD to see whether its bucket
//! exists, PUT to make it), signed by object_store's SigV4 signer and sent
//! with reqwest: the S3 client and HTTP client the etcd operator already
//! uses for backups, so the dev cluster speaks to S3 the way users' backups
//! do. object_store itself has no call for making a bucket.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use serde::Deserialize;

use super::Credentials;

/// What S3 answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The `Code` of the S3 error document, when there was one.
    pub(crate) error_code: Option<String>,
}

/// An S3 error document (`<Error><Code>NoSuchBucket</Code>…</Error>`).
#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(rename = "Code")]
    code: String,
}

/// The `Code` of an S3 error document, `None` for any other body.
pub(crate) fn error_code(body: &str) -> Option<String> {
    quick_xml::de::from_str::<ErrorDocument>(body)
        .ok()
        .map(|document| document.code)
}

/// An HTTP client for the add-on's plain-HTTP requests. reqwest wants TLS
/// settings all the same: rustls with ring, given here, so that no
/// process-wide provider has to be installed. No proxy from the
/// environment: the requests go to the cluster's Service and nowhere else.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS settings: {e}"))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))
}

/// Sends `method` for `bucket` at `endpoint` (`http://host:port`), signed
/// with `credentials` for `region`; `Err` says why nothing was answered.
pub(crate) async fn bucket_request(
    client: &reqwest::Client,
    endpoint: &str,
    bucket: &str,
    method: http::Method,
    credentials: &Credentials,
    region: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let url = format!("{endpoint}/{bucket}");
    let mut request: HttpRequest = http::Request::builder()
        .method(method.clone())
        .uri(&url)
        .body(HttpRequestBody::empty())
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let credential = AwsCredential {
        key_id: credentials.access_key_id.clone(),
        secret_key: credentials.secret_access_key.clone(),
        token: None,
    };
    AwsAuthorizer::new(&credential, "s3", region)
        .try_authorize(&mut request, None)
        .map_err(|e| format!("signing {method} {url}: {e}"))?;
    let response = client
        .request(method.clone(), &url)
        .headers(request.headers().clone())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    Ok(Answer {
        status,
        error_code: error_code(&body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_s3_error_documents_only() {
        let document = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>BucketAlreadyOwnedByYou</Code><Message>yours</Message><Resource>/b</Resource></Error>"#;
        assert_eq!(
            error_code(document).as_deref(),
            Some("BucketAlreadyOwnedByYou")
        );
        assert_eq!(error_code(""), None);
        assert_eq!(error_code("<html>proxy error</html>"), None);
        assert_eq!(
            error_code("<Error><Message>no code</Message></Error>"),
            None
        );
    }
}

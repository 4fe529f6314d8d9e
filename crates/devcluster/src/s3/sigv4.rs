//! Just enough S3 for the add-on to check its own bucket: requests without
//! a body (HEAD and PUT of a bucket), signed with AWS Signature Version 4
//! and sent over plain HTTP/1.1. Users of the object store take a real S3
//! client; this exists so that `bosun dev` needs none.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Credentials;

/// The SHA-256 of an empty payload, which every request here has.
const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The most of a response that is kept: S3 error documents are small.
const MAX_RESPONSE: u64 = 64 * 1024;

/// One request without a body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'a> {
    /// `HEAD`, `PUT`, `GET`.
    pub(crate) method: &'a str,
    /// The absolute path, already URI-encoded (`/bosun-backups`).
    pub(crate) path: &'a str,
    /// The canonical query string (`lifecycle=`), or empty.
    pub(crate) query: &'a str,
    /// The `Host` header: the address the client connects to.
    pub(crate) host: &'a str,
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body, as text (an S3 error document, or empty).
    pub(crate) body: String,
}

impl Response {
    /// The `<Code>` of an S3 error document (`NoSuchBucket`), if any.
    pub(crate) fn error_code(&self) -> Option<&str> {
        let start = self.body.find("<Code>")? + "<Code>".len();
        let len = self.body[start..].find("</Code>")?;
        Some(&self.body[start..start + len])
    }
}

/// The headers that sign `request` at `now` for `region`: `x-amz-date`,
/// `x-amz-content-sha256` and `Authorization`.
pub(crate) fn signed_headers(
    credentials: &Credentials,
    region: &str,
    request: &Request<'_>,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let day = &amz_date[..8];
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{EMPTY_PAYLOAD_SHA256}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{EMPTY_PAYLOAD_SHA256}",
        method = request.method,
        path = request.path,
        query = request.query,
        host = request.host,
    );
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        day.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, to_sign.as_bytes()));
    vec![
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256.to_string()),
        (
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
                credentials.access_key_id
            ),
        ),
    ]
}

/// Sends `request` to `addr`, signed, and reads the whole answer within
/// `timeout`. An error when no HTTP answer came.
pub(crate) async fn send(
    addr: SocketAddr,
    credentials: &Credentials,
    region: &str,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut text = format!(
            "{} {}{}{} HTTP/1.1\r\nHost: {}\r\n",
            request.method,
            request.path,
            if request.query.is_empty() { "" } else { "?" },
            request.query,
            request.host
        );
        for (name, value) in signed_headers(credentials, region, request, SystemTime::now()) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        stream
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        parse_response(&answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// The status and body of an HTTP/1.1 response read to its end.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok(Response { status, body })
}

/// HMAC-SHA-256 (RFC 2104) over the SHA-256 the crate already uses.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `20130524T000000Z`: the UTC time in ISO 8601 basic format, as SigV4 wants.
fn amz_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2013-05-24T00:00:00Z, the time of AWS's published examples.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn dates_are_utc_in_basic_format() {
        assert_eq!(amz_date(example_time()), "20130524T000000Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        // 2024-02-29T23:59:59Z: a leap day.
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "20240229T235959Z"
        );
    }

    #[test]
    fn signature_matches_aws_get_bucket_lifecycle_example() {
        // The "GET Bucket Lifecycle" example of AWS's S3 SigV4 documentation.
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let request = Request {
            method: "GET",
            path: "/",
            query: "lifecycle=",
            host: "examplebucket.s3.amazonaws.com",
        };
        let headers = signed_headers(&credentials, "us-east-1", &request, example_time());
        assert_eq!(headers[0], ("x-amz-date", "20130524T000000Z".to_string()));
        assert_eq!(
            headers[2].1,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn responses_give_status_and_error_code() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\n\r\n<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code></Error>";
        let response = parse_response(raw).expect("an HTTP answer");
        assert_eq!(response.status, 404);
        assert_eq!(response.error_code(), Some("NoSuchBucket"));
        let head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").expect("200");
        assert_eq!((head.status, head.error_code()), (200, None));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_response(b"").is_err());
    }
}

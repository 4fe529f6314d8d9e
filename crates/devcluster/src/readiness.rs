//! Waiting for the cluster to become usable, each wait with a deadline and a
//! message that says what did not happen: the API server answers `/readyz`,
//! the node is Ready, the default ServiceAccount exists, cluster DNS answers.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::{Api, Client};

/// A wait that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}{}", last.as_ref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub waited: Duration,
    /// The last observation, if any.
    pub last: Option<String>,
}

/// Polls `check` every `interval` until it returns `Ok(true)`; an `Err` is
/// remembered as the last observation and polling goes on.
pub async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut check: F,
) -> Result<(), Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() >= deadline {
            return Err(Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// The API server answers `/readyz` with `ok`.
pub async fn api_ready(client: &Client) -> Result<bool, String> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(request).await {
        Ok(body) => Ok(body.trim() == "ok"),
        Err(e) => Err(e.to_string()),
    }
}

/// The node exists and its Ready condition is True.
pub async fn node_ready(client: &Client, node: &str) -> Result<bool, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get_opt(node).await.map_err(|e| e.to_string())?;
    Ok(node
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
}

/// The controller-manager has created the `default` ServiceAccount in `default`.
pub async fn default_service_account(client: &Client) -> Result<bool, String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    accounts
        .get_opt("default")
        .await
        .map(|sa| sa.is_some())
        .map_err(|e| e.to_string())
}

/// Asks the DNS server at `server` for the A record of `name` and returns the
/// addresses in the answer. A single query over UDP: this is a readiness
/// probe, not a resolver, so it needs no resolver library.
pub async fn dns_lookup(
    server: Ipv4Addr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, String> {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    let id: u16 = (std::process::id() & 0xffff) as u16;
    let query = dns_query(id, name)?;
    socket
        .send_to(&query, SocketAddr::from((server, 53)))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let len = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    parse_a_records(&buf[..len], id)
}

/// A DNS query (RFC 1035 §4.1) for the A record of `name`, recursion desired.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l));
        let len = len.ok_or_else(|| format!("{name:?} is not a DNS name"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

/// The A records of a DNS response to query `id`; an error for a failure code.
fn parse_a_records(msg: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    let short = || "truncated DNS answer".to_string();
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("not an answer to our query".into());
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("DNS error code {rcode}"));
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    let skip_name = |mut pos: usize| -> Result<usize, String> {
        loop {
            let len = *msg.get(pos).ok_or_else(short)? as usize;
            if len == 0 {
                return Ok(pos + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Ok(pos + 2);
            }
            pos += len + 1;
        }
    };
    for _ in 0..questions {
        pos = skip_name(pos)? + 4;
    }
    let mut found = vec![];
    for _ in 0..answers {
        pos = skip_name(pos)?;
        let header = msg.get(pos..pos + 10).ok_or_else(short)?;
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let rdlen = u16::from_be_bytes([header[8], header[9]]) as usize;
        let data = msg.get(pos + 10..pos + 10 + rdlen).ok_or_else(short)?;
        if rtype == 1 && rdlen == 4 {
            found.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + rdlen;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_labels() {
        let q = dns_query(7, "kubernetes.default.svc.cluster.local").expect("query");
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(q[12], 10);
        assert_eq!(&q[13..23], b"kubernetes");
        assert!(dns_query(1, "bad..name").is_err());
    }

    #[test]
    fn parses_an_answer_with_a_compressed_name() {
        let mut msg = dns_query(9, "a.b").expect("query");
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[7] = 1; // one answer
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 1]);
        assert_eq!(
            parse_a_records(&msg, 9),
            Ok(vec![Ipv4Addr::new(10, 96, 0, 1)])
        );
        assert!(parse_a_records(&msg, 8).is_err());
        msg[3] = 0x83; // NXDOMAIN
        assert_eq!(parse_a_records(&msg, 9), Err("DNS error code 3".into()));
    }
}

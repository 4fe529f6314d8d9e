//! Waiting for the cluster to become usable, each wait with a deadline and a
//! message that says what did not happen: the API server answers `/readyz`,
//! the node is Ready, the default ServiceAccount exists, cluster DNS answers.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
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
/// probe, not a resolver (no cache, no search list, no retry), so the
/// message is built and read by hickory's protocol crate and sent here.
pub async fn dns_lookup(
    server: Ipv4Addr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, String> {
    let query = a_query(name)?;
    let bytes = query
        .to_vec()
        .map_err(|e| format!("encoding a query for {name}: {e}"))?;
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    socket
        .connect(SocketAddr::from((server, 53)))
        .await
        .map_err(|e| e.to_string())?;
    socket.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let len = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    a_records(&buf[..len], query.metadata.id)
}

/// A query for the A record of `name`, recursion desired, with a random id.
fn a_query(name: &str) -> Result<Message, String> {
    let name = Name::from_ascii(name).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::A));
    Ok(query)
}

/// The A records of a DNS answer to query `id`; an error for anything that
/// is not a complete, successful answer to it.
fn a_records(answer: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    let message = Message::from_vec(answer).map_err(|e| format!("not a DNS message: {e}"))?;
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return Err("not an answer to our query".into());
    }
    if message.metadata.truncation {
        return Err("a truncated DNS answer".into());
    }
    if message.metadata.response_code != ResponseCode::NoError {
        return Err(format!("DNS error {}", message.metadata.response_code));
    }
    Ok(message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(address)) => Some(*address),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;

    fn answer_to(query: &Message, code: ResponseCode, addresses: &[Ipv4Addr]) -> Vec<u8> {
        let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
        answer.metadata.response_code = code;
        answer.add_queries(query.queries.clone());
        for address in addresses {
            answer.add_answer(Record::from_rdata(
                query.queries[0].name().clone(),
                5,
                RData::A(A(*address)),
            ));
        }
        answer.to_vec().expect("an answer encodes")
    }

    #[test]
    fn a_query_asks_for_the_a_record_with_recursion() {
        let query = a_query("kubernetes.default.svc.cluster.local").expect("query");
        let decoded = Message::from_vec(&query.to_vec().expect("encodes")).expect("decodes");
        assert!(decoded.metadata.recursion_desired);
        assert_eq!(decoded.queries.len(), 1);
        assert_eq!(decoded.queries[0].query_type(), RecordType::A);
        assert_eq!(
            decoded.queries[0].name().to_ascii(),
            // On the wire every name is absolute.
            "kubernetes.default.svc.cluster.local."
        );
        assert!(a_query("bad..name").is_err());
    }

    #[test]
    fn answers_are_read_only_when_they_answer_our_query_successfully() {
        let query = a_query("a.b").expect("query");
        let id = query.metadata.id;
        let address = Ipv4Addr::new(10, 96, 0, 1);
        let ok = answer_to(&query, ResponseCode::NoError, &[address]);
        assert_eq!(a_records(&ok, id), Ok(vec![address]));
        assert_eq!(
            a_records(&ok, id.wrapping_add(1)),
            Err("not an answer to our query".into())
        );
        let nxdomain = answer_to(&query, ResponseCode::NXDomain, &[]);
        assert!(
            a_records(&nxdomain, id)
                .expect_err("NXDOMAIN is an error")
                .contains("DNS error")
        );
        let mut truncated = Message::from_vec(&ok).expect("decodes");
        truncated.metadata.truncation = true;
        assert_eq!(
            a_records(&truncated.to_vec().expect("encodes"), id),
            Err("a truncated DNS answer".into())
        );
        assert!(a_records(b"garbage", id).is_err());
        assert!(
            a_records(&query.to_vec().expect("encodes"), id).is_err(),
            "a query is no answer"
        );
    }
}

//! One admission call, from the request body to the response body: read
//! the `AdmissionReview`, run the handler, answer with an `AdmissionReview`
//! that carries the request's uid. Nothing here panics on what the caller
//! sent: a body that is not an `AdmissionReview` gets HTTP 400 with a
//! denied review saying why; an object the handler's type cannot hold gets
//! a denied review (HTTP 200), so that the API server shows the user the
//! reason instead of a transport error.

use std::panic::{AssertUnwindSafe, catch_unwind};

use kube::Resource;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND,
};
use kube::core::{DynamicObject, TypeMeta};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A handler: decides one admission request. Validating handlers allow or
/// deny; mutating handlers may add a patch (see [`patch_response`]).
pub type Handler<K> = dyn Fn(&AdmissionRequest<K>) -> AdmissionResponse + Send + Sync;

/// The answer to one call: the HTTP status and the `AdmissionReview` body.
#[derive(Debug)]
pub struct Answer {
    /// 200 for every well-formed review (allowed or denied), 400 for a body
    /// that is not one.
    pub status: u16,
    /// The `AdmissionReview` (always with a `response`) to send back.
    pub review: AdmissionReview<DynamicObject>,
}

impl Answer {
    /// The JSON body. Serializing an `AdmissionReview` of plain strings and
    /// bytes cannot fail; should it, the fallback is still a valid review.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.review).unwrap_or_else(|error| {
            format!(
                r#"{{"apiVersion":"{META_API_VERSION_V1}","kind":"{META_KIND}","response":{{"uid":"","allowed":false,"status":{{"message":"encoding the response: {}","code":500}}}}}}"#,
                error.to_string().replace(['"', '\\'], "'")
            )
            .into_bytes()
        })
    }
}

/// Runs `handler` on the review in `body`.
pub fn answer<K>(body: &[u8], handler: &Handler<K>) -> Answer
where
    K: Resource + DeserializeOwned + Clone,
{
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return bad_request(format!("the body is not JSON: {error}")),
    };
    if value.get("kind").and_then(|k| k.as_str()) != Some(META_KIND) {
        return bad_request(format!("the body is not an {META_KIND}"));
    }
    let api_version = value.get("apiVersion").and_then(|v| v.as_str());
    if api_version != Some(META_API_VERSION_V1) {
        return bad_request(format!(
            "{META_KIND} version {api_version:?} is not served; list only {META_API_VERSION_V1:?} in admissionReviewVersions"
        ));
    }
    let Some(uid) = value
        .get("request")
        .and_then(|r| r.get("uid"))
        .and_then(|u| u.as_str())
        .map(str::to_string)
    else {
        return bad_request(format!("the {META_KIND} has no request.uid"));
    };
    let review: AdmissionReview<K> = match serde_json::from_value(value) {
        Ok(review) => review,
        Err(error) => {
            let mut response =
                AdmissionResponse::invalid(format!("the request cannot be read: {error}"));
            response.uid = uid;
            return reviewed(response);
        }
    };
    let request: AdmissionRequest<K> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return bad_request(error.to_string()),
    };
    // A handler that panics must not take the connection down with it:
    // the API server would see a transport error, and the user nothing.
    let mut response = match catch_unwind(AssertUnwindSafe(|| handler(&request))) {
        Ok(response) => response,
        Err(_) => AdmissionResponse::from(&request)
            .deny("the admission handler failed (panicked); see the operator's log"),
    };
    // The API server refuses a response for another request; whatever the
    // handler built, it answers this one.
    response.uid = request.uid.clone();
    reviewed(response)
}

fn v1_types() -> TypeMeta {
    TypeMeta {
        api_version: META_API_VERSION_V1.to_string(),
        kind: META_KIND.to_string(),
    }
}

/// A 200 answer carrying `response`, always as a v1 review (kube takes the
/// review's type from the response).
fn reviewed(mut response: AdmissionResponse) -> Answer {
    response.types = v1_types();
    Answer {
        status: 200,
        review: response.into_review(),
    }
}

fn bad_request(reason: String) -> Answer {
    let mut response = AdmissionResponse::invalid(reason);
    response.result.code = 400;
    Answer {
        status: 400,
        review: response.into_review(),
    }
}

/// Why a mutation could not be turned into a patch.
#[derive(Debug, thiserror::Error)]
#[error("building the JSON patch: {0}")]
pub struct PatchError(String);

/// The response of a mutating handler that turned `before` (the request's
/// object) into `after`: allowed, with the JSON Patch between them (none
/// when they are equal).
pub fn patch_response<K, T>(
    request: &AdmissionRequest<K>,
    before: &T,
    after: &T,
) -> Result<AdmissionResponse, PatchError>
where
    K: Resource,
    T: Serialize,
{
    let before = serde_json::to_value(before).map_err(|e| PatchError(e.to_string()))?;
    let after = serde_json::to_value(after).map_err(|e| PatchError(e.to_string()))?;
    let patch = json_patch::diff(&before, &after);
    let response = AdmissionResponse::from(request);
    if patch.0.is_empty() {
        return Ok(response);
    }
    response
        .with_patch(patch)
        .map_err(|e| PatchError(e.to_string()))
}

/// [`patch_response`], or a denial that says why no patch could be made:
/// what a mutating handler returns in one line.
pub fn mutated<K, T>(request: &AdmissionRequest<K>, before: &T, after: &T) -> AdmissionResponse
where
    K: Resource,
    T: Serialize,
{
    patch_response(request, before, after)
        .unwrap_or_else(|error| AdmissionResponse::from(request).deny(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::{Value, json};

    fn review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3f1c",
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": "c",
                "namespace": "ns",
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": null,
                "dryRun": false
            }
        }))
        .unwrap_or_default()
    }

    fn config_map(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    fn deny_forbidden(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
        let forbidden = request
            .object
            .as_ref()
            .and_then(|o| o.data.as_ref())
            .is_some_and(|d| d.contains_key("forbidden"));
        let response = AdmissionResponse::from(request);
        if forbidden {
            response.deny("key forbidden is not allowed")
        } else {
            response
        }
    }

    fn response_json(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body()).unwrap_or_default()
    }

    #[test]
    fn an_allowed_request_is_answered_with_its_uid() {
        let answer = answer(&review(config_map(json!({"a": "1"}))), &deny_forbidden);
        assert_eq!(answer.status, 200);
        let body = response_json(&answer);
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], "3f1c");
        assert_eq!(body["response"]["allowed"], true);
    }

    #[test]
    fn a_denial_carries_its_message() {
        let answer = answer(
            &review(config_map(json!({"forbidden": "1"}))),
            &deny_forbidden,
        );
        assert_eq!(answer.status, 200);
        let body = response_json(&answer);
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(
            body["response"]["status"]["message"],
            "key forbidden is not allowed"
        );
    }

    #[test]
    fn bodies_that_are_no_review_get_400_and_a_denied_review() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"kind":"Pod"}"#,
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}"#,
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
        ] {
            let answer = answer(body, &deny_forbidden);
            assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(body));
            let json = response_json(&answer);
            assert_eq!(json["response"]["allowed"], false);
            assert_eq!(json["response"]["status"]["code"], 400);
        }
    }

    #[test]
    fn an_object_of_the_wrong_shape_is_denied_with_the_requests_uid() {
        let answer = answer(&review(json!({"data": "not a map"})), &deny_forbidden);
        assert_eq!(answer.status, 200);
        let body = response_json(&answer);
        assert_eq!(body["response"]["uid"], "3f1c");
        assert_eq!(body["response"]["allowed"], false);
        let message = body["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("cannot be read"), "{message}");
    }

    #[test]
    fn a_panicking_handler_denies_instead_of_dropping_the_connection() {
        let handler = |_: &AdmissionRequest<ConfigMap>| -> AdmissionResponse {
            panic!("handler bug");
        };
        let answer = answer(&review(config_map(json!({}))), &handler);
        assert_eq!(answer.status, 200);
        assert_eq!(response_json(&answer)["response"]["allowed"], false);
    }

    #[test]
    fn a_handler_cannot_answer_for_another_uid() {
        let handler =
            |_: &AdmissionRequest<ConfigMap>| AdmissionResponse::invalid("built without request");
        let answer = answer(&review(config_map(json!({}))), &handler);
        assert_eq!(response_json(&answer)["response"]["uid"], "3f1c");
    }

    #[test]
    fn a_mutation_becomes_a_json_patch_and_no_change_none() {
        let body = review(config_map(json!({"a": "1"})));
        let handler = |request: &AdmissionRequest<ConfigMap>| {
            let Some(before) = request.object.clone() else {
                return AdmissionResponse::from(request);
            };
            let mut after = before.clone();
            after
                .data
                .get_or_insert_default()
                .insert("defaulted".into(), "yes".into());
            mutated(request, &before, &after)
        };
        let json = response_json(&answer(&body, &handler));
        assert_eq!(json["response"]["allowed"], true);
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        // kube writes the patch bytes as a JSON array, which the API
        // server's decoder takes for its []byte; read it back the same way.
        let decoded: Value = serde_json::from_value::<kube::core::admission::AdmissionResponse>(
            json["response"].clone(),
        )
        .ok()
        .and_then(|r| r.patch)
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or_default();
        assert_eq!(
            decoded,
            json!([{"op": "add", "path": "/data/defaulted", "value": "yes"}])
        );

        let unchanged = |request: &AdmissionRequest<ConfigMap>| {
            let object = request.object.clone().unwrap_or_default();
            mutated(request, &object, &object)
        };
        let json = response_json(&answer(&body, &unchanged));
        assert_eq!(json["response"]["allowed"], true);
        assert!(json["response"].get("patch").is_none(), "{json}");
    }

    /// Hostile and malformed bodies: whatever arrives, the answer is a
    /// well-formed v1 AdmissionReview with a response, and nothing panics.
    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn well_formed(answer: &Answer) -> Result<(), String> {
            let json: Value =
                serde_json::from_slice(&answer.body()).map_err(|e| format!("not JSON: {e}"))?;
            if json["apiVersion"] != "admission.k8s.io/v1" || json["kind"] != "AdmissionReview" {
                return Err(format!("not a v1 AdmissionReview: {json}"));
            }
            if !json["response"]["allowed"].is_boolean() || !json["response"]["uid"].is_string() {
                return Err(format!("no response: {json}"));
            }
            if ![200, 400].contains(&answer.status) {
                return Err(format!("status {}", answer.status));
            }
            Ok(())
        }

        /// JSON of any shape, a few levels deep.
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_bytes_get_a_well_formed_answer(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let answer = answer(&body, &deny_forbidden);
                prop_assert!(well_formed(&answer).is_ok(), "{:?}", well_formed(&answer));
            }

            #[test]
            fn any_request_shape_gets_a_well_formed_answer(
                request in any_json(),
                object in any_json(),
                uid in ".{0,40}",
            ) {
                // A review envelope around arbitrary request fields and objects.
                let mut request = match request {
                    Value::Object(map) => Value::Object(map),
                    other => json!({"extra": other}),
                };
                request["uid"] = Value::String(uid);
                request["object"] = object;
                let body = serde_json::to_vec(&json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": request,
                }))
                .unwrap_or_default();
                let answer = answer(&body, &deny_forbidden);
                prop_assert!(well_formed(&answer).is_ok(), "{:?}", well_formed(&answer));
            }

            #[test]
            fn a_real_request_with_any_object_is_never_allowed_blindly(object in any_json()) {
                let answer = answer(&review(object.clone()), &deny_forbidden);
                prop_assert!(well_formed(&answer).is_ok(), "{:?}", well_formed(&answer));
                let json = response_json(&answer);
                prop_assert_eq!(&json["response"]["uid"], "3f1c");
                // Only no object (as in a DELETE) or a ConfigMap reaches the
                // handler, which alone allows.
                if json["response"]["allowed"] == true {
                    prop_assert!(
                        object.is_null() || serde_json::from_value::<ConfigMap>(object).is_ok()
                    );
                }
            }
        }

        #[test]
        fn deep_nesting_is_refused_not_overflowed() {
            let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            let answer = answer(deep.as_bytes(), &deny_forbidden);
            assert_eq!(answer.status, 400);
            assert!(well_formed(&answer).is_ok());
        }
    }
}

//! What imc-control writes back into an InMemoryChannel once the dispatcher serves it (contract
//! §4.4): `status.subscribers`, one `{uid, observedGeneration, ready: "True"}` per
//! `spec.subscribers` entry, in spec order, stale entries dropped, written with a JSON Patch on the
//! status subresource, and no patch at all when nothing would change. D17: the caller patches
//! only channels the dispatcher has acknowledged as routed on every worker.

use serde_json::{json, Map, Value};

/// The `status.subscribers` the channel `object` (as the API server serves it) must report.
/// Field names and omissions as upstream's Go type marshals them: `uid` and `observedGeneration`
/// are left out when empty or zero, `ready` is always there.
pub fn desired_subscribers(object: &Value) -> Value {
    let subs = object
        .pointer("/spec/subscribers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    Value::Array(
        subs.iter()
            .map(|s| {
                let mut entry = Map::new();
                if let Some(uid) = s
                    .get("uid")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                {
                    entry.insert("uid".into(), uid.into());
                }
                if let Some(g) = s
                    .get("generation")
                    .and_then(Value::as_i64)
                    .filter(|g| *g != 0)
                {
                    entry.insert("observedGeneration".into(), g.into());
                }
                entry.insert("ready".into(), "True".into());
                Value::Object(entry)
            })
            .collect(),
    )
}

/// The JSON Patch (`application/json-patch+json`) that makes `object`'s `status.subscribers`
/// what [`desired_subscribers`] says, or `None` when it already is. An object with no `status`
/// at all gets `status` added whole: adding `/status/subscribers` under a missing parent is a 422.
pub fn subscribers_patch(object: &Value) -> Option<String> {
    let desired = desired_subscribers(object);
    let ops = match object.get("status") {
        None | Some(Value::Null) => json!([
            {"op": "add", "path": "/status", "value": {"subscribers": desired}}
        ]),
        Some(status) => match status.get("subscribers") {
            Some(current) if *current == desired => return None,
            // An empty list and no list are the same status (Go omits an empty slice).
            None if desired.as_array().is_some_and(Vec::is_empty) => return None,
            None => json!([{"op": "add", "path": "/status/subscribers", "value": desired}]),
            Some(_) => json!([{"op": "replace", "path": "/status/subscribers", "value": desired}]),
        },
    };
    Some(ops.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imc(status: Value) -> Value {
        let mut o = json!({
            "metadata": {"name": "c", "namespace": "ns", "generation": 2},
            "spec": {"subscribers": [
                {"uid": "u1", "generation": 1, "subscriberUri": "http://a/"},
                {"uid": "u2", "generation": 3, "subscriberUri": "http://b/"}
            ]}
        });
        if !status.is_null() {
            o["status"] = status;
        }
        o
    }

    #[test]
    fn first_patch_adds_the_list_in_spec_order() {
        let p = subscribers_patch(&imc(json!({"observedGeneration": 2}))).unwrap();
        assert_eq!(
            p,
            r#"[{"op":"add","path":"/status/subscribers","value":[{"observedGeneration":1,"ready":"True","uid":"u1"},{"observedGeneration":3,"ready":"True","uid":"u2"}]}]"#
        );
    }

    #[test]
    fn no_patch_when_nothing_changes_and_stale_entries_go() {
        let done = imc(json!({"subscribers": desired_subscribers(&imc(Value::Null))}));
        assert_eq!(subscribers_patch(&done), None);
        let stale = imc(json!({"subscribers": [
            {"uid": "u1", "observedGeneration": 1, "ready": "True"},
            {"uid": "gone", "observedGeneration": 1, "ready": "True"}
        ]}));
        let p = subscribers_patch(&stale).unwrap();
        assert!(
            p.starts_with(r#"[{"op":"replace","path":"/status/subscribers""#),
            "{p}"
        );
        assert!(!p.contains("gone"));
    }

    #[test]
    fn an_object_without_status_gets_status_added_whole() {
        let p = subscribers_patch(&imc(Value::Null)).unwrap();
        assert!(
            p.starts_with(r#"[{"op":"add","path":"/status","value":{"subscribers":["#),
            "{p}"
        );
        let none = json!({"metadata": {"name": "c"}, "spec": {}, "status": {}});
        assert_eq!(subscribers_patch(&none), None);
    }
}

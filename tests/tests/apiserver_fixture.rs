//! The apiserver fixture behaves as a Kubernetes 1.36 API server where a client depends on it:
//! each test drives it over real HTTPS (curl with the test CA) and its control port.

use std::time::{Duration, Instant};

use imc_e2e::apiserver::{
    parse_rv, ApiServer, Fault, KubeRequest, Restart, ADMIN_TOKEN, DISPATCHER_TOKEN,
    DISPATCHER_USER, NOBODY_TOKEN, SYSTEM_NAMESPACE,
};
use serde_json::{json, Value};

const IMCS: &str = "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels";
const ALL_IMCS: &str = "/apis/messaging.knative.dev/v1/inmemorychannels";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";

fn imc(name: &str, subscribers: Value) -> Value {
    json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "InMemoryChannel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"subscribers": subscribers},
    })
}

fn one_subscriber() -> Value {
    json!([{"uid": "u1", "generation": 1, "subscriberUri": "http://s1.default.svc"}])
}

fn rv_of(obj: &Value) -> u64 {
    parse_rv(&obj["metadata"]["resourceVersion"])
}

fn patch(
    server: &ApiServer,
    token: &str,
    path: &str,
    ct: &str,
    body: &Value,
) -> imc_e2e::apiserver::KubeResponse {
    server.https(
        &KubeRequest::new("PATCH", path)
            .token(token)
            .body(ct, &body.to_string()),
    )
}

fn put(
    server: &ApiServer,
    token: &str,
    path: &str,
    body: &Value,
) -> imc_e2e::apiserver::KubeResponse {
    server.https(&KubeRequest::new("PUT", path).token(token).json(body))
}

fn post(
    server: &ApiServer,
    token: &str,
    path: &str,
    body: &Value,
) -> imc_e2e::apiserver::KubeResponse {
    server.https(&KubeRequest::new("POST", path).token(token).json(body))
}

#[test]
fn no_token_or_an_unknown_token_is_401_unauthorized() {
    let server = ApiServer::start();
    for req in [
        KubeRequest::new("GET", IMCS),
        KubeRequest::new("GET", IMCS).token("not-a-token"),
    ] {
        let resp = server.https(&req);
        resp.assert_status(401);
        assert_eq!(
            resp.json(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        );
    }
}

#[test]
fn a_verb_outside_the_role_is_403_naming_the_verb_and_the_resource() {
    let server = ApiServer::start();
    server.admin().put(&imc("ch1", one_subscriber()));
    server.get(DISPATCHER_TOKEN, ALL_IMCS).assert_status(200);
    let resp =
        server.https(&KubeRequest::new("DELETE", &format!("{IMCS}/ch1")).token(DISPATCHER_TOKEN));
    resp.assert_status(403);
    let status = resp.json();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        format!(
            "inmemorychannels.messaging.knative.dev \"ch1\" is forbidden: User \"{DISPATCHER_USER}\" \
             cannot delete resource \"inmemorychannels\" in API group \"messaging.knative.dev\" in \
             the namespace \"default\""
        )
    );
    assert_eq!(
        status["details"],
        json!({"name": "ch1", "group": "messaging.knative.dev", "kind": "inmemorychannels"})
    );
    // Secrets: only in the system namespace (the TLS Role).
    server
        .get(
            DISPATCHER_TOKEN,
            &format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets"),
        )
        .assert_status(200);
    let resp = server.get(DISPATCHER_TOKEN, "/api/v1/namespaces/default/secrets");
    resp.assert_status(403);
    assert!(resp.json()["message"].as_str().unwrap().contains(
        "cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
    ));
    // A role with nothing: even list is forbidden, at the cluster scope.
    let resp = server.get(NOBODY_TOKEN, ALL_IMCS);
    resp.assert_status(403);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .ends_with("cannot list resource \"inmemorychannels\" in API group \"messaging.knative.dev\" at the cluster scope"));
}

#[test]
fn the_dispatcher_may_patch_status_but_a_put_on_status_is_403() {
    let server = ApiServer::start();
    let stored = server.admin().put(&imc("ch1", one_subscriber()));
    let path = format!("{IMCS}/ch1/status");
    let resp = put(&server, DISPATCHER_TOKEN, &path, &stored);
    resp.assert_status(403);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("cannot update resource \"inmemorychannels/status\""));
    let resp = patch(
        &server,
        DISPATCHER_TOKEN,
        &path,
        MERGE_PATCH,
        &json!({"status": {"subscribers": [{"uid": "u1", "observedGeneration": 1, "ready": "True"}]}}),
    );
    resp.assert_status(200);
    // Leases: create and update are granted (leader election).
    post(
        &server,
        DISPATCHER_TOKEN,
        LEASES,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}}),
    )
    .assert_status(201);
}

#[test]
fn lists_page_with_limit_and_continue_at_one_resource_version() {
    let server = ApiServer::start();
    for i in 0..5 {
        server
            .admin()
            .put(&imc(&format!("ch{i}"), one_subscriber()));
    }
    let first = server.get(ADMIN_TOKEN, &format!("{IMCS}?limit=2"));
    first.assert_status(200);
    let page = first.json();
    assert_eq!(page["kind"], "InMemoryChannelList");
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let list_rv = parse_rv(&page["metadata"]["resourceVersion"]);
    assert_eq!(
        list_rv,
        server.resource_version(),
        "a list's resourceVersion is the counter"
    );
    let names = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), ["ch0", "ch1"]);
    // Written between pages: not in the paged list, which stays at the first page's version.
    server.admin().put(&imc("ch2a", one_subscriber()));
    server.admin().delete("inmemorychannels", "default", "ch3");
    let mut all = names(&page);
    let mut token = page["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let resp = server.get(ADMIN_TOKEN, &format!("{IMCS}?limit=2&continue={token}"));
        resp.assert_status(200);
        let p = resp.json();
        assert_eq!(parse_rv(&p["metadata"]["resourceVersion"]), list_rv);
        all.extend(names(&p));
        match p["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => {
                assert!(p["metadata"].get("remainingItemCount").is_none());
                break;
            }
        }
    }
    assert_eq!(all, ["ch0", "ch1", "ch2", "ch3", "ch4"]);
    // Once history is compacted past it, the token is 410 Expired.
    server.compact();
    let resp = server.get(
        ADMIN_TOKEN,
        &format!(
            "{IMCS}?limit=2&continue={}",
            page["metadata"]["continue"].as_str().unwrap()
        ),
    );
    resp.assert_status(410);
    assert_eq!(resp.json()["reason"], "Expired");
}

#[test]
fn label_and_field_selectors_filter_lists_and_watches() {
    let server = ApiServer::start();
    for (name, team) in [("a", "x"), ("b", "y"), ("c", "x")] {
        let mut o = imc(name, one_subscriber());
        o["metadata"]["labels"] = json!({"team": team});
        server.admin().put(&o);
    }
    let names = |path: &str| -> Vec<String> {
        let r = server.get(ADMIN_TOKEN, path);
        r.assert_status(200);
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&format!("{IMCS}?labelSelector=team%3Dx")), ["a", "c"]);
    assert_eq!(names(&format!("{IMCS}?labelSelector=team%21%3Dx")), ["b"]);
    assert_eq!(
        names(&format!("{IMCS}?labelSelector=team")),
        ["a", "b", "c"]
    );
    assert_eq!(
        names(&format!("{ALL_IMCS}?fieldSelector=metadata.name%3Db")),
        ["b"]
    );
    // Filtered list: no remainingItemCount.
    let p = server
        .get(
            ADMIN_TOKEN,
            &format!("{IMCS}?labelSelector=team%3Dx&limit=1"),
        )
        .json();
    assert!(p["metadata"].get("remainingItemCount").is_none());
    assert!(p["metadata"]["continue"].as_str().is_some());
    // A single-object watch as kube-rs makes it.
    let rv = server.resource_version();
    let w = server.watch(ADMIN_TOKEN, &format!("{ALL_IMCS}?watch=true&fieldSelector=metadata.name%3Dc&resourceVersion={rv}&timeoutSeconds=2"), Duration::from_secs(5));
    server.wait_for_watch(ALL_IMCS, Duration::from_secs(5));
    server.admin().merge_patch(
        "inmemorychannels",
        "default",
        "a",
        &json!({"metadata": {"annotations": {"k": "1"}}}),
    );
    server.admin().merge_patch(
        "inmemorychannels",
        "default",
        "c",
        &json!({"metadata": {"annotations": {"k": "1"}}}),
    );
    let end = w.finish(Duration::from_secs(5));
    assert_eq!(end.events.len(), 1, "{:?}", end.events);
    assert_eq!(end.events[0]["type"], "MODIFIED");
    assert_eq!(end.events[0]["object"]["metadata"]["name"], "c");
    assert!(end.clean());
}

#[test]
fn a_watch_replays_the_events_after_its_resource_version() {
    let server = ApiServer::start();
    let created = server.admin().put(&imc("ch1", one_subscriber()));
    let from = rv_of(&created);
    server.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch1",
        &json!({"spec": {"subscribers": []}}),
    );
    server.admin().put(&imc("ch2", one_subscriber()));
    server.admin().delete("inmemorychannels", "default", "ch1");
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&resourceVersion={from}&timeoutSeconds=1"),
        Duration::from_secs(5),
    );
    assert_eq!(w.status(), 200);
    assert_eq!(w.header("Transfer-Encoding").as_deref(), Some("chunked"));
    let end = w.finish(Duration::from_secs(5));
    let seen: Vec<(String, String)> = end
        .events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("MODIFIED".into(), "ch1".into()),
            ("ADDED".into(), "ch2".into()),
            ("DELETED".into(), "ch1".into())
        ]
    );
    let rvs: Vec<u64> = end.events.iter().map(|e| rv_of(&e["object"])).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > from,
        "{rvs:?}"
    );
    // Without a resourceVersion: synthetic ADDED for what exists, then the live events.
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&timeoutSeconds=1"),
        Duration::from_secs(5),
    );
    let end = w.finish(Duration::from_secs(5));
    assert_eq!(end.events.len(), 1);
    assert_eq!(end.events[0]["type"], "ADDED");
    assert_eq!(end.events[0]["object"]["metadata"]["name"], "ch2");
}

#[test]
fn bookmarks_come_only_when_asked_for() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(300))
        .start();
    server.admin().put(&imc("ch1", one_subscriber()));
    let rv = server.resource_version();
    let plain = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&resourceVersion={rv}&timeoutSeconds=2"),
        Duration::from_secs(5),
    );
    let asked = server.watch(
        ADMIN_TOKEN,
        &format!(
            "{IMCS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
        ),
        Duration::from_secs(5),
    );
    let plain = plain.finish(Duration::from_secs(5));
    let asked = asked.finish(Duration::from_secs(5));
    assert!(plain.events.is_empty(), "{:?}", plain.events);
    assert!(asked.events.len() >= 3, "{:?}", asked.events);
    for e in &asked.events {
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(
            e["object"],
            json!({"kind": "InMemoryChannel", "apiVersion": "messaging.knative.dev/v1",
                   "metadata": {"resourceVersion": rv.to_string()}})
        );
    }
}

#[test]
fn timeout_seconds_ends_the_stream_cleanly() {
    let server = ApiServer::start();
    let started = Instant::now();
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&timeoutSeconds=1"),
        Duration::from_secs(6),
    );
    let end = w.finish(Duration::from_secs(6));
    let took = started.elapsed();
    assert!(
        end.clean(),
        "curl exit {:?}: the chunked terminator was not sent",
        end.exit
    );
    assert!(end.events.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let log = server.requests(&[("watch", "true")]);
    assert_eq!(log[0]["ended"], "timeoutSeconds");
}

#[test]
fn a_too_old_resource_version_is_a_200_stream_with_one_410_error_event() {
    let server = ApiServer::start();
    let old = rv_of(&server.admin().put(&imc("ch1", one_subscriber())));
    server.admin().put(&imc("ch2", one_subscriber()));
    let compacted = server.compact();
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&resourceVersion={}", old - 1),
        Duration::from_secs(5),
    );
    assert_eq!(w.status(), 200);
    let end = w.finish(Duration::from_secs(5));
    assert!(end.clean());
    assert_eq!(
        end.events,
        [
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {} ({compacted})", old - 1),
            "reason": "Expired", "code": 410}})
        ]
    );
}

#[test]
fn a_write_that_changes_nothing_keeps_the_resource_version_and_sends_no_event() {
    let server = ApiServer::start();
    let stored = server.admin().put(&imc("ch1", one_subscriber()));
    let rv = rv_of(&stored);
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&resourceVersion={rv}&timeoutSeconds=2"),
        Duration::from_secs(5),
    );
    server.wait_for_watch(IMCS, Duration::from_secs(5));
    let resp = put(&server, ADMIN_TOKEN, &format!("{IMCS}/ch1"), &stored);
    resp.assert_status(200);
    assert_eq!(rv_of(&resp.json()), rv);
    let resp = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{IMCS}/ch1"),
        MERGE_PATCH,
        &json!({"spec": {"subscribers": one_subscriber()}}),
    );
    assert_eq!(rv_of(&resp.json()), rv);
    assert_eq!(server.resource_version(), rv);
    let end = w.finish(Duration::from_secs(5));
    assert!(end.events.is_empty(), "{:?}", end.events);
}

#[test]
fn generation_moves_on_spec_changes_only() {
    let server = ApiServer::start();
    let created = post(&server, ADMIN_TOKEN, IMCS, &imc("ch1", one_subscriber()));
    created.assert_status(201);
    let obj = created.json();
    assert_eq!(obj["metadata"]["generation"], 1);
    assert!(obj["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(obj["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let path = format!("{IMCS}/ch1");
    let labels = patch(
        &server,
        ADMIN_TOKEN,
        &path,
        MERGE_PATCH,
        &json!({"metadata": {"labels": {"a": "b"}}}),
    )
    .json();
    assert_eq!(labels["metadata"]["generation"], 1);
    assert!(rv_of(&labels) > rv_of(&obj));
    let status = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{path}/status"),
        MERGE_PATCH,
        &json!({"status": {"observedGeneration": 1}}),
    )
    .json();
    assert_eq!(status["metadata"]["generation"], 1);
    let spec = patch(
        &server,
        ADMIN_TOKEN,
        &path,
        MERGE_PATCH,
        &json!({"spec": {"subscribers": []}}),
    )
    .json();
    assert_eq!(spec["metadata"]["generation"], 2);
}

#[test]
fn status_sent_to_the_main_resource_and_spec_sent_to_status_are_ignored() {
    let server = ApiServer::start();
    let path = format!("{IMCS}/ch1");
    let mut body = imc("ch1", one_subscriber());
    body["status"] = json!({"observedGeneration": 7});
    let created = post(&server, ADMIN_TOKEN, IMCS, &body).json();
    assert!(
        created.get("status").is_none(),
        "status on create is dropped: {created}"
    );
    let mut update = created.clone();
    update["status"] = json!({"observedGeneration": 7});
    let updated = put(&server, ADMIN_TOKEN, &path, &update);
    updated.assert_status(200);
    assert!(updated.json().get("status").is_none());
    assert_eq!(rv_of(&updated.json()), rv_of(&created), "nothing changed");
    let st = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{path}/status"),
        MERGE_PATCH,
        &json!({"spec": {"subscribers": []}, "metadata": {"labels": {"x": "y"}}, "status": {"observedGeneration": 1}}),
    )
    .json();
    assert_eq!(st["spec"]["subscribers"], one_subscriber());
    assert!(st["metadata"].get("labels").is_none());
    assert_eq!(st["status"]["observedGeneration"], 1);
}

#[test]
fn json_patch_add_under_a_missing_parent_and_a_failed_test_are_422() {
    let server = ApiServer::start();
    server.admin().put(&imc("ch1", one_subscriber()));
    let path = format!("{IMCS}/ch1/status");
    let add = json!([{"op": "add", "path": "/status/subscribers", "value": [{"uid": "u1", "observedGeneration": 1, "ready": "True"}]}]);
    let resp = patch(&server, DISPATCHER_TOKEN, &path, JSON_PATCH, &add);
    resp.assert_status(422);
    assert_eq!(
        resp.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "the server rejected our request due to an error in our request",
               "reason": "Invalid", "details": {}, "code": 422})
    );
    let log = server.requests(&[("method", "PATCH"), ("status", "422")]);
    assert_eq!(
        log[0]["detail"],
        "add operation does not apply: doc is missing path: \"/status/subscribers\": missing value"
    );
    // With a status, the same patch applies; a failed test is 422 too.
    server.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch1",
        &json!({"status": {"observedGeneration": 1}}),
    );
    patch(&server, DISPATCHER_TOKEN, &path, JSON_PATCH, &add).assert_status(200);
    let test = json!([{"op": "test", "path": "/status/observedGeneration", "value": 2},
                      {"op": "replace", "path": "/status/observedGeneration", "value": 3}]);
    patch(&server, DISPATCHER_TOKEN, &path, JSON_PATCH, &test).assert_status(422);
    let moved = json!([{"op": "copy", "from": "/status/subscribers/0", "path": "/status/subscribers/-"},
                       {"op": "move", "from": "/status/subscribers/1", "path": "/status/subscribers/0"},
                       {"op": "remove", "path": "/status/subscribers/1"},
                       {"op": "test", "path": "/status/subscribers/0/uid", "value": "u1"}]);
    let resp = patch(&server, DISPATCHER_TOKEN, &path, JSON_PATCH, &moved);
    resp.assert_status(200);
    assert_eq!(
        resp.json()["status"]["subscribers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_boolean_ready_is_422_invalid() {
    let server = ApiServer::start();
    server.admin().imc(
        "default",
        "ch1",
        json!({"subscribers": one_subscriber()}),
        Some(json!({})),
    );
    let resp = patch(
        &server,
        DISPATCHER_TOKEN,
        &format!("{IMCS}/ch1/status"),
        JSON_PATCH,
        &json!([{"op": "add", "path": "/status/subscribers", "value": [{"uid": "u1", "observedGeneration": 1, "ready": true}]}]),
    );
    resp.assert_status(422);
    let status = resp.json();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["message"],
        "InMemoryChannel.messaging.knative.dev \"ch1\" is invalid: status.subscribers[0].ready: Invalid value: \
         \"boolean\": status.subscribers[0].ready in body must be of type string: \"boolean\""
    );
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "status.subscribers[0].ready"
    );
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldValueTypeInvalid"
    );
    assert_eq!(status["details"]["kind"], "InMemoryChannel");
}

#[test]
fn an_unknown_subscriber_status_field_is_pruned_with_a_warning() {
    let server = ApiServer::start();
    server.admin().imc(
        "default",
        "ch1",
        json!({"subscribers": one_subscriber()}),
        Some(json!({})),
    );
    let resp = patch(
        &server,
        DISPATCHER_TOKEN,
        &format!("{IMCS}/ch1/status"),
        JSON_PATCH,
        &json!([{"op": "add", "path": "/status/subscribers", "value": [{"uid": "u1", "observedGeneration": 1, "ready": "True", "x": 1}]}]),
    );
    resp.assert_status(200);
    assert_eq!(
        resp.header("Warning"),
        Some(r#"299 - "unknown field \"status.subscribers[0].x\"""#)
    );
    assert_eq!(
        resp.json()["status"]["subscribers"],
        json!([{"uid": "u1", "observedGeneration": 1, "ready": "True"}])
    );
}

#[test]
fn strategic_merge_patch_is_415_on_the_custom_resource_and_accepted_on_a_configmap() {
    let server = ApiServer::start();
    server.admin().put(&imc("ch1", one_subscriber()));
    server.admin().configmap("default", "cm", &[("a", "1")]);
    let smp = "application/strategic-merge-patch+json";
    let resp = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{IMCS}/ch1"),
        smp,
        &json!({"metadata": {"labels": {"a": "b"}}}),
    );
    resp.assert_status(415);
    assert_eq!(resp.json()["reason"], "UnsupportedMediaType");
    assert_eq!(
        resp.json()["message"],
        "the body of the request was in an unknown format - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    );
    let resp = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{CONFIGMAPS}/cm"),
        smp,
        &json!({"data": {"b": "2"}}),
    );
    resp.assert_status(200);
    assert_eq!(resp.json()["data"], json!({"a": "1", "b": "2"}));
    // Not implemented here (server-side apply): 415, said so.
    let resp = patch(
        &server,
        ADMIN_TOKEN,
        &format!("{CONFIGMAPS}/cm"),
        "application/apply-patch+yaml",
        &json!({}),
    );
    resp.assert_status(415);
}

#[test]
fn leases_conflict_on_a_second_create_and_a_stale_update_and_take_micro_times() {
    let server = ApiServer::start();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                 "acquireTime": "2026-12-02T03:04:05.123456Z", "renewTime": "2026-12-02T04:04:05.123456+01:00"}});
    let created = post(&server, DISPATCHER_TOKEN, LEASES, &lease);
    created.assert_status(201);
    let stored = created.json();
    assert_eq!(
        stored["spec"]["renewTime"], "2026-12-02T03:04:05.123456Z",
        "written back in UTC"
    );
    let again = post(&server, DISPATCHER_TOKEN, LEASES, &lease);
    again.assert_status(409);
    assert_eq!(again.json()["reason"], "AlreadyExists");
    assert_eq!(
        again.json()["message"],
        "leases.coordination.k8s.io \"leader\" already exists"
    );
    // Update with the current resourceVersion, then again with the now stale one.
    let mut next = stored.clone();
    next["spec"]["holderIdentity"] = json!("b");
    put(
        &server,
        DISPATCHER_TOKEN,
        &format!("{LEASES}/leader"),
        &next,
    )
    .assert_status(200);
    next["spec"]["holderIdentity"] = json!("c");
    let stale = put(
        &server,
        DISPATCHER_TOKEN,
        &format!("{LEASES}/leader"),
        &next,
    );
    stale.assert_status(409);
    assert_eq!(stale.json()["reason"], "Conflict");
    assert_eq!(
        stale.json()["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );
    // MicroTime needs six fractional digits: a decode error on create (400), Invalid on patch (422).
    let mut bad = lease.clone();
    bad["metadata"]["name"] = json!("other");
    bad["spec"]["renewTime"] = json!("2026-12-02T03:04:05Z");
    let resp = post(&server, DISPATCHER_TOKEN, LEASES, &bad);
    resp.assert_status(400);
    assert!(resp.json()["message"].as_str().unwrap().contains(
        "parsing time \"2026-12-02T03:04:05Z\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"Z\" as \".000000\""
    ));
    let resp = patch(
        &server,
        DISPATCHER_TOKEN,
        &format!("{LEASES}/leader"),
        MERGE_PATCH,
        &json!({"spec": {"renewTime": "yesterday"}}),
    );
    resp.assert_status(422);
    assert_eq!(resp.json()["details"]["causes"][0]["field"], "patch");
    let resp = patch(
        &server,
        DISPATCHER_TOKEN,
        &format!("{LEASES}/leader"),
        MERGE_PATCH,
        &json!({"spec": {"leaseDurationSeconds": 0}}),
    );
    resp.assert_status(422);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .ends_with("spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"));
}

#[test]
fn a_custom_resource_update_needs_a_resource_version_and_a_stale_one_conflicts() {
    let server = ApiServer::start();
    let stored = server.admin().put(&imc("ch1", one_subscriber()));
    let mut body = stored.clone();
    body["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let resp = put(&server, ADMIN_TOKEN, &format!("{IMCS}/ch1"), &body);
    resp.assert_status(422);
    assert!(resp.json()["message"].as_str().unwrap().ends_with(
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    ));
    server.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch1",
        &json!({"spec": {"subscribers": []}}),
    );
    let resp = put(&server, ADMIN_TOKEN, &format!("{IMCS}/ch1"), &stored);
    resp.assert_status(409);
    assert_eq!(resp.json()["reason"], "Conflict");
    let resp = post(&server, ADMIN_TOKEN, IMCS, &imc("ch1", one_subscriber()));
    resp.assert_status(409);
    assert_eq!(resp.json()["reason"], "AlreadyExists");
    let resp = server.get(ADMIN_TOKEN, &format!("{IMCS}/nope"));
    resp.assert_status(404);
    assert_eq!(
        resp.json()["message"],
        "inmemorychannels.messaging.knative.dev \"nope\" not found"
    );
}

#[test]
fn managed_fields_name_the_field_manager_else_the_user_agent() {
    let server = ApiServer::start();
    server.admin().imc(
        "default",
        "ch1",
        json!({"subscribers": one_subscriber()}),
        Some(json!({})),
    );
    let path = format!("{IMCS}/ch1/status");
    let body = json!([{"op": "add", "path": "/status/subscribers", "value": [{"uid": "u1", "observedGeneration": 1, "ready": "True"}]}]);
    let resp = server.https(
        &KubeRequest::new("PATCH", &format!("{path}?fieldManager=imc-dispatcher"))
            .token(DISPATCHER_TOKEN)
            .body(JSON_PATCH, &body.to_string()),
    );
    resp.assert_status(200);
    let entries = resp.json()["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .clone();
    let mine = entries
        .iter()
        .find(|e| e["manager"] == "imc-dispatcher")
        .expect("an entry for the fieldManager");
    assert_eq!(mine["operation"], "Update");
    assert_eq!(mine["subresource"], "status");
    assert_eq!(mine["apiVersion"], "messaging.knative.dev/v1");
    assert_eq!(mine["fieldsV1"], json!({"f:status": {"f:subscribers": {}}}));
    assert!(mine["time"].as_str().unwrap().ends_with('Z'));
    // No fieldManager: the User-Agent up to its first '/'.
    let resp = server.https(
        &KubeRequest::new("PATCH", &format!("{IMCS}/ch1"))
            .token(ADMIN_TOKEN)
            .header("User-Agent", "imc-control/0.1.0 (linux/amd64) kube-rs")
            .body(MERGE_PATCH, r#"{"metadata":{"labels":{"a":"b"}}}"#),
    );
    let entries = resp.json()["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .clone();
    let ua = entries
        .iter()
        .find(|e| e["manager"] == "imc-control")
        .expect("an entry named after the User-Agent");
    assert_eq!(
        ua["fieldsV1"],
        json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
    );
    assert!(ua.get("subresource").is_none());
}

#[test]
fn a_restart_refuses_then_answers_503_then_429_then_expires_old_watches() {
    let server = ApiServer::start();
    let rv = rv_of(&server.admin().put(&imc("ch1", one_subscriber())));
    let w = server.watch(
        DISPATCHER_TOKEN,
        &format!("{ALL_IMCS}?watch=true&resourceVersion={rv}"),
        Duration::from_secs(20),
    );
    server.wait_for_watch(ALL_IMCS, Duration::from_secs(5));
    let plan = Restart {
        down: Duration::from_millis(1500),
        unavailable: Duration::from_millis(1500),
        initializing: Duration::from_millis(1500),
        ..Restart::default()
    };
    let started = Instant::now();
    server.restart(plan);
    let end = w.finish(Duration::from_secs(5));
    assert!(
        !end.clean(),
        "the watch was cut, not ended: exit {:?}",
        end.exit
    );
    // Down: connections are refused.
    let refused = std::net::TcpStream::connect(server.addr());
    assert!(refused.is_err(), "connected while down");
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        if std::net::TcpStream::connect(server.addr()).is_err() {
            if seen.last() != Some(&0) {
                seen.push(0);
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let resp = server.get(DISPATCHER_TOKEN, ALL_IMCS);
        if seen.last() != Some(&resp.status) {
            match resp.status {
                503 => {
                    assert_eq!(resp.header("Retry-After"), Some("5"));
                    assert_eq!(resp.json()["details"]["retryAfterSeconds"], 5);
                }
                429 => {
                    assert_eq!(resp.header("Retry-After"), Some("1"));
                    assert_eq!(resp.json()["message"], "storage is (re)initializing");
                }
                _ => {}
            }
            seen.push(resp.status);
        }
        if resp.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, [0, 503, 429, 200], "the phases in order (0: refused)");
    let w = server.watch(
        DISPATCHER_TOKEN,
        &format!("{ALL_IMCS}?watch=true&resourceVersion={rv}"),
        Duration::from_secs(5),
    );
    assert_eq!(w.status(), 200);
    let end = w.finish(Duration::from_secs(5));
    assert_eq!(end.events.len(), 1);
    assert_eq!(end.events[0]["type"], "ERROR");
    assert_eq!(end.events[0]["object"]["code"], 410);
    assert_eq!(end.events[0]["object"]["reason"], "Expired");
    // Objects and the counter survived; the restart's own Lease write moved it by one.
    assert_eq!(server.resource_version(), rv + 1);
    server
        .get(DISPATCHER_TOKEN, &format!("{IMCS}/ch1"))
        .assert_status(200);
}

#[test]
fn a_restart_can_start_with_rbac_not_loaded() {
    let server = ApiServer::start();
    server.restart(Restart {
        down: Duration::from_millis(300),
        forbidden: Duration::from_secs(2),
        unavailable: Duration::ZERO,
        initializing: Duration::ZERO,
        ..Restart::default()
    });
    let resp = imc_e2e::eventually(Duration::from_secs(5), "listening again", || {
        std::net::TcpStream::connect(server.addr())
            .ok()
            .map(|_| server.get(DISPATCHER_TOKEN, ALL_IMCS))
    });
    resp.assert_status(403);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .ends_with("RBAC: clusterrole.rbac.authorization.k8s.io \"imc-dispatcher\" not found"));
    server.get(ADMIN_TOKEN, ALL_IMCS).assert_status(200);
}

#[test]
fn drop_watches_ends_streams_without_the_chunked_terminator() {
    let server = ApiServer::start();
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true"),
        Duration::from_secs(10),
    );
    server.wait_for_watch(IMCS, Duration::from_secs(5));
    assert_eq!(server.drop_watches(), 1);
    let end = w.finish(Duration::from_secs(5));
    assert!(!end.clean(), "curl exit {:?}", end.exit);
    assert!(server.watches().is_empty());
    let log = server.requests(&[("watch", "true")]);
    assert_eq!(log[0]["ended"], "dropped");
}

#[test]
fn injected_faults_answer_the_next_n_matching_requests() {
    let server = ApiServer::start();
    server.admin().imc(
        "default",
        "ch1",
        json!({"subscribers": one_subscriber()}),
        Some(json!({})),
    );
    let path = format!("{IMCS}/ch1/status");
    server.inject(&Fault::on("PATCH", &path).status(409).count(2));
    let body = json!({"status": {"observedGeneration": 1}});
    for _ in 0..2 {
        let resp = patch(&server, DISPATCHER_TOKEN, &path, MERGE_PATCH, &body);
        resp.assert_status(409);
        assert_eq!(resp.json()["reason"], "Conflict");
    }
    patch(&server, DISPATCHER_TOKEN, &path, MERGE_PATCH, &body).assert_status(200);
    server.inject(&Fault::verb("list", "inmemorychannels").status(500));
    let resp = server.get(DISPATCHER_TOKEN, ALL_IMCS);
    resp.assert_status(500);
    assert_eq!(resp.json()["reason"], "InternalError");
    server.get(DISPATCHER_TOKEN, ALL_IMCS).assert_status(200);
    server.inject(
        &Fault::verb("watch", "inmemorychannels")
            .status(410)
            .as_watch_event(),
    );
    let end = server
        .watch(
            DISPATCHER_TOKEN,
            &format!("{ALL_IMCS}?watch=true"),
            Duration::from_secs(5),
        )
        .finish(Duration::from_secs(5));
    assert_eq!(end.events[0]["type"], "ERROR");
    assert_eq!(end.events[0]["object"]["code"], 410);
    let log = server.requests(&[("method", "PATCH"), ("path", &path)]);
    let statuses: Vec<u64> = log.iter().map(|e| e["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [409, 409, 200]);
    assert_eq!(log[0]["user"], DISPATCHER_USER);
    assert_eq!(log[0]["content_type"], MERGE_PATCH);
    assert_eq!(log[2]["body"], body.to_string());
}

#[test]
fn unknown_paths_are_404_and_discovery_answers() {
    let server = ApiServer::start();
    let resp = server.get(
        ADMIN_TOKEN,
        "/apis/messaging.knative.dev/v1/namespaces/default/channels",
    );
    resp.assert_status(404);
    assert_eq!(resp.json()["reason"], "NotFound");
    let resp = server.get(ADMIN_TOKEN, "/apis/nothing.example/v1/things");
    resp.assert_status(404);
    assert_eq!(resp.body, "404 page not found\n");
    let version = server.get(DISPATCHER_TOKEN, "/version").json();
    assert_eq!(version["gitVersion"], "v1.36.0");
    let resources = server
        .get(DISPATCHER_TOKEN, "/apis/messaging.knative.dev/v1")
        .json();
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inmemorychannels", "inmemorychannels/status"]);
}

#[test]
fn the_kubeconfig_names_the_server_the_ca_and_the_token() {
    let server = ApiServer::start();
    let text = std::fs::read_to_string(server.kubeconfig_path(DISPATCHER_TOKEN)).unwrap();
    assert!(text.contains(&format!("server: {}", server.url())));
    assert!(text.contains(&format!("token: {DISPATCHER_TOKEN}")));
    assert!(text.contains(&format!(
        "certificate-authority-data: {}",
        imc_e2e::base64(server.ca_pem().as_bytes())
    )));
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn a_streaming_list_sends_the_objects_then_the_initial_events_end_bookmark() {
    let server = ApiServer::start();
    server.admin().put(&imc("ch1", one_subscriber()));
    server.admin().put(&imc("ch2", one_subscriber()));
    let rv = server.resource_version();
    // As kube-rs's watcher with InitialListStrategy::StreamingList asks for it.
    let w = server.watch(
        DISPATCHER_TOKEN,
        &format!("{ALL_IMCS}?watch=true&timeoutSeconds=2&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"),
        Duration::from_secs(5),
    );
    let end = w.finish(Duration::from_secs(5));
    let kinds: Vec<&str> = end
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(
        end.events[2]["object"]["metadata"],
        json!({"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}})
    );
    // Without allowWatchBookmarks it is refused, as by a real server.
    let w = server.watch(
        DISPATCHER_TOKEN,
        &format!("{ALL_IMCS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
        Duration::from_secs(5),
    );
    assert_eq!(w.status(), 422);
}

#[test]
fn delete_waits_for_finalizers_and_answers_as_the_real_server() {
    let server = ApiServer::start();
    let mut o = imc("ch1", one_subscriber());
    o["metadata"]["finalizers"] = json!(["imc-control.knative.dev"]);
    server.admin().put(&o);
    server.admin().configmap("default", "cm", &[("a", "1")]);
    let path = format!("{IMCS}/ch1");
    let resp = server.https(&KubeRequest::new("DELETE", &path).token(ADMIN_TOKEN));
    resp.assert_status(200);
    let pending = resp.json();
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        pending["metadata"]["generation"], 2,
        "setting deletionTimestamp bumps generation"
    );
    // Removing the last finalizer deletes it.
    let rv = rv_of(&pending);
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        Duration::from_secs(5),
    );
    patch(
        &server,
        ADMIN_TOKEN,
        &path,
        JSON_PATCH,
        &json!([{"op": "remove", "path": "/metadata/finalizers"}]),
    )
    .assert_status(200);
    server.get(ADMIN_TOKEN, &path).assert_status(404);
    let end = w.finish(Duration::from_secs(5));
    assert_eq!(end.events.last().unwrap()["type"], "DELETED");
    // A built-in type answers a Status.
    let resp =
        server.https(&KubeRequest::new("DELETE", &format!("{CONFIGMAPS}/cm")).token(ADMIN_TOKEN));
    resp.assert_status(200);
    assert_eq!(resp.json()["status"], "Success");
    assert_eq!(resp.json()["details"]["name"], "cm");
}

#[test]
fn a_graceful_restart_ends_watches_cleanly_and_the_scopes_narrow_the_phases() {
    let server = ApiServer::start();
    let w = server.watch(
        ADMIN_TOKEN,
        &format!("{IMCS}?watch=true"),
        Duration::from_secs(10),
    );
    server.wait_for_watch(IMCS, Duration::from_secs(5));
    server.restart(Restart {
        down: Duration::from_millis(300),
        unavailable: Duration::from_millis(1500),
        initializing: Duration::from_millis(1500),
        unavailable_scope: "crd",
        initializing_scope: "watch",
        graceful: true,
        ..Restart::default()
    });
    let end = w.finish(Duration::from_secs(5));
    assert!(
        end.clean(),
        "a graceful restart ends the watch with the terminator: exit {:?}",
        end.exit
    );
    let crd = imc_e2e::eventually(Duration::from_secs(5), "listening again", || {
        std::net::TcpStream::connect(server.addr())
            .ok()
            .map(|_| server.get(DISPATCHER_TOKEN, ALL_IMCS))
    });
    crd.assert_status(503);
    // Core paths are installed: no 503 for them.
    server
        .get(DISPATCHER_TOKEN, "/api/v1/namespaces/default/configmaps")
        .assert_status(200);
    imc_e2e::eventually(Duration::from_secs(5), "the 429 phase", || {
        (server.state()["phase"] == "initializing").then_some(())
    });
    // Lists pass, watches get 429 while the watch cache initializes.
    server.get(DISPATCHER_TOKEN, ALL_IMCS).assert_status(200);
    let w = server.watch(
        DISPATCHER_TOKEN,
        &format!("{ALL_IMCS}?watch=true"),
        Duration::from_secs(5),
    );
    assert_eq!(w.status(), 429);
}

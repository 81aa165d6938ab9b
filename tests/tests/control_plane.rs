//! The cluster source: the real imc-dispatcher, started with `--kubeconfig` and no `--channels`,
//! runs the real imc-control as its child against the test API server (`tests/apiserver/`,
//! HTTPS on loopback, upstream's RBAC for the dispatcher's token). Contract §4, D14, D17.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use imc_e2e::apiserver::{ready_status, ApiServer, DISPATCHER_TOKEN, SYSTEM_NAMESPACE};
use imc_e2e::*;
use serde_json::{json, Value};

/// Upstream's Lease name (knative.dev/pkg: `{component}.{workqueue}.00-of-01`, lower-cased).
const LEASE: &str = "inmemorychannel-dispatcher.knative.dev.eventing.pkg.reconciler.inmemorychannel.dispatcher.reconciler.00-of-01";

/// How long a change in the API server may take to be served (the issue asks for 1 s; the
/// debug build and a loaded machine get some slack, and the figure is a benchmark's, not this).
const SERVED: Duration = Duration::from_secs(5);

/// A channel's spec with these `(uid, generation, subscriber URL)` subscribers.
fn spec(subs: &[(&str, i64, &str)]) -> Value {
    json!({"subscribers": subs.iter().map(|(uid, g, url)| json!({
        "uid": uid, "generation": g, "subscriberUri": url, "name": format!("sub-{uid}")
    })).collect::<Vec<_>>()})
}

fn host_of(ns: &str, name: &str) -> String {
    format!("{name}-kn-channel.{ns}.svc.cluster.local")
}

/// Creates (or replaces) a channel and marks it Ready at the generation the server gave it.
fn put_ready(api: &ApiServer, ns: &str, name: &str, spec: Value) -> i64 {
    api.admin().ready_imc(ns, name, spec, None)
}

fn start_dut(driver: Driver, api: &ApiServer, pod: &str, extra: &[&str]) -> Dut {
    Dut::builder(driver)
        .cluster(&api.kubeconfig_path(DISPATCHER_TOKEN))
        .env("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
        .env("POD_NAME", pod)
        .args(extra)
        .start()
}

/// An event to channel `ns/name`, by host or by path.
fn event(ns: &str, name: &str, by_path: bool, id: &str) -> Request {
    let e = e1().id(id);
    if by_path {
        e.target(&format!("/{ns}/{name}"))
    } else {
        e.host(&host_of(ns, name))
    }
}

/// Waits until events to `ns/name` get `status` by host and by path.
#[track_caller]
fn wait_answer(dut: &Dut, ns: &str, name: &str, status: u16) {
    eventually(SERVED, &format!("{ns}/{name} answers {status}"), || {
        let host = dut.send(&event(ns, name, false, "probe-h")).status;
        let path = dut.send(&event(ns, name, true, "probe-p")).status;
        (host == status && path == status).then_some(())
    });
}

/// The status PATCHes the server received for `ns/name`, their bodies as sent.
fn status_patches(api: &ApiServer, ns: &str, name: &str) -> Vec<Value> {
    api.requests(&[
        ("method", "PATCH"),
        ("subresource", "status"),
        ("namespace", ns),
        ("name", name),
    ])
}

fn body_of(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// A channel created Ready is served on its host and its path, and then (not before: D17) its
/// `status.subscribers` is patched with exactly upstream's JSON Patch, by imc-control's field
/// manager, with the dispatcher's token.
fn ready_channel_is_served_then_its_status_patched(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));

    wait_answer(&dut, "default", "ch1", 202);
    s1.wait_for(1, DELIVERY);
    let patches = eventually(SERVED, "a status patch", || {
        let p = status_patches(&api, "default", "ch1");
        (!p.is_empty()).then_some(p)
    });
    let p = &patches[0];
    assert_eq!(p["status"].as_u64(), Some(200), "{p:#}");
    assert_eq!(
        p["content_type"]
            .as_str()
            .map(|c| c.split(';').next().unwrap_or("")),
        Some("application/json-patch+json"),
        "{p:#}"
    );
    assert_eq!(
        body_of(p),
        json!([{"op": "add", "path": "/status/subscribers",
                "value": [{"observedGeneration": 1, "ready": "True", "uid": "u1"}]}]),
        "{p:#}"
    );
    assert!(
        p["query"].to_string().contains("imc-control"),
        "field manager in {p:#}"
    );
    let obj = api
        .admin()
        .get("inmemorychannels", "default", "ch1")
        .unwrap();
    assert_eq!(
        obj["status"]["subscribers"],
        json!([{"observedGeneration": 1, "ready": "True", "uid": "u1"}])
    );
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"imc-control"), "{managers:?}");
}

/// A subscriber added: served, the status patched again at the new generation; a change that
/// changes nothing the status reports (an annotation) sends no patch.
fn added_subscriber_is_served_and_patched_once(driver: Driver) {
    let api = ApiServer::start();
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    eventually(SERVED, "first patch", || {
        (status_patches(&api, "default", "ch1").len() == 1).then_some(())
    });

    let g = put_ready(
        &api,
        "default",
        "ch1",
        spec(&[("u1", 1, &s1.url()), ("u2", 2, &s2.url())]),
    );
    assert_eq!(g, 2);
    eventually(SERVED, "the new subscriber gets events", || {
        dut.send(&event("default", "ch1", false, "two"));
        (s2.count() > 0).then_some(())
    });
    let patches = eventually(SERVED, "second patch", || {
        let p = status_patches(&api, "default", "ch1");
        (p.len() == 2).then_some(p)
    });
    let last = body_of(&patches[1]);
    assert_eq!(
        last[0]["value"],
        json!([{"observedGeneration": 1, "ready": "True", "uid": "u1"},
               {"observedGeneration": 2, "ready": "True", "uid": "u2"}]),
        "{last:#}"
    );
    // Nothing the status reports changes: no patch at all.
    api.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch1",
        &json!({"metadata": {"annotations": {"team": "x"}}}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_patches(&api, "default", "ch1").len(),
        2,
        "no patch when nothing changes"
    );
}

/// Not Ready, or Ready with observedGeneration behind: not served (404), no status written;
/// once Ready at its generation: served and patched.
fn unready_channel_waits_until_ready(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let dut = start_dut(driver, &api, "dut-a", &[]);
    let obj = api.admin().imc(
        "default",
        "ch1",
        spec(&[("u1", 1, &s1.url())]),
        Some(
            json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]}),
        ),
    );
    let g = obj["metadata"]["generation"].as_i64().unwrap();
    let behind = api
        .admin()
        .imc("default", "ch2", spec(&[("u1", 1, &s1.url())]), None);
    let g2 = behind["metadata"]["generation"].as_i64().unwrap();
    api.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch2",
        &json!({"status": ready_status("default", "ch2", g2 - 1)}),
    );
    std::thread::sleep(Duration::from_millis(1000));
    for name in ["ch1", "ch2"] {
        assert_eq!(
            dut.send(&event("default", name, true, "early")).status,
            404,
            "{name}"
        );
        assert!(status_patches(&api, "default", name).is_empty(), "{name}");
    }
    api.admin().merge_patch(
        "inmemorychannels",
        "default",
        "ch1",
        &json!({"status": ready_status("default", "ch1", g)}),
    );
    wait_answer(&dut, "default", "ch1", 202);
    eventually(SERVED, "ch1 patched", || {
        (!status_patches(&api, "default", "ch1").is_empty()).then_some(())
    });
    assert_eq!(
        dut.send(&event("default", "ch2", true, "still")).status,
        404
    );
}

/// A channel with an invalid subscriber is rejected alone (logged with the channel and the
/// field), never reported ready; its neighbours in the same snapshot are served; once fixed, it
/// is served and patched.
fn invalid_channel_is_rejected_alone(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let mut bad = spec(&[("u1", 1, &s1.url())]);
    bad["subscribers"][0]["delivery"] =
        json!({"backoffPolicy": "linear", "backoffDelay": "garbage"});
    put_ready(&api, "default", "good", spec(&[("u1", 1, &s1.url())]));
    put_ready(&api, "default", "bad", bad);
    let dut = start_dut(driver, &api, "dut-a", &[]);
    wait_answer(&dut, "default", "good", 202);
    let line = dut
        .wait_log(0, SERVED, |l| l.contains("channel update rejected"))
        .expect("the rejection is logged");
    assert!(
        line.contains("default/bad") && line.contains("backoffDelay"),
        "{line}"
    );
    assert_eq!(dut.send(&event("default", "bad", true, "x")).status, 404);
    std::thread::sleep(Duration::from_millis(500));
    assert!(status_patches(&api, "default", "bad").is_empty());
    put_ready(&api, "default", "bad", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "bad", 202);
    eventually(SERVED, "patched once fixed", || {
        (!status_patches(&api, "default", "bad").is_empty()).then_some(())
    });
}

/// Status writes that fail (a conflict, then a server error) are retried with backoff until
/// they succeed, and logged once for the channel, not once per attempt.
fn failed_status_patch_is_retried_and_logged_once(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    api.inject(
        &apiserver::Fault::verb("patch", "inmemorychannels")
            .count(1)
            .status(409),
    );
    api.inject(
        &apiserver::Fault::verb("patch", "inmemorychannels")
            .count(2)
            .status(500),
    );
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch1", 202);
    let patches = eventually(Duration::from_secs(15), "a patch that succeeds", || {
        let p = status_patches(&api, "default", "ch1");
        p.iter()
            .any(|r| r["status"].as_u64() == Some(200))
            .then_some(p)
    });
    let codes: Vec<_> = patches.iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(
        codes,
        [Some(409), Some(500), Some(500), Some(200)],
        "{patches:#?}"
    );
    let logged = dut
        .logs()
        .iter()
        .filter(|l| l.contains("status patch failed") && l.contains("default/ch1"))
        .count();
    assert_eq!(logged, 1, "one line for the channel's failures");
    // The API server records the 200 before imc-control has read it and logged the recovery.
    eventually(Duration::from_secs(5), "the recovery line", || {
        dut.logs()
            .iter()
            .any(|l| l.contains("status written after earlier failures"))
            .then_some(())
    });
}

/// D14 from the cluster: not ready until the first snapshot is installed on every worker (the
/// API server is away at start), then ready.
fn not_ready_until_the_first_snapshot(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    api.inject(
        &apiserver::Fault::verb("list", "inmemorychannels")
            .count(3)
            .status(503),
    );
    api.inject(
        &apiserver::Fault::verb("watch", "inmemorychannels")
            .count(3)
            .status(503),
    );
    let dut = Dut::builder(driver)
        .cluster(&api.kubeconfig_path(DISPATCHER_TOKEN))
        .env("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
        .env("POD_NAME", "dut-a")
        .spawn();
    assert_eq!(dut.probe(), 503, "ready before any snapshot");
    eventually(
        Duration::from_secs(20),
        "ready once the list succeeds",
        || (dut.probe() == 204).then_some(()),
    );
    wait_answer(&dut, "default", "ch1", 202);
}

/// A deleted channel answers 404 on its host and on its path (D8).
fn deleted_channel_is_404_on_host_and_path(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch1", 202);
    api.admin().delete("inmemorychannels", "default", "ch1");
    wait_answer(&dut, "default", "ch1", 404);
}

/// A cluster dispatcher serves channels without the scope annotation (or `cluster`); one with
/// `NAMESPACE` serves only its namespace's channels annotated `namespace` (contract §4.6).
fn scope_annotation_picks_the_dispatcher(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let scoped = |ns: &str, name: &str, scope: Option<&str>| {
        put_ready(&api, ns, name, spec(&[("u1", 1, &s1.url())]));
        if let Some(s) = scope {
            api.admin().merge_patch(
                "inmemorychannels",
                ns,
                name,
                &json!({"metadata": {"annotations": {"eventing.knative.dev/scope": s}}}),
            );
        }
    };
    scoped("team-a", "plain", None);
    scoped("team-a", "cluster", Some("cluster"));
    scoped("team-a", "mine", Some("namespace"));
    scoped("team-b", "theirs", Some("namespace"));
    let cluster = start_dut(driver, &api, "dut-c", &[]);
    let namespaced = Dut::builder(driver)
        .cluster(&api.kubeconfig_path(DISPATCHER_TOKEN))
        .env("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
        .env("POD_NAME", "dut-n")
        .env("NAMESPACE", "team-a")
        .start();
    wait_answer(&cluster, "team-a", "plain", 202);
    wait_answer(&cluster, "team-a", "cluster", 202);
    wait_answer(&namespaced, "team-a", "mine", 202);
    for (dut, ns, name) in [
        (&cluster, "team-a", "mine"),
        (&cluster, "team-b", "theirs"),
        (&namespaced, "team-a", "plain"),
        (&namespaced, "team-a", "cluster"),
        (&namespaced, "team-b", "theirs"),
    ] {
        assert_eq!(
            dut.send(&event(ns, name, true, "scope")).status,
            404,
            "{ns}/{name}"
        );
    }
    // The namespaced one watched only its namespace.
    let watches = api.requests(&[("watch", "true"), ("resource", "inmemorychannels")]);
    assert!(
        watches.iter().any(|w| w["path"]
            .as_str()
            .unwrap_or("")
            .contains("/namespaces/team-a/")),
        "{watches:#?}"
    );
}

/// The API server restarting (refused, 503, 429, then a 410 for the old watch), a dropped watch
/// stream, and an expired resourceVersion: imc-control converges, and a change made meanwhile
/// is served; the dispatcher kept serving throughout.
fn control_converges_after_restarts_and_dropped_watches(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch1", 202);

    api.drop_watches();
    put_ready(&api, "default", "ch2", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch2", 202);

    api.compact();
    api.drop_watches();
    put_ready(&api, "default", "ch3", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch3", 202);

    api.restart(apiserver::Restart::default());
    assert_eq!(
        dut.send(&event("default", "ch1", true, "during")).status,
        202
    );
    assert_eq!(dut.probe(), 204, "ready while the API server is away");
    put_ready(&api, "default", "ch4", spec(&[("u1", 1, &s1.url())]));
    api.admin().delete("inmemorychannels", "default", "ch2");
    eventually(
        Duration::from_secs(30),
        "converged after the restart",
        || {
            let ch4 = dut.send(&event("default", "ch4", true, "after")).status;
            let ch2 = dut.send(&event("default", "ch2", true, "after")).status;
            (ch4 == 202 && ch2 == 404).then_some(())
        },
    );
    // One line per outage, not one per retry.
    let failing = dut
        .logs()
        .iter()
        .filter(|l| l.contains("InMemoryChannel watch failing"))
        .count();
    assert!(
        (1..=3).contains(&failing),
        "{failing} 'watch failing' lines: the outage is seen, and logged once per state change"
    );
    assert!(
        dut.logs()
            .iter()
            .any(|l| l.contains("InMemoryChannel watch recovered")),
        "recovery logged"
    );
}

/// Two dispatchers on one API server: both serve, exactly one writes status; killed, the leader's
/// Lease passes to the other within the lease duration, which then writes.
fn one_leader_writes_status_and_another_takes_over(driver: Driver) {
    let api = ApiServer::start();
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-leader-election",
        &[
            ("lease-duration", "3s"),
            ("renew-deadline", "2s"),
            ("retry-period", "500ms"),
        ],
    );
    let s1 = Sink::ok();
    let a = start_dut(driver, &api, "dut-a", &[]);
    let b = start_dut(driver, &api, "dut-b", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&a, "default", "ch1", 202);
    wait_answer(&b, "default", "ch1", 202);
    let patches = eventually(SERVED, "a status patch", || {
        let p = status_patches(&api, "default", "ch1");
        (!p.is_empty()).then_some(p)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let patches_now = status_patches(&api, "default", "ch1");
    assert_eq!(patches.len(), 1, "exactly one write: {patches_now:#?}");
    assert_eq!(patches_now.len(), 1, "exactly one write: {patches_now:#?}");
    let lease = api
        .admin()
        .get("leases", SYSTEM_NAMESPACE, LEASE)
        .expect("the Lease, under upstream's name");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let (leader, follower, next) = if holder.starts_with("dut-a_") {
        (&a, &b, "dut-b_")
    } else {
        assert!(holder.starts_with("dut-b_"), "holder {holder:?}");
        (&b, &a, "dut-a_")
    };
    for pid in leader.children("imc-control") {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    leader.signal("KILL");
    let killed = Instant::now();
    // A change only the new leader can report.
    put_ready(
        &api,
        "default",
        "ch1",
        spec(&[("u1", 1, &s1.url()), ("u2", 2, &s1.url())]),
    );
    eventually(
        Duration::from_secs(10),
        "the follower writes status",
        || (status_patches(&api, "default", "ch1").len() >= 2).then_some(()),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "took over in {:?}",
        killed.elapsed()
    );
    let lease = api.admin().get("leases", SYSTEM_NAMESPACE, LEASE).unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .starts_with(next),
        "{lease:#}"
    );
    wait_answer(follower, "default", "ch1", 202);
}

/// imc-control killed: the dispatcher keeps serving and stays ready, restarts it, and a change
/// made after that is served.
fn killed_control_is_restarted_and_serving_goes_on(driver: Driver) {
    let api = ApiServer::start();
    let s1 = Sink::ok();
    let dut = start_dut(driver, &api, "dut-a", &[]);
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch1", 202);
    let first = dut.children("imc-control");
    assert_eq!(first.len(), 1, "one imc-control child");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first[0].to_string()])
        .status();
    assert_eq!(
        dut.send(&event("default", "ch1", false, "alone")).status,
        202
    );
    assert_eq!(dut.probe(), 204);
    eventually(SERVED, "imc-control restarted", || {
        let now = dut.children("imc-control");
        (now.len() == 1 && now[0] != first[0]).then_some(())
    });
    put_ready(&api, "default", "ch2", spec(&[("u1", 1, &s1.url())]));
    wait_answer(&dut, "default", "ch2", 202);
}

fn metrics_addr(dut: &Dut) -> SocketAddr {
    eventually(SERVED, "the metrics address in the logs", || {
        dut.logs()
            .iter()
            .find(|l| l.contains("metrics listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    })
}

/// config-features changed: the dispatcher's metric shows the new value.
fn feature_flags_reach_the_dispatcher(driver: Driver) {
    let api = ApiServer::start();
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-features",
        &[
            ("transport-encryption", "disabled"),
            ("authentication-oidc", "disabled"),
        ],
    );
    let dut = start_dut(driver, &api, "dut-a", &[]);
    let scrape = || {
        let mut c = Conn::open(metrics_addr(&dut));
        let r = c.send(&Request::new("GET", "/metrics"));
        String::from_utf8_lossy(&r.body).into_owned()
    };
    eventually(SERVED, "the first value", || {
        scrape()
            .contains(r#"imc_feature_flag_info{flag="transport-encryption",value="disabled"} 1"#)
            .then_some(())
    });
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-features",
        &[
            ("transport-encryption", "strict"),
            ("authentication-oidc", "disabled"),
        ],
    );
    eventually(SERVED, "the new value", || {
        let text = scrape();
        let strict =
            text.contains(r#"imc_feature_flag_info{flag="transport-encryption",value="strict"} 1"#);
        let old = text
            .contains(r#"imc_feature_flag_info{flag="transport-encryption",value="disabled"} 1"#);
        (strict && !old).then_some(())
    });
    assert!(
        dut.wait_log(0, Duration::from_secs(1), |l| l
            .contains("feature flag set")
            && l.contains("strict"))
            .is_some(),
        "the change is logged"
    );
}

/// Contract §6.1 from the cluster: `transport-encryption: strict` in config-features closes the
/// plain port to events (probes still answered), and switching back to `disabled` reopens it,
/// without a restart; the flag overrides `--transport-encryption`.
fn cluster_transport_encryption_switches_the_plain_port(driver: Driver) {
    let api = ApiServer::start();
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-features",
        &[("transport-encryption", "strict")],
    );
    let s1 = Sink::ok();
    put_ready(&api, "default", "ch1", spec(&[("u1", 1, &s1.url())]));
    let dut = start_dut(
        driver,
        &api,
        "dut-a",
        &["--transport-encryption", "permissive"],
    );
    // Go's http.NotFound, not the empty 404 of an unknown channel.
    eventually(SERVED, "the plain port closed by strict", || {
        let r = dut.send(&event("default", "ch1", true, "strict"));
        (r.status == 404 && r.body == b"404 page not found\n").then_some(())
    });
    assert_eq!(dut.probe(), 204);
    let pid = dut.pid();
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-features",
        &[("transport-encryption", "disabled")],
    );
    wait_answer(&dut, "default", "ch1", 202);
    assert_eq!(dut.pid(), pid);
    assert!(s1.requests().iter().all(|r| r.id() != "strict"));
}

both_drivers!(
    cluster_transport_encryption_switches_the_plain_port,
    ready_channel_is_served_then_its_status_patched,
    added_subscriber_is_served_and_patched_once,
    unready_channel_waits_until_ready,
    invalid_channel_is_rejected_alone,
    failed_status_patch_is_retried_and_logged_once,
    not_ready_until_the_first_snapshot,
    deleted_channel_is_404_on_host_and_path,
    scope_annotation_picks_the_dispatcher,
    control_converges_after_restarts_and_dropped_watches,
    one_leader_writes_status_and_another_takes_over,
    killed_control_is_restarted_and_serving_goes_on,
    feature_flags_reach_the_dispatcher,
);

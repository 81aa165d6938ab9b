//! The cluster's TLS inputs, through imc-control (contract §1.1, §6.1, §6.5): the 8443
//! certificate from the Secret `imc-dispatcher-server-tls` in the system namespace, rotated by
//! updating the Secret and gone with it; and the ConfigMaps labelled
//! `networking.knative.dev/trust-bundle: "true"` trusted for https subscribers. The real
//! dispatcher and imc-control against the test API server (upstream's RBAC for the
//! dispatcher's token: secrets and configmaps readable in the system namespace only).

use std::time::Duration;

use imc_e2e::apiserver::{ApiServer, DISPATCHER_TOKEN, SYSTEM_NAMESPACE};
use imc_e2e::tls::{client_config, tls_send, Leaf, TestCa, TlsSink};
use imc_e2e::*;
use serde_json::{json, Value};

/// How long a change in the API server may take to reach the dispatcher.
const SEEN: Duration = Duration::from_secs(10);

fn start_dut(driver: Driver, api: &ApiServer) -> Dut {
    Dut::builder(driver)
        .cluster(&api.kubeconfig_path(DISPATCHER_TOKEN))
        .env("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
        .env("POD_NAME", "dut-tls")
        .start()
}

/// A channel `default/<name>` created Ready with one subscriber, as the imc-controller leaves it.
fn ready_channel(api: &ApiServer, name: &str, subscriber: &str) {
    let spec =
        json!({"subscribers": [{"uid": "u1", "generation": 1, "subscriberUri": subscriber}]});
    api.admin().ready_imc("default", name, spec, None);
}

fn server_secret(leaf: &Leaf) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": SYSTEM_NAMESPACE, "name": "imc-dispatcher-server-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ""},
    })
}

fn by_path(name: &str, id: &str) -> Request {
    Request::post(&format!("/default/{name}"))
        .host("imc-dispatcher.knative-eventing.svc.cluster.local")
        .header("Ce-Specversion", "1.0")
        .header("Ce-Id", id)
        .header("Ce-Source", "/e2e/cluster-tls")
        .header("Ce-Type", "dev.imc-rs.e2e")
        .header("Content-Type", "application/json")
        .body(r#"{"hello":"tls"}"#)
}

/// The Secret's certificate is served on 8443 (permissive mode from config-features); updating
/// the Secret rotates it for new connections without a restart; deleting it leaves none, and
/// handshakes fail.
fn server_certificate_comes_from_the_secret(driver: Driver) {
    let ca = TestCa::new("cluster ingress CA");
    let first = ca.leaf(&["localhost"], 30, 0x5151);
    let second = ca.leaf(&["localhost"], 30, 0x5252);
    let api = ApiServer::start();
    api.admin().put(&server_secret(&first));
    api.admin().configmap(
        SYSTEM_NAMESPACE,
        "config-features",
        &[("transport-encryption", "permissive")],
    );
    let sink = Sink::ok();
    ready_channel(&api, "ch1", &sink.url());
    let dut = start_dut(driver, &api);
    let tls = client_config(&ca.pem(), false);
    let answer = eventually(SEEN, "8443 serves the Secret's certificate", || {
        tls_send(
            dut.tls_addr(),
            tls.clone(),
            "localhost",
            &by_path("ch1", "t1"),
        )
        .ok()
    });
    assert_eq!(answer.status, 202);
    assert_eq!(
        answer.serial,
        first.serial(),
        "the first Secret's certificate"
    );
    assert_eq!(sink.wait_for(1, SEEN).len(), 1);

    api.admin().put(&server_secret(&second));
    eventually(
        SEEN,
        "new connections get the updated Secret's certificate",
        || {
            let a = tls_send(dut.tls_addr(), tls.clone(), "localhost", &kube_probe()).ok()?;
            (a.serial == second.serial()).then_some(())
        },
    );
    let a = tls_send(
        dut.tls_addr(),
        tls.clone(),
        "localhost",
        &by_path("ch1", "t2"),
    )
    .unwrap();
    assert_eq!((a.status, a.serial), (202, second.serial()));

    api.admin()
        .delete("secrets", SYSTEM_NAMESPACE, "imc-dispatcher-server-tls");
    eventually(SEEN, "no certificate once the Secret is gone", || {
        tls_send(dut.tls_addr(), tls.clone(), "localhost", &kube_probe())
            .is_err()
            .then_some(())
    });
    assert!(dut
        .logs()
        .iter()
        .any(|l| l.contains("server certificate Secret is gone")));
}

/// §6.5: an https subscriber whose CA is in no trust store fails (500); once a trust-bundle
/// ConfigMap in the system namespace holds the CA, the same channel delivers, without a
/// restart and without a change to the channel. A ConfigMap without the label is not trusted.
fn trust_bundle_configmaps_are_trusted(driver: Driver) {
    let ca = TestCa::new("cluster bundle CA");
    let sink = TlsSink::start(&ca.leaf(&["localhost"], 30, 7));
    let api = ApiServer::start();
    let unlabelled = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": SYSTEM_NAMESPACE, "name": "not-a-bundle"},
        "data": {"ca.crt": ca.pem()},
    });
    api.admin().put(&unlabelled);
    ready_channel(&api, "secure", &sink.url_with_host("localhost"));
    let dut = start_dut(driver, &api);
    let send = |id: &str| {
        dut.send(
            &Request::post("/")
                .host("secure-kn-channel.default.svc.cluster.local")
                .header("Ce-Specversion", "1.0")
                .header("Ce-Id", id)
                .header("Ce-Source", "/e2e/cluster-tls")
                .header("Ce-Type", "dev.imc-rs.e2e")
                .body("{}"),
        )
        .status
    };
    eventually(
        SEEN,
        "the channel is served (and fails: unknown issuer)",
        || (send("b0") == 500).then_some(()),
    );
    assert!(
        sink.requests().is_empty(),
        "nothing delivered without the CA"
    );

    let bundle = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "namespace": SYSTEM_NAMESPACE, "name": "my-bundle",
            "labels": {"networking.knative.dev/trust-bundle": "true"},
        },
        "data": {"ca.crt": ca.pem()},
    });
    api.admin().put(&bundle);
    eventually(SEEN, "delivered once the bundle trusts the CA", || {
        (send("b1") == 202).then_some(())
    });
    assert!(sink
        .requests()
        .iter()
        .any(|r| r.header("ce-id") == Some("b1")));
    assert!(dut
        .logs()
        .iter()
        .any(|l| l.contains("trust bundle loaded for https targets") && l.contains("my-bundle")));

    api.admin()
        .delete("configmaps", SYSTEM_NAMESPACE, "my-bundle");
    eventually(SEEN, "untrusted again once the bundle is gone", || {
        (send("b2") == 500).then_some(())
    });
}

both_drivers!(
    server_certificate_comes_from_the_secret,
    trust_bundle_configmaps_are_trusted,
);

//! The deployment manifests under `config/` (issue 13, contract §1.1-1.6 and §4.6), rendered with
//! `kubectl kustomize` and checked field by field against upstream's values, so that a change
//! which breaks drop-in compatibility with upstream's `imc-dispatcher` fails here.
//!
//! - `config/dispatcher`: the full set; every object upstream ships for the dispatcher, with
//!   upstream's names, labels, ports, probes, env, securityContext and RBAC, and imc-rs's image.
//! - `config/overlays/swap-image`: rendered over the full set (it must change nothing), and over
//!   an input shaped like upstream's released `in-memory-channel.yaml` (it must change the
//!   dispatcher container's image and nothing else).
//! - `config/examples/namespace-dispatcher.yaml`: what upstream's imc-controller creates for a
//!   namespace-scoped channel (§4.6); read directly, no kubectl needed.
//!
//! Needs `kubectl` with its built-in kustomize (v1.32 / kustomize v5 here) on `PATH`, or `KUBECTL`
//! naming one. Without it the kustomize tests fail under CI (`CI=true`) and are skipped with a
//! loud message otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The image both renders must give the dispatcher container.
const IMAGE: &str = "imc-rs/imc-dispatcher:latest";

/// The dispatcher image as upstream's knative-v1.22.0 release names it.
const UPSTREAM_IMAGE: &str = "gcr.io/knative-releases/knative.dev/eventing/cmd/in_memory/channel_dispatcher@sha256:69ee316c3d157a3047d150bae4b391be740e985609acde18606e69357f2103c3";

/// The imc-controller's image in the same release (it must not be touched by the overlay).
const UPSTREAM_CONTROLLER_IMAGE: &str = "gcr.io/knative-releases/knative.dev/eventing/cmd/in_memory/channel_controller@sha256:4d2884c1a3567ee5360098db889da01d228a5803c959cce6f0fde427bbee87a8";

const SYSTEM_NS: &str = "knative-eventing";

/// The kubectl to run, or `None` (after a loud message) when there is none outside CI.
fn kubectl() -> Option<String> {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let why = match Command::new(&bin).args(["version", "--client"]).output() {
        Ok(out) if out.status.success() => return Some(bin),
        Ok(out) => format!(
            "`{bin} version --client` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("`{bin}` could not be run: {e}"),
    };
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!(
            "kubectl is required for the manifest render tests under CI: {why}. Install kubectl \
             (v1.32, with kustomize v5) or set KUBECTL to its path."
        );
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: manifest render test, no kubectl: {why}.\n\
         !!!!!!!! Install kubectl (v1.32, kustomize v5) or set KUBECTL; under CI=true this fails.\n"
    );
    None
}

/// `kubectl kustomize <dir>`, parsed into its documents.
fn render(kubectl: &str, dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).expect("UTF-8 output"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("expected value is YAML")
}

fn to_yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).expect("serialize YAML")
}

/// The value at `path` (mapping keys, or indices into sequences), if there is one.
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| match v {
        Value::Sequence(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => v.get(*key),
    })
}

#[track_caller]
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    get(v, path).unwrap_or_else(|| panic!("no {path:?} in:\n{}", to_yaml(v)))
}

#[track_caller]
fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

/// `path` in `v` equals the YAML `want`, compared as values (order of mapping keys aside).
#[track_caller]
fn assert_field(v: &Value, path: &[&str], want: &str) {
    let got = at(v, path);
    let want = yaml(want);
    assert!(
        *got == want,
        "{path:?}\n--- want:\n{}--- got:\n{}",
        to_yaml(&want),
        to_yaml(got)
    );
}

#[track_caller]
fn assert_absent(v: &Value, path: &[&str]) {
    if let Some(got) = get(v, path) {
        panic!("{path:?} should be absent, is:\n{}", to_yaml(got));
    }
}

/// (kind, namespace, name) of an object.
type Key = (String, String, String);

fn key(doc: &Value) -> Key {
    let s = |path: &[&str]| {
        get(doc, path)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        s(&["kind"]),
        s(&["metadata", "namespace"]),
        s(&["metadata", "name"]),
    )
}

fn by_key(docs: &[Value]) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for doc in docs {
        let k = key(doc);
        assert!(map.insert(k.clone(), doc.clone()).is_none(), "{k:?} twice");
    }
    map
}

#[track_caller]
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| key(d).0 == kind && key(d).2 == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn full_set(kubectl: &str) -> Vec<Value> {
    render(kubectl, &imc_e2e::repo().join("config/dispatcher"))
}

fn overlay_dir() -> PathBuf {
    imc_e2e::repo().join("config/overlays/swap-image")
}

/// The dispatcher container of the imc-dispatcher Deployment.
fn dispatcher_container(docs: &[Value]) -> &Value {
    let containers = at(
        object(docs, "Deployment", "imc-dispatcher"),
        &["spec", "template", "spec", "containers"],
    );
    let containers = containers.as_sequence().expect("containers is a list");
    assert_eq!(containers.len(), 1, "one container, as upstream's");
    &containers[0]
}

/// `docs` with the dispatcher container's image replaced by `image`.
fn with_dispatcher_image(docs: &[Value], image: &str) -> Vec<Value> {
    docs.iter()
        .map(|doc| {
            let mut doc = doc.clone();
            if key(&doc).0 == "Deployment" && key(&doc).2 == "imc-dispatcher" {
                doc["spec"]["template"]["spec"]["containers"][0]["image"] = image.into();
            }
            doc
        })
        .collect()
}

/// Every (apiGroup, resource, verb) a Role or ClusterRole grants; a rule with anything else than
/// those three lists (resourceNames, nonResourceURLs) fails.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let list = |rule: &Value, k: &str| -> Vec<String> {
        at(rule, &[k])
            .as_sequence()
            .unwrap_or_else(|| panic!("{k} is a list"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in at(role, &["rules"]).as_sequence().expect("rules is a list") {
        let keys: BTreeSet<_> = rule
            .as_mapping()
            .expect("a rule is a mapping")
            .keys()
            .map(|k| k.as_str().expect("string key").to_string())
            .collect();
        assert_eq!(
            keys,
            ["apiGroups", "resources", "verbs"].map(String::from).into(),
            "rule fields"
        );
        for g in list(rule, "apiGroups") {
            for r in list(rule, "resources") {
                for v in list(rule, "verbs") {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn triples(rows: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in rows {
        for r in *resources {
            for v in *verbs {
                out.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// The labels the Service selects on and the Deployment's selector matches (§1.1).
const SELECTOR: &str = r#"
messaging.knative.dev/channel: in-memory-channel
messaging.knative.dev/role: dispatcher
"#;

#[test]
fn full_set_holds_upstreams_dispatcher_objects_and_nothing_else() {
    let Some(k) = kubectl() else { return };
    let docs = full_set(&k);
    let got: Vec<Key> = by_key(&docs).into_keys().collect();
    let ns = SYSTEM_NS;
    let want: Vec<Key> = [
        ("ClusterRole", "", "imc-dispatcher"),
        ("ClusterRoleBinding", "", "imc-dispatcher"),
        ("Deployment", ns, "imc-dispatcher"),
        ("Role", ns, "imc-dispatcher-tls-role"),
        ("RoleBinding", ns, "imc-dispatcher-tls-role-binding"),
        ("Service", ns, "imc-dispatcher"),
        ("ServiceAccount", ns, "imc-dispatcher"),
    ]
    .iter()
    .map(|(k, n, m)| (k.to_string(), n.to_string(), m.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn deployment_is_upstreams_with_the_imc_rs_image() {
    let Some(k) = kubectl() else { return };
    let docs = full_set(&k);
    let d = object(&docs, "Deployment", "imc-dispatcher");
    assert_eq!(str_at(d, &["apiVersion"]), "apps/v1");
    assert_eq!(str_at(d, &["metadata", "namespace"]), SYSTEM_NS);
    for (label, value) in [
        ("knative.dev/high-availability", "true"),
        ("bindings.knative.dev/exclude", "true"),
        ("app.kubernetes.io/component", "imc-dispatcher"),
        ("app.kubernetes.io/name", "knative-eventing"),
    ] {
        assert_eq!(str_at(d, &["metadata", "labels", label]), value, "{label}");
    }
    // §1.1: no replicas (one) and no resources in upstream's static YAML.
    assert_absent(d, &["spec", "replicas"]);
    assert_field(
        d,
        &["spec", "selector"],
        &format!("matchLabels: {{{}}}", flow(SELECTOR)),
    );

    let pod = at(d, &["spec", "template"]);
    let labels = at(pod, &["metadata", "labels"]);
    for (label, value) in yaml(SELECTOR).as_mapping().expect("mapping") {
        assert_eq!(labels.get(label), Some(value), "pod label {label:?}");
    }
    assert_eq!(
        str_at(labels, &["app.kubernetes.io/component"]),
        "imc-dispatcher"
    );
    assert_eq!(
        str_at(pod, &["spec", "serviceAccountName"]),
        "imc-dispatcher"
    );
    assert_field(pod, &["spec", "enableServiceLinks"], "false");
    assert_field(
        pod,
        &["spec", "affinity"],
        &format!(
            r#"
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {{{}}}
"#,
            flow(SELECTOR)
        ),
    );
    // Upstream's pod spec sets nothing else: in particular no terminationGracePeriodSeconds, so
    // the kubelet waits the default 30 s, more than imc-rs's 25 s drain (D13).
    let pod_fields: BTreeSet<_> = keys(at(pod, &["spec"]));
    assert_eq!(
        pod_fields,
        [
            "affinity",
            "containers",
            "enableServiceLinks",
            "serviceAccountName"
        ]
        .map(String::from)
        .into()
    );

    let c = dispatcher_container(&docs);
    assert_eq!(str_at(c, &["name"]), "dispatcher");
    assert_eq!(str_at(c, &["image"]), IMAGE);
    // The image's entry point runs as upstream's does: no command, no args (§1.2).
    let container_fields: BTreeSet<_> = keys(c);
    assert_eq!(
        container_fields,
        [
            "env",
            "image",
            "livenessProbe",
            "name",
            "ports",
            "readinessProbe",
            "securityContext"
        ]
        .map(String::from)
        .into()
    );
    // §1.4: both probes GET /healthz on 8080 every 2 s, 1 s timeout, 3 failures; liveness after 5 s.
    assert_field(
        c,
        &["readinessProbe"],
        r#"
httpGet: {path: /healthz, port: 8080, scheme: HTTP}
periodSeconds: 2
timeoutSeconds: 1
failureThreshold: 3
successThreshold: 1
"#,
    );
    assert_field(
        c,
        &["livenessProbe"],
        r#"
httpGet: {path: /healthz, port: 8080, scheme: HTTP}
periodSeconds: 2
timeoutSeconds: 1
failureThreshold: 3
successThreshold: 1
initialDelaySeconds: 5
"#,
    );
    // §1.2, in upstream's order.
    assert_field(
        c,
        &["env"],
        r#"
- {name: CONFIG_LOGGING_NAME, value: config-logging}
- {name: CONFIG_OBSERVABILITY_NAME, value: config-observability}
- {name: METRICS_DOMAIN, value: knative.dev/inmemorychannel-dispatcher}
- {name: SYSTEM_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
- {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: CONTAINER_NAME, value: dispatcher}
- {name: MAX_IDLE_CONNS, value: "1000"}
- {name: MAX_IDLE_CONNS_PER_HOST, value: "1000"}
"#,
    );
    // §1.3.
    assert_field(
        c,
        &["ports"],
        r#"
- {containerPort: 8080, name: http, protocol: TCP}
- {containerPort: 8443, name: https, protocol: TCP}
- {containerPort: 9090, name: metrics}
"#,
    );
    // §1.1: non-root, read-only root FS, no privilege escalation, every capability dropped,
    // RuntimeDefault seccomp (which refuses io_uring_setup in current runtimes).
    assert_field(
        c,
        &["securityContext"],
        r#"
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
"#,
    );
}

#[test]
fn service_selects_the_dispatcher_pods_on_upstreams_ports() {
    let Some(k) = kubectl() else { return };
    let docs = full_set(&k);
    let s = object(&docs, "Service", "imc-dispatcher");
    assert_eq!(str_at(s, &["metadata", "namespace"]), SYSTEM_NS);
    // A ClusterIP Service (the channel Services are ExternalNames pointing at its DNS name, §1.5).
    assert_absent(s, &["spec", "type"]);
    assert_field(s, &["spec", "selector"], SELECTOR);
    assert_field(
        s,
        &["spec", "ports"],
        r#"
- {name: http-dispatcher, port: 80, protocol: TCP, targetPort: 8080}
- {name: https-dispatcher, port: 443, protocol: TCP, targetPort: 8443}
- {name: http-metrics, port: 9090, targetPort: 9090}
"#,
    );

    // The selector picks the Deployment's pods, and every target port is a container port.
    let d = object(&docs, "Deployment", "imc-dispatcher");
    let pod_labels = at(d, &["spec", "template", "metadata", "labels"]);
    for (label, value) in at(s, &["spec", "selector"]).as_mapping().expect("mapping") {
        assert_eq!(pod_labels.get(label), Some(value), "pod label {label:?}");
    }
    assert_eq!(
        at(s, &["spec", "selector"]),
        at(d, &["spec", "selector", "matchLabels"])
    );
    let container_ports: BTreeSet<u64> = at(dispatcher_container(&docs), &["ports"])
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| at(p, &["containerPort"]).as_u64().expect("a port number"))
        .collect();
    for port in at(s, &["spec", "ports"]).as_sequence().expect("ports") {
        let target = at(port, &["targetPort"]).as_u64().expect("a port number");
        assert!(container_ports.contains(&target), "targetPort {target}");
    }
}

#[test]
fn rbac_grants_upstreams_verbs_to_the_dispatchers_service_account() {
    let Some(k) = kubectl() else { return };
    let docs = full_set(&k);
    let ns = SYSTEM_NS;
    let sa = object(&docs, "ServiceAccount", "imc-dispatcher");
    assert_eq!(str_at(sa, &["metadata", "namespace"]), ns);
    let d = object(&docs, "Deployment", "imc-dispatcher");
    assert_eq!(
        str_at(d, &["spec", "template", "spec", "serviceAccountName"]),
        str_at(sa, &["metadata", "name"])
    );

    // §1.6, the ClusterRole, row by row.
    let msg = "messaging.knative.dev";
    let want = triples(&[
        (
            msg,
            &["inmemorychannels", "inmemorychannels/status"],
            &["get", "list", "watch"],
        ),
        (
            msg,
            &[
                "inmemorychannels",
                "inmemorychannels/status",
                "inmemorychannels/finalizers",
            ],
            &["patch"],
        ),
        ("", &["configmaps"], &["get", "list", "watch"]),
        ("", &["events"], &["create", "patch"]),
        ("", &["serviceaccounts/token"], &["create"]),
        (
            "coordination.k8s.io",
            &["leases"],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        (
            "eventing.knative.dev",
            &["eventtypes", "eventpolicies"],
            &["get", "list", "watch"],
        ),
        ("eventing.knative.dev", &["eventtypes"], &["create"]),
    ]);
    let cr = object(&docs, "ClusterRole", "imc-dispatcher");
    assert_eq!(grants(cr), want, "ClusterRole imc-dispatcher");
    let crb = object(&docs, "ClusterRoleBinding", "imc-dispatcher");
    assert_field(
        crb,
        &["roleRef"],
        "{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imc-dispatcher}",
    );
    assert_field(
        crb,
        &["subjects"],
        "[{kind: ServiceAccount, name: imc-dispatcher, namespace: knative-eventing}]",
    );

    // The TLS Role: read Secrets (imc-dispatcher-server-tls) in the system namespace only.
    let role = object(&docs, "Role", "imc-dispatcher-tls-role");
    assert_eq!(str_at(role, &["metadata", "namespace"]), ns);
    assert_eq!(
        grants(role),
        triples(&[("", &["secrets"], &["get", "list", "watch"])])
    );
    let rb = object(&docs, "RoleBinding", "imc-dispatcher-tls-role-binding");
    assert_eq!(str_at(rb, &["metadata", "namespace"]), ns);
    assert_field(
        rb,
        &["roleRef"],
        "{apiGroup: rbac.authorization.k8s.io, kind: Role, name: imc-dispatcher-tls-role}",
    );
    let subjects = at(rb, &["subjects"]).as_sequence().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(str_at(&subjects[0], &["kind"]), "ServiceAccount");
    assert_eq!(str_at(&subjects[0], &["name"]), "imc-dispatcher");
    // Upstream leaves the subject's namespace out: it is the RoleBinding's own.
    let subject_ns = get(&subjects[0], &["namespace"]).and_then(Value::as_str);
    assert!(
        subject_ns.is_none() || subject_ns == Some(ns),
        "{subject_ns:?}"
    );
}

#[test]
fn swap_image_over_the_full_set_changes_nothing_but_the_image() {
    let Some(k) = kubectl() else { return };
    let base = full_set(&k);
    let overlay = render(&k, &overlay_dir());
    assert_eq!(str_at(dispatcher_container(&overlay), &["image"]), IMAGE);
    assert_eq!(
        by_key(&with_dispatcher_image(&overlay, "-")),
        by_key(&with_dispatcher_image(&base, "-")),
        "the overlay's render, image aside, is the full set's"
    );
}

#[test]
fn swap_image_over_upstreams_release_rewrites_only_the_dispatcher_image() {
    let Some(k) = kubectl() else { return };

    // The overlay may do nothing but `images:` (no patches, no name or label transformers).
    let text = fs::read_to_string(overlay_dir().join("kustomization.yaml")).expect("overlay");
    let mut kustomization = yaml(&text);
    assert_eq!(
        keys(&kustomization),
        ["apiVersion", "images", "kind", "resources"]
            .map(String::from)
            .into()
    );
    let images = at(&kustomization, &["images"])
        .as_sequence()
        .expect("images");
    assert_eq!(images.len(), 1, "one image rewritten");

    // Upstream's release, as far as the overlay can see it: the dispatcher objects with
    // upstream's digest-pinned image, and the imc-controller, whose DISPATCHER_IMAGE env names
    // the same image (an env value, which `images:` must leave alone).
    let controller = yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: imc-controller, namespace: knative-eventing}}
spec:
  selector:
    matchLabels: {{messaging.knative.dev/channel: in-memory-channel, messaging.knative.dev/role: controller}}
  template:
    metadata:
      labels: {{messaging.knative.dev/channel: in-memory-channel, messaging.knative.dev/role: controller}}
    spec:
      containers:
        - name: controller
          image: {UPSTREAM_CONTROLLER_IMAGE}
          env:
            - {{name: DISPATCHER_IMAGE, value: "{UPSTREAM_IMAGE}"}}
"#
    ));
    let mut upstream = with_dispatcher_image(&full_set(&k), UPSTREAM_IMAGE);
    upstream.push(controller);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("swap-image-over-upstream");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    let release: String = upstream
        .iter()
        .map(|d| format!("---\n{}", to_yaml(d)))
        .collect();
    fs::write(dir.join("in-memory-channel.yaml"), release).expect("write input");
    kustomization["resources"] = yaml("[in-memory-channel.yaml]");
    fs::write(dir.join("kustomization.yaml"), to_yaml(&kustomization)).expect("write overlay");

    let got = render(&k, &dir);
    assert_eq!(str_at(dispatcher_container(&got), &["image"]), IMAGE);
    assert_eq!(
        by_key(&got),
        by_key(&with_dispatcher_image(&upstream, IMAGE)),
        "everything but the dispatcher container's image is upstream's"
    );
}

/// The one env entry named `name`.
#[track_caller]
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    let found: Vec<_> = at(container, &["env"])
        .as_sequence()
        .expect("env")
        .iter()
        .filter(|e| get(e, &["name"]).and_then(Value::as_str) == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "exactly one env {name}");
    found[0]
}

#[test]
fn namespace_dispatcher_example_is_what_upstreams_controller_creates() {
    let path = imc_e2e::repo().join("config/examples/namespace-dispatcher.yaml");
    let docs = documents(&fs::read_to_string(&path).expect("the example"));
    let d = object(&docs, "Deployment", "imc-dispatcher");
    let ns = str_at(d, &["metadata", "namespace"]);
    assert_ne!(
        ns, SYSTEM_NS,
        "a namespace-scoped dispatcher runs in the channel's namespace"
    );
    assert_field(d, &["spec", "replicas"], "1");
    assert_field(d, &["spec", "selector", "matchLabels"], SELECTOR);
    assert_field(d, &["spec", "template", "metadata", "labels"], SELECTOR);
    let pod = at(d, &["spec", "template", "spec"]);
    assert_eq!(str_at(pod, &["serviceAccountName"]), "imc-dispatcher");

    let c = dispatcher_container(&docs);
    assert_eq!(str_at(c, &["name"]), "dispatcher");
    assert_eq!(str_at(c, &["image"]), IMAGE);
    // §4.6: no probes and no 8443 port.
    assert_absent(c, &["readinessProbe"]);
    assert_absent(c, &["livenessProbe"]);
    assert_field(c, &["ports"], "[{name: metrics, containerPort: 9090}]");
    // §4.6: the env (order aside); MAX_IDLE_CONNS_PER_HOST is config-imc-event-dispatcher's 100.
    let want = [
        (
            "SYSTEM_NAMESPACE",
            "{name: SYSTEM_NAMESPACE, value: knative-eventing}",
        ),
        (
            "NAMESPACE",
            "{name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}",
        ),
        (
            "POD_NAME",
            "{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}",
        ),
        (
            "CONTAINER_NAME",
            "{name: CONTAINER_NAME, value: dispatcher}",
        ),
        ("MAX_IDLE_CONNS", r#"{name: MAX_IDLE_CONNS, value: "1000"}"#),
        (
            "MAX_IDLE_CONNS_PER_HOST",
            r#"{name: MAX_IDLE_CONNS_PER_HOST, value: "100"}"#,
        ),
        (
            "CONFIG_LOGGING_NAME",
            "{name: CONFIG_LOGGING_NAME, value: config-logging}",
        ),
        (
            "CONFIG_OBSERVABILITY_NAME",
            "{name: CONFIG_OBSERVABILITY_NAME, value: config-observability}",
        ),
        (
            "METRICS_DOMAIN",
            "{name: METRICS_DOMAIN, value: knative.dev/inmemorychannel-dispatcher}",
        ),
    ];
    assert_eq!(
        at(c, &["env"]).as_sequence().expect("env").len(),
        want.len(),
        "env entries"
    );
    for (name, entry) in want {
        assert_eq!(*env(c, name), yaml(entry), "env {name}");
    }
    // §1.1: run as uid/gid 1000 (not the image's user), with the controller's resources.
    assert_field(
        c,
        &["securityContext"],
        "{runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}",
    );
    assert_field(
        c,
        &["resources"],
        "{requests: {cpu: 125m, memory: 64Mi}, limits: {cpu: 2200m, memory: 2048Mi}}",
    );

    // §1.1: its Service exposes only 80 -> 8080, selecting the same pods.
    let s = object(&docs, "Service", "imc-dispatcher");
    assert_eq!(str_at(s, &["metadata", "namespace"]), ns);
    assert_field(s, &["spec", "selector"], SELECTOR);
    assert_field(
        s,
        &["spec", "ports"],
        "[{protocol: TCP, port: 80, targetPort: 8080}]",
    );
}

/// A block mapping's YAML as flow entries (`a: b, c: d`), to embed in a flow mapping.
fn flow(block: &str) -> String {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .expect("a mapping")
        .keys()
        .map(|k| k.as_str().expect("string key").to_string())
        .collect()
}

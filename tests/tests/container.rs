//! The drop-in image in a real container runtime (issue 13; contract §1.1-1.4, §4.6, D13).
//!
//! Each test builds (once per process) the image from the Dockerfile's final stage over the
//! binaries `cargo test` built, and runs it the way a kubelet runs upstream's Deployment: the
//! pod's env and securityContext are read from the rendered manifests (`kubectl kustomize
//! config/dispatcher`, and `config/examples/namespace-dispatcher.yaml`) and turned into `docker
//! run` flags, no arguments are passed, the in-cluster service account is mounted at its usual
//! path, and the cluster's resolver settings (`search ... svc.cluster.local`, `ndots:5`) are
//! given to the container's `/etc/resolv.conf`. Subscribers are `imc-loadgen sink` containers
//! addressed by DNS names on a user-defined network. The Kubernetes API is the test API server
//! (`tests/apiserver/`) bound to that network's gateway.
//!
//! Without a Docker daemon these tests fail under CI and are skipped loudly elsewhere.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use imc_e2e::apiserver::{ApiServer, DISPATCHER_TOKEN, SYSTEM_NAMESPACE};
use imc_e2e::container::*;
use imc_e2e::eventually;
use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;

/// The domain of the cluster's Services, as a pod's resolv.conf searches it.
const SEARCH: &[&str] = &[
    "knative-eventing.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];

/// The sink's DNS name on the network: a Service's full name. Subscribers use the short form
/// `event-display.default`, which resolves only through the `svc.cluster.local` search domain.
const SINK_FQDN: &str = "event-display.default.svc.cluster.local";
const SINK_SHORT: &str = "event-display.default";

/// How long the image may take from `docker run` to a ready probe.
const READY_WITHIN: Duration = Duration::from_secs(20);

fn docs(text: &str) -> Vec<Yaml> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Yaml::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The `dispatcher` container of the Deployment `imc-dispatcher` in `objects`.
fn dispatcher_container(objects: &[Yaml]) -> Yaml {
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "imc-dispatcher")
        .expect("a Deployment imc-dispatcher");
    deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "dispatcher")
        .expect("a container named dispatcher")
        .clone()
}

/// upstream's Deployment as this repository ships it (`config/dispatcher`), rendered.
fn upstream_deployment_container() -> Yaml {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("kustomize")
        .arg(imc_e2e::repo().join("config/dispatcher"))
        .output()
        .expect("run kubectl kustomize (kubectl v1.32 is needed; see tests/manifests.rs)");
    assert!(
        out.status.success(),
        "kubectl kustomize config/dispatcher: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dispatcher_container(&docs(&String::from_utf8_lossy(&out.stdout)))
}

/// The namespace-scoped Deployment upstream's imc-controller creates (§4.6), as the example
/// under `config/examples` writes it.
fn namespace_deployment_container() -> Yaml {
    let path = imc_e2e::repo().join("config/examples/namespace-dispatcher.yaml");
    let text = std::fs::read_to_string(&path).expect("read namespace-dispatcher.yaml");
    dispatcher_container(&docs(&text))
}

/// What the kubelet would give this container, as `docker run` flags: its env (fieldRefs
/// resolved for a pod `pod` in `namespace`), its securityContext, its resource limits.
fn pod_flags(container: &Yaml, namespace: &str, pod: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for e in container["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().expect("env name");
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_string(),
                Some("metadata.name") => pod.to_string(),
                other => panic!("env {name}: a source the test cannot resolve: {other:?}"),
            }
        };
        flags.extend(["-e".to_string(), format!("{name}={value}")]);
    }
    let sc = &container["securityContext"];
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        flags.push("--read-only".into());
    }
    if let Some(drop) = sc["capabilities"]["drop"].as_sequence() {
        for cap in drop {
            flags.extend([
                "--cap-drop".into(),
                cap.as_str().expect("a capability").into(),
            ]);
        }
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        flags.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    // runAsNonRoot with no uid: the kubelet runs the image's numeric user (65532).
    let user = match (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => u.to_string(),
        _ => "65532".to_string(),
    };
    flags.extend(["--user".into(), user]);
    let limits = &container["resources"]["limits"];
    if let Some(cpu) = limits["cpu"].as_str() {
        let cores = match cpu.strip_suffix('m') {
            Some(m) => m.parse::<f64>().expect("millicores") / 1000.0,
            None => cpu.parse().expect("cores"),
        };
        // Docker refuses a CPU quota above the machine's cores (the kubelet would not); the
        // limit is clamped to what this machine has.
        let here = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        flags.extend(["--cpus".into(), format!("{}", cores.min(here))]);
    }
    if let Some(mem) = limits["memory"].as_str() {
        let mib = mem.strip_suffix("Mi").expect("a memory limit in Mi");
        flags.extend(["--memory".into(), format!("{mib}m")]);
    }
    flags
}

/// The cluster resolver settings on the network `net` (Docker writes them into the
/// container's /etc/resolv.conf, with its embedded DNS server as the nameserver).
fn dns_flags(net: &Network) -> Vec<String> {
    let mut flags = vec!["--network".to_string(), net.name.clone()];
    for s in SEARCH {
        flags.extend(["--dns-search".to_string(), s.to_string()]);
    }
    flags.extend(["--dns-opt".to_string(), "ndots:5".to_string()]);
    flags
}

/// A seccomp profile refusing io_uring the way Docker 25+ and containerd's RuntimeDefault do.
fn no_io_uring(dir: &Path) -> std::path::PathBuf {
    seccomp_refusing(
        dir,
        "runtime-default-no-io-uring.json",
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
        1,
    )
}

/// What a pod in the cluster has besides its Deployment's fields: the cluster resolver on
/// `net`, the service account mounted at its usual path (for `namespace`), the API server's
/// address in the kubelet's variables, and `profile` as its seccomp profile.
fn in_cluster(
    net: &Network,
    api: &ApiServer,
    dir: &Path,
    namespace: &str,
    profile: &Path,
) -> Vec<String> {
    let sa = service_account(dir, api, namespace);
    let mut flags = dns_flags(net);
    flags.extend([
        "--security-opt".to_string(),
        format!("seccomp={}", profile.display()),
        "-v".to_string(),
        format!(
            "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            sa.display()
        ),
        "-e".to_string(),
        format!("KUBERNETES_SERVICE_HOST={}", api.addr().ip()),
        "-e".to_string(),
        format!("KUBERNETES_SERVICE_PORT={}", api.addr().port()),
    ]);
    flags
}

/// Upstream's restrictions as user 65532, the channels directory mounted read-only at
/// `/channels`, and `profile` as the seccomp profile (`None`: the daemon's default).
fn standalone(channels: &Path, profile: Option<&Path>) -> Vec<String> {
    let mut flags: Vec<String> = RESTRICTED.iter().map(|s| s.to_string()).collect();
    flags.extend([
        "--user".into(),
        "65532".into(),
        "-v".into(),
        format!("{}:/channels:ro", channels.display()),
    ]);
    if let Some(p) = profile {
        flags.extend(["--security-opt".into(), format!("seccomp={}", p.display())]);
    }
    flags
}

/// A service account directory as the kubelet mounts it, for the API server fixture.
fn service_account(dir: &Path, api: &ApiServer, namespace: &str) -> std::path::PathBuf {
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).expect("create the service account dir");
    std::fs::write(sa.join("token"), DISPATCHER_TOKEN).expect("token");
    std::fs::write(sa.join("ca.crt"), api.ca_pem()).expect("ca.crt");
    std::fs::write(sa.join("namespace"), namespace).expect("namespace");
    sa
}

/// An `imc-loadgen sink` container known on `net` as [`SINK_FQDN`].
fn start_sink(net: &Network, extra: &[&str]) -> (Container, SocketAddr) {
    let mut cmd = vec!["sink", "--listen", "0.0.0.0:8081"];
    cmd.extend_from_slice(extra);
    let sink = Container::run(
        "sink",
        &["--network", &net.name, "--network-alias", SINK_FQDN],
        SINK_IMAGE,
        &cmd,
    );
    let addr = SocketAddr::new(sink.ip(), 8081);
    eventually(Duration::from_secs(10), "the sink answers /report", || {
        sink_report(addr)
    });
    (sink, addr)
}

fn received(sink: SocketAddr) -> u64 {
    let report: Value = serde_json::from_str(&sink_report(sink).expect("the sink's report"))
        .expect("the report is JSON");
    report["accepted"].as_u64().expect("accepted")
}

/// Waits for the kubelet probe on 8080 to answer 204.
#[track_caller]
fn wait_ready(c: &Container) {
    let deadline = Instant::now() + READY_WITHIN;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(code) = c.exit_code() {
            panic!(
                "{} exited with {code} before it was ready:\n{}",
                c.name,
                c.logs()
            );
        }
        last = kubelet_probe(c.ip(), 8080);
        if last == Some(204) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} not ready within {READY_WITHIN:?} (last probe: {last:?}):\n{}",
        c.name,
        c.logs()
    );
}

fn lines_with(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// A channel as a file of the standalone source, mounted read-only.
fn channels_file(dir: &Path, channels: &[(&str, &str)]) -> std::path::PathBuf {
    let cdir = dir.join("channels");
    std::fs::create_dir_all(&cdir).expect("channels dir");
    let mut text = String::new();
    for (name, subscriber) in channels {
        text.push_str(&format!(
            "---\napiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  subscribers:\n  \
             - uid: u-{name}\n    subscriberUri: {subscriber}\n"
        ));
    }
    std::fs::write(cdir.join("channels.yaml"), text).expect("write channels");
    cdir
}

fn host(name: &str) -> String {
    format!("{name}-kn-channel.default.svc.cluster.local")
}

/// What the imc-controller leaves: the channel Ready at its generation.
fn put_ready(api: &ApiServer, ns: &str, name: &str, spec: Value, annotations: Option<Value>) {
    api.admin().ready_imc(ns, name, spec, annotations);
}

fn subscriber(uid: &str, url: &str) -> Value {
    json!({"subscribers": [{"uid": uid, "generation": 1, "subscriberUri": url}]})
}

/// The image as upstream's Deployment runs it, in a cluster: no arguments, upstream's env and
/// securityContext, the service account at its usual path, a RuntimeDefault-like seccomp
/// profile that refuses io_uring (Docker 25+, containerd). It falls back to epoll with one log
/// line and a metric, becomes ready, serves a channel of the API server, delivers to a sink by a
/// name that resolves only through the search domains, and patches the channel's status.
#[test]
fn upstream_deployment_in_a_cluster() {
    if !docker_available() {
        return;
    }
    let images = images();
    eprintln!(
        "image {IMAGE}: {:.1} MB (binaries from {})",
        images.image_bytes as f64 / 1e6,
        images.bin_dir.display()
    );
    let net = Network::create();
    let api = ApiServer::builder().bind(net.gateway()).start();
    let (_sink, sink) = start_sink(&net, &[]);
    put_ready(
        &api,
        "default",
        "orders",
        subscriber("u1", &format!("http://{SINK_SHORT}:8081/")),
        None,
    );

    let scratch = Scratch::new();
    let mut flags = pod_flags(
        &upstream_deployment_container(),
        SYSTEM_NAMESPACE,
        "imc-dispatcher-7d9f8-x2k4q",
    );
    let profile = no_io_uring(scratch.path());
    flags.extend(in_cluster(
        &net,
        &api,
        scratch.path(),
        SYSTEM_NAMESPACE,
        &profile,
    ));
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dispatcher = Container::run("dispatcher", &args, IMAGE, &[]);
    wait_ready(&dispatcher);

    let logs = dispatcher.logs();
    assert_eq!(
        lines_with(&logs, "io_uring is not available"),
        1,
        "one fallback line:\n{logs}"
    );
    assert!(logs.contains("io_uring_setup refused with EPERM"), "{logs}");
    assert!(logs.contains("driver=\"epoll\""), "{logs}");
    assert!(
        logs.contains("pod=\"imc-dispatcher-7d9f8-x2k4q\"")
            && logs.contains("container=\"dispatcher\""),
        "upstream's POD_NAME and CONTAINER_NAME are read:\n{logs}"
    );
    let m = metrics(dispatcher.ip()).expect("metrics on 9090");
    assert!(
        m.contains("imc_io_driver_info{driver=\"epoll\",fallback=\"EPERM\"} 1"),
        "{m}"
    );

    assert_eq!(
        post_event(
            dispatcher.ip(),
            &host("orders"),
            "c-1",
            Duration::from_secs(10)
        ),
        Some(202),
        "{}",
        dispatcher.logs()
    );
    assert_eq!(received(sink), 1, "the sink got the event");
    // D17: the status patch, once the channel is served.
    eventually(Duration::from_secs(10), "the status patch", || {
        let patches = api.requests(&[
            ("method", "PATCH"),
            ("subresource", "status"),
            ("name", "orders"),
        ]);
        (!patches.is_empty()).then_some(())
    });
    let imc = api
        .admin()
        .get("inmemorychannels", "default", "orders")
        .expect("the channel");
    assert_eq!(
        imc["status"]["subscribers"],
        json!([{"observedGeneration": 1, "ready": "True", "uid": "u1"}]),
        "{imc}"
    );
    // Nothing was written in the container: the root file system is read-only and nothing else
    // is mounted writable; the process stayed up.
    assert_eq!(dispatcher.exit_code(), None);
}

/// The namespace-scoped dispatcher upstream's controller creates (§4.6): its env (NAMESPACE
/// set, MAX_IDLE_CONNS_PER_HOST 100), uid 1000, its resource limits, no probes declared. It
/// serves only the namespace-annotated channel of its namespace.
#[test]
fn namespace_scoped_dispatcher_in_a_cluster() {
    if !docker_available() {
        return;
    }
    images();
    let net = Network::create();
    let api = ApiServer::builder().bind(net.gateway()).start();
    let (_sink, sink) = start_sink(&net, &[]);
    let url = format!("http://{SINK_SHORT}:8081/");
    put_ready(
        &api,
        "default",
        "local",
        subscriber("u-local", &url),
        Some(json!({"eventing.knative.dev/scope": "namespace"})),
    );
    put_ready(
        &api,
        "default",
        "global",
        subscriber("u-global", &url),
        None,
    );

    let scratch = Scratch::new();
    let mut flags = pod_flags(
        &namespace_deployment_container(),
        "default",
        "imc-dispatcher-5c6d-abcde",
    );
    assert!(
        flags.contains(&"NAMESPACE=default".to_string()),
        "the example sets NAMESPACE: {flags:?}"
    );
    let profile = no_io_uring(scratch.path());
    flags.extend(in_cluster(&net, &api, scratch.path(), "default", &profile));
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dispatcher = Container::run("ns-dispatcher", &args, IMAGE, &[]);
    // No probes are declared for it; the probe answer is still the readiness signal.
    wait_ready(&dispatcher);
    let ip = dispatcher.ip();
    assert_eq!(
        post_event(ip, &host("local"), "n-1", Duration::from_secs(10)),
        Some(202),
        "{}",
        dispatcher.logs()
    );
    assert_eq!(
        post_event(ip, &host("global"), "n-2", Duration::from_secs(10)),
        Some(404),
        "a cluster-scoped channel is not this dispatcher's"
    );
    assert_eq!(received(sink), 1);
}

/// A sandbox that lets the ring be set up but refuses `io_uring_enter`: the probe's first
/// operation fails and `auto` falls back to epoll, with the reason. The file source (standalone
/// mode), mounted read-only. Without the search domains, the short name does not resolve (a
/// transport failure, 500) while the full one does: the search list is what made it work above.
#[test]
fn first_operation_refused_falls_back_and_names_resolve_as_configured() {
    if !docker_available() {
        return;
    }
    images();
    let net = Network::create();
    let (_sink, sink) = start_sink(&net, &[]);
    let scratch = Scratch::new();
    let channels = channels_file(
        scratch.path(),
        &[
            ("full", &format!("http://{SINK_FQDN}:8081/")),
            ("short", &format!("http://{SINK_SHORT}:8081/")),
        ],
    );
    let profile = seccomp_refusing(scratch.path(), "enter-refused.json", &["io_uring_enter"], 1);
    let mut flags = standalone(&channels, Some(&profile));
    flags.extend([
        "--network".into(),
        net.name.clone(),
        "-e".into(),
        "IMC_CHANNELS=/channels".into(),
    ]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dispatcher = Container::run("enter-refused", &args, IMAGE, &[]);
    wait_ready(&dispatcher);
    let logs = dispatcher.logs();
    assert_eq!(lines_with(&logs, "io_uring is not available"), 1, "{logs}");
    assert!(
        logs.contains("io_uring_enter refused on the first operation"),
        "{logs}"
    );
    assert!(metrics(dispatcher.ip())
        .expect("metrics")
        .contains("imc_io_driver_info{driver=\"epoll\",fallback=\"EPERM\"} 1"));
    let ip = dispatcher.ip();
    assert_eq!(
        post_event(ip, &host("full"), "f-1", Duration::from_secs(10)),
        Some(202)
    );
    assert_eq!(
        // A resolver that forwards the name upstream may take its timeouts (glibc: 5 s, two
        // attempts) before it gives up: the answer is awaited longer than the others.
        post_event(ip, &host("short"), "s-1", Duration::from_secs(60)),
        Some(500),
        "without search domains the short name must not resolve"
    );
    assert_eq!(received(sink), 1);
}

/// `--io-driver io-uring` where io_uring is refused: a clear error and exit 2, not a hang.
#[test]
fn forced_io_uring_refused_exits() {
    if !docker_available() {
        return;
    }
    images();
    let scratch = Scratch::new();
    let channels = channels_file(scratch.path(), &[("x", "http://127.0.0.1:9/")]);
    let flags = standalone(&channels, Some(&no_io_uring(scratch.path())));
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let started = Instant::now();
    let c = Container::run(
        "forced",
        &args,
        IMAGE,
        &["--channels", "/channels", "--io-driver", "io-uring"],
    );
    let code = c.wait_exit(Duration::from_secs(15));
    let logs = c.logs();
    assert_eq!(code, Some(2), "exit 2 within 15 s:\n{logs}");
    assert!(
        logs.contains("--io-driver io-uring: io_uring_setup refused with EPERM"),
        "{logs}"
    );
    eprintln!(
        "forced io-uring exited in {:?}: {}",
        started.elapsed(),
        logs.trim()
    );
}

/// The daemon's own default seccomp profile (whatever this Docker Engine ships) with the rest
/// of upstream's restrictions: the image starts, reports the driver it chose, delivers.
#[test]
fn daemon_default_seccomp_profile() {
    if !docker_available() {
        return;
    }
    images();
    let net = Network::create();
    let (_sink, sink) = start_sink(&net, &[]);
    let scratch = Scratch::new();
    let channels = channels_file(
        scratch.path(),
        &[("d", &format!("http://{SINK_SHORT}:8081/"))],
    );
    let mut flags = standalone(&channels, None);
    flags.extend(dns_flags(&net));
    flags.extend(["-e".into(), "IMC_CHANNELS=/channels".into()]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dispatcher = Container::run("default-seccomp", &args, IMAGE, &[]);
    wait_ready(&dispatcher);
    let m = metrics(dispatcher.ip()).expect("metrics");
    let driver = m
        .lines()
        .find(|l| l.starts_with("imc_io_driver_info{"))
        .expect("imc_io_driver_info");
    eprintln!(
        "daemon {} default seccomp profile: {driver}",
        docker_ok(&["info", "--format", "{{.ServerVersion}}"])
    );
    assert_eq!(
        post_event(dispatcher.ip(), &host("d"), "d-1", Duration::from_secs(10)),
        Some(202)
    );
    assert_eq!(received(sink), 1);
}

/// `docker stop` (SIGTERM, then SIGKILL after the grace period) while an event is being
/// delivered to a slow subscriber: the accepted event is finished (D13), its sender gets 202,
/// and the container exits 0 well within the grace period.
#[test]
fn docker_stop_drains_accepted_events() {
    if !docker_available() {
        return;
    }
    images();
    let net = Network::create();
    let (_sink, sink) = start_sink(&net, &["--delay", "3s"]);
    let scratch = Scratch::new();
    let channels = channels_file(
        scratch.path(),
        &[("slow", &format!("http://{SINK_FQDN}:8081/"))],
    );
    let mut flags = standalone(&channels, Some(&no_io_uring(scratch.path())));
    flags.extend([
        "--network".into(),
        net.name.clone(),
        "-e".into(),
        "IMC_CHANNELS=/channels".into(),
    ]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dispatcher = Container::run("drain", &args, IMAGE, &[]);
    wait_ready(&dispatcher);
    let ip = dispatcher.ip();
    let sender = std::thread::spawn(move || {
        post_event(ip, &host("slow"), "slow-1", Duration::from_secs(30))
    });
    // The event is accepted and held by the sink for 3 s; stop the container meanwhile.
    std::thread::sleep(Duration::from_millis(800));
    let stopping = Instant::now();
    docker_ok(&["stop", "-t", "30", &dispatcher.name]);
    let took = stopping.elapsed();
    assert_eq!(
        sender.join().expect("sender"),
        Some(202),
        "the accepted event was finished:\n{}",
        dispatcher.logs()
    );
    let logs = dispatcher.logs();
    assert_eq!(
        dispatcher.exit_code(),
        Some(0),
        "exit 0 after the drain:\n{logs}"
    );
    assert!(took < Duration::from_secs(25), "stopped in {took:?}");
    assert!(
        logs.contains("drained; every accepted event was finished"),
        "{logs}"
    );
    assert_eq!(received(sink), 1);
    eprintln!("docker stop took {took:?} with an event in flight");
}

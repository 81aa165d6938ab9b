//! A test Kubernetes API server for the control plane (`imc-control`): the fixture
//! `tests/apiserver/apiserver.py` as a process, on loopback, over real HTTPS with a CA made for the
//! test. Its first lines say what it does not imitate; read them before trusting a green test.
//!
//! [`ApiServer::start`] makes the CA and a server certificate for `127.0.0.1` with the `openssl`
//! CLI, starts the fixture with `python3`, and waits for its two ports: the API port (HTTPS,
//! bearer tokens) and the control port (plain HTTP, JSON, no auth), through which the test seeds
//! objects ([`Admin`]), reads the request log ([`ApiServer::requests`]), restarts the "server"
//! ([`ApiServer::restart`]), cuts watches ([`ApiServer::drop_watches`]), compacts history
//! ([`ApiServer::compact`]) and injects faults ([`ApiServer::inject`]). The fixture's stderr (one
//! line per request) is kept and printed when a test fails; the process is killed on drop.
//!
//! For requests over the API port without a Kubernetes client, [`ApiServer::https`] and
//! [`ApiServer::watch`] run `curl` with the test CA.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Conn, Request};
use crate::dut::TempDir;
use crate::text::base64;

/// A token of role `admin` (everything; group `system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token";
/// A token of role `imc-dispatcher`: upstream's ClusterRole and TLS Role (contract §1.6).
pub const DISPATCHER_TOKEN: &str = "imc-dispatcher-token";
/// The user [`DISPATCHER_TOKEN`] authenticates as.
pub const DISPATCHER_USER: &str = "system:serviceaccount:knative-eventing:imc-dispatcher";
/// A token that authenticates but may do nothing (role `none`).
pub const NOBODY_TOKEN: &str = "nobody-token";
/// The system namespace (the one the dispatcher may read Secrets in).
pub const SYSTEM_NAMESPACE: &str = "knative-eventing";

/// How long the fixture may take to print its ports.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a curl request may take (watches have their own bound).
const CURL_TIMEOUT: Duration = Duration::from_secs(15);

/// Configures an [`ApiServer`] before it starts.
pub struct ApiServerBuilder {
    tokens: serde_json::Map<String, Value>,
    state: Option<Value>,
    args: Vec<String>,
    bind: Option<std::net::IpAddr>,
}

impl ApiServerBuilder {
    /// Adds a token. `role`: `admin`, `imc-dispatcher` or `none`.
    pub fn token(mut self, token: &str, user: &str, role: &str) -> Self {
        self.tokens
            .insert(token.to_string(), json!({"user": user, "role": role}));
        self
    }

    /// Adds a token with inline RBAC rules: `[{"apiGroups": [""], "resources": ["configmaps"],
    /// "verbs": ["get"], "namespaces": ["default"], "resourceNames": ["x"]}]` (the last two
    /// optional).
    pub fn token_rules(mut self, token: &str, user: &str, rules: Value) -> Self {
        self.tokens
            .insert(token.to_string(), json!({"user": user, "role": rules}));
        self
    }

    /// Objects created before the server listens (a JSON array of whole objects, status included).
    pub fn state(mut self, objects: Value) -> Self {
        self.state = Some(objects);
        self
    }

    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (3 s by default).
    pub fn bookmark_interval(self, every: Duration) -> Self {
        self.args(&["--bookmark-interval", &format!("{}", every.as_secs_f64())])
    }

    /// How many watch events the history keeps (1000 by default); older resourceVersions are
    /// "too old" for watches and paging.
    pub fn history(self, events: usize) -> Self {
        self.args(&["--history", &events.to_string()])
    }

    /// Requests without a token run as `system:anonymous` (403 on resources) instead of 401.
    pub fn anonymous_auth(self) -> Self {
        self.args(&["--anonymous-auth"])
    }

    /// Listen on `ip` instead of 127.0.0.1 (its certificate names `ip` too): the container tests
    /// bind a Docker network's gateway, which the containers on that network reach.
    pub fn bind(mut self, ip: std::net::IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Extra fixture flags (`python3 tests/apiserver/apiserver.py --help`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Makes the certificates, starts the fixture, waits for both ports.
    #[track_caller]
    pub fn start(self) -> ApiServer {
        require_tool("python3");
        require_tool("openssl");
        let dir = TempDir::new();
        let ca_pem = make_certificates(&dir.0, self.bind);
        let tokens = dir.0.join("tokens.json");
        fs::write(&tokens, Value::Object(self.tokens).to_string()).expect("write tokens file");
        let mut cmd = Command::new("python3");
        cmd.arg(fixture_script())
            .args(["--port", "0", "--control-port", "0"])
            .arg("--cert")
            .arg(dir.0.join("server.crt"))
            .arg("--key")
            .arg(dir.0.join("server.key"))
            .arg("--tokens")
            .arg(&tokens)
            .args(["--system-namespace", SYSTEM_NAMESPACE]);
        if let Some(ip) = self.bind {
            cmd.args(["--bind", &ip.to_string()]);
        }
        if let Some(state) = &self.state {
            let path = dir.0.join("state.json");
            fs::write(&path, state.to_string()).expect("write state file");
            cmd.arg("--state").arg(path);
        }
        let mut child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 {}: {e}", fixture_script().display()));
        let logs = Arc::new(Logs::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let reader_logs = Arc::clone(&logs);
        thread::spawn(move || read_logs(stderr, &reader_logs));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ApiServer {
            child,
            logs,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut api = None;
        let mut control = None;
        while api.is_none() || control.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("LISTENING ") {
                        api = a.trim().parse().ok();
                    } else if let Some(a) = line.strip_prefix("CONTROL ") {
                        control = a.trim().parse().ok();
                    }
                }
                Err(_) => panic!(
                    "the apiserver fixture printed no LISTENING/CONTROL lines within \
                     {START_TIMEOUT:?}\nlogs:\n{}",
                    server.logs().join("\n")
                ),
            }
        }
        server.addr = api.unwrap();
        server.control = control.unwrap();
        server
    }
}

/// The running fixture. Killed on drop; its log is printed if the test is failing.
pub struct ApiServer {
    child: Child,
    logs: Arc<Logs>,
    addr: SocketAddr,
    control: SocketAddr,
    ca_pem: String,
    dir: TempDir,
}

impl ApiServer {
    /// With tokens [`ADMIN_TOKEN`], [`DISPATCHER_TOKEN`] (as [`DISPATCHER_USER`]) and
    /// [`NOBODY_TOKEN`]; namespaces `default`, `kube-system`, `kube-public`, `kube-node-lease` and
    /// [`SYSTEM_NAMESPACE`].
    #[track_caller]
    pub fn start() -> ApiServer {
        ApiServer::builder().start()
    }

    /// A builder with the three tokens of [`ApiServer::start`] already added.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder {
            tokens: serde_json::Map::new(),
            state: None,
            args: Vec::new(),
            bind: None,
        }
        .token(ADMIN_TOKEN, "admin", "admin")
        .token(DISPATCHER_TOKEN, DISPATCHER_USER, "imc-dispatcher")
        .token(NOBODY_TOKEN, "nobody", "none")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control port (plain HTTP).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// The test CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The test CA's file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// Writes a kubeconfig (the CA inline, the server URL, this bearer token) and returns its
    /// path, for `KUBECONFIG=...`.
    pub fn kubeconfig_path(&self, token: &str) -> PathBuf {
        let path = self.dir.0.join(format!("kubeconfig-{}", sanitize(token)));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: imc-e2e\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\nusers:\n- name: imc-e2e\n  user:\n    token: {}\n\
             contexts:\n- name: imc-e2e\n  context:\n    cluster: imc-e2e\n    user: imc-e2e\n    \
             namespace: default\ncurrent-context: imc-e2e\n",
            self.url(),
            base64(self.ca_pem.as_bytes()),
            token
        );
        fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Helpers that write objects through the control port, as an admin, without validation.
    pub fn admin(&self) -> Admin<'_> {
        Admin(self)
    }

    /// One control-port call; panics with the fixture's log on a transport error.
    #[track_caller]
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = Request::new(method, path).header("Content-Type", "application/json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        self.control_request(req)
    }

    #[track_caller]
    fn control_request(&self, req: Request) -> (u16, Value) {
        let resp = Conn::try_open(self.control)
            .and_then(|mut c| c.request(&req))
            .unwrap_or_else(|e| {
                panic!(
                    "control port {} {}: {e}\nlogs:\n{}",
                    req.method,
                    req.target,
                    self.logs().join("\n")
                )
            });
        let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, value)
    }

    #[track_caller]
    fn control_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.control(method, path, body);
        assert!(
            status == 200,
            "control port {method} {path}: {status} {value}"
        );
        value
    }

    /// The request log, filtered: `&[("method", "PATCH"), ("subresource", "status")]`. Filters:
    /// method, path, path_prefix, path_contains, verb, resource, subresource, namespace, name,
    /// user, status, since (a `seq`), watch (`true`/`false`). Each entry has seq, time, method,
    /// path, query, params, content_type, user_agent, user, body, status, reason, message,
    /// warnings, watch (and for watches watch_id, ended), verb, group, version, resource,
    /// subresource, namespace, name, fault.
    pub fn requests(&self, filter: &[(&str, &str)]) -> Vec<Value> {
        let query: Vec<String> = filter
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let v = self.control_ok("GET", &format!("/log?{}", query.join("&")), None);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.control_ok("DELETE", "/log", None);
    }

    /// Simulates an API server restart (see [`Restart`]); returns at once with the timeline.
    pub fn restart(&self, plan: Restart) -> Value {
        let body = json!({
            "down_seconds": plan.down.as_secs_f64(),
            "forbidden_seconds": plan.forbidden.as_secs_f64(),
            "unavailable_seconds": plan.unavailable.as_secs_f64(),
            "initializing_seconds": plan.initializing.as_secs_f64(),
            "unavailable_scope": plan.unavailable_scope,
            "initializing_scope": plan.initializing_scope,
            "graceful": plan.graceful,
        });
        self.control_ok("POST", "/restart", Some(&body))
    }

    /// Ends every watch stream abruptly (no chunked terminator); returns how many.
    pub fn drop_watches(&self) -> u64 {
        self.control_ok("POST", "/drop-watches", None)["dropped"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Forgets all history: every resourceVersion before now is "too old". Returns it.
    pub fn compact(&self) -> u64 {
        parse_rv(&self.control_ok("POST", "/compact", Some(&json!({})))["compacted_rv"])
    }

    /// Injects a fault; returns its id.
    pub fn inject(&self, fault: &Fault) -> u64 {
        self.control_ok("POST", "/faults", Some(&fault.0))["id"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.control_ok("DELETE", "/faults", None);
    }

    /// The fixture's state: phase, resourceVersion, compacted_rv, history, watches, connections.
    pub fn state(&self) -> Value {
        self.control_ok("GET", "/state", None)
    }

    /// The cluster-wide resourceVersion counter now.
    pub fn resource_version(&self) -> u64 {
        parse_rv(&self.state()["resourceVersion"])
    }

    /// The open watch streams (path, query, user, start_rv, last_rv).
    pub fn watches(&self) -> Vec<Value> {
        self.control_ok("GET", "/watches", None)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until a watch whose path contains `path_contains` is open, and returns it.
    #[track_caller]
    pub fn wait_for_watch(&self, path_contains: &str, timeout: Duration) -> Value {
        crate::eventually(timeout, &format!("a watch on {path_contains}"), || {
            self.watches()
                .into_iter()
                .find(|w| w["path"].as_str().unwrap_or("").contains(path_contains))
        })
    }

    /// Changes the bookmark interval of watches started from now on.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.control_ok(
            "POST",
            "/config",
            Some(&json!({"bookmark_interval": every.as_secs_f64()})),
        );
    }

    /// Every stderr line so far (one per request, plus restarts and watch ends).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// One request over HTTPS with `curl` (HTTP/1.1, the test CA).
    #[track_caller]
    pub fn https(&self, req: &KubeRequest) -> KubeResponse {
        let mut cmd = self.curl(req, CURL_TIMEOUT);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn curl");
        let mut stdin = child.stdin.take().expect("curl stdin");
        stdin
            .write_all(req.body.as_deref().unwrap_or("").as_bytes())
            .expect("write curl stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        parse_http(&text).unwrap_or_else(|| {
            panic!(
                "curl {} {} gave no HTTP response (exit {:?}): {text}\nlogs:\n{}",
                req.method,
                req.path,
                out.status.code(),
                self.logs().join("\n")
            )
        })
    }

    /// `GET path` with `token`.
    #[track_caller]
    pub fn get(&self, token: &str, path: &str) -> KubeResponse {
        self.https(&KubeRequest::new("GET", path).token(token))
    }

    /// Starts a watch request (`path` with its query, e.g. `...?watch=true&resourceVersion=5`);
    /// the stream is read in the background. `max` bounds it (curl's --max-time). Returns at
    /// once: curl prints the response head only with the first bytes of the body, so
    /// [`WatchStream::status`] waits for it.
    #[track_caller]
    pub fn watch(&self, token: &str, path: &str, max: Duration) -> WatchStream {
        let req = KubeRequest::new("GET", path).token(token);
        let mut cmd = self.curl(&req, max);
        cmd.arg("-N").stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn curl");
        let stdout = child.stdout.take().expect("curl stdout");
        let (tx, rx) = mpsc::channel();
        let head = Arc::new((Mutex::new(None), std::sync::Condvar::new()));
        let reader_head = Arc::clone(&head);
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut status = 0;
            let mut headers = Vec::new();
            let mut in_head = true;
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let text = line.trim_end_matches(['\r', '\n']).to_string();
                line.clear();
                if in_head {
                    if status == 0 {
                        status = text
                            .split_whitespace()
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                    } else if text.is_empty() {
                        in_head = false;
                        let (lock, cv) = &*reader_head;
                        *lock.lock().unwrap() = Some((status, std::mem::take(&mut headers)));
                        cv.notify_all();
                    } else if let Some((k, v)) = text.split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                    continue;
                }
                if tx.send(text).is_err() {
                    break;
                }
            }
            let (lock, cv) = &*reader_head;
            let mut h = lock.lock().unwrap();
            if h.is_none() {
                *h = Some((status, headers));
            }
            cv.notify_all();
        });
        WatchStream {
            child,
            lines: rx,
            head,
        }
    }

    fn curl(&self, req: &KubeRequest, max: Duration) -> Command {
        require_tool("curl");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "--http1.1", "-H", "Expect:"])
            .arg("--cacert")
            .arg(self.ca_path())
            .args(["--max-time", &format!("{}", max.as_secs_f64())])
            .args(["-X", &req.method]);
        if let Some(t) = &req.token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(ct) = &req.content_type {
            cmd.args(["-H", &format!("Content-Type: {ct}")]);
        }
        for (k, v) in &req.headers {
            cmd.args(["-H", &format!("{k}: {v}")]);
        }
        if req.body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{}", self.url(), req.path));
        cmd.stderr(Stdio::null());
        cmd
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let logs = self.logs();
            let tail = &logs[logs.len().saturating_sub(80)..];
            eprintln!("--- apiserver fixture log (last {} lines) ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// Writes through the control port: admin, no authentication, no validation, status kept, the
/// namespace created if missing. The result is the stored object.
pub struct Admin<'a>(&'a ApiServer);

impl Admin<'_> {
    /// Creates or replaces a whole object (`apiVersion`, `kind`, `metadata.name` required;
    /// namespace `default` if absent).
    #[track_caller]
    pub fn put(&self, object: &Value) -> Value {
        self.0.control_ok("PUT", "/objects", Some(object))
    }

    /// [`Admin::put`] from a JSON text.
    #[track_caller]
    pub fn put_json(&self, object: &str) -> Value {
        let v: Value = serde_json::from_str(object).expect("put_json: not JSON");
        self.put(&v)
    }

    /// An InMemoryChannel with this spec, and this status if given.
    #[track_caller]
    pub fn imc(&self, namespace: &str, name: &str, spec: Value, status: Option<Value>) -> Value {
        let mut obj = json!({
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "InMemoryChannel",
            "metadata": {"namespace": namespace, "name": name},
            "spec": spec,
        });
        if let Some(s) = status {
            obj["status"] = s;
        }
        self.put(&obj)
    }

    /// Creates (or replaces) an InMemoryChannel with this spec (and annotations) and marks it
    /// Ready at the generation the server gave it, as the imc-controller does ([`ready_status`]);
    /// returns that generation.
    #[track_caller]
    pub fn ready_imc(&self, ns: &str, name: &str, spec: Value, annotations: Option<Value>) -> i64 {
        let mut obj = json!({
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "InMemoryChannel",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        });
        if let Some(a) = annotations {
            obj["metadata"]["annotations"] = a;
        }
        let generation = self.put(&obj)["metadata"]["generation"]
            .as_i64()
            .expect("generation");
        self.merge_patch(
            "inmemorychannels",
            ns,
            name,
            &json!({"status": ready_status(ns, name, generation)}),
        );
        generation
    }

    /// A ConfigMap with this data.
    #[track_caller]
    pub fn configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.put(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": namespace, "name": name},
            "data": data,
        }))
    }

    /// The stored object, or `None`. `resource`: the plural (`inmemorychannels`, `leases`,
    /// `configmaps`, `events.events.k8s.io`, ...).
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let (status, v) = self.0.control(
            "GET",
            &format!(
                "/objects?resource={}&namespace={}&name={}",
                encode(resource),
                encode(namespace),
                encode(name)
            ),
            None,
        );
        (status == 200).then_some(v)
    }

    /// Every stored object of `resource` (in `namespace`, or in all).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut path = format!("/objects?resource={}", encode(resource));
        if let Some(ns) = namespace {
            path.push_str(&format!("&namespace={}", encode(ns)));
        }
        self.0.control_ok("GET", &path, None)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// An RFC 7386 merge patch (status included).
    #[track_caller]
    pub fn merge_patch(&self, resource: &str, namespace: &str, name: &str, patch: &Value) -> Value {
        self.patch(
            resource,
            namespace,
            name,
            "application/merge-patch+json",
            patch,
        )
    }

    /// An RFC 6902 JSON patch (status included).
    #[track_caller]
    pub fn json_patch(&self, resource: &str, namespace: &str, name: &str, patch: &Value) -> Value {
        self.patch(
            resource,
            namespace,
            name,
            "application/json-patch+json",
            patch,
        )
    }

    #[track_caller]
    fn patch(&self, resource: &str, ns: &str, name: &str, ct: &str, patch: &Value) -> Value {
        let req = Request::new(
            "PATCH",
            &format!(
                "/objects?resource={}&namespace={}&name={}",
                encode(resource),
                encode(ns),
                encode(name)
            ),
        )
        .header("Content-Type", ct)
        .body(patch.to_string());
        let (status, v) = self.0.control_request(req);
        assert!(
            status == 200,
            "admin patch {resource} {ns}/{name}: {status} {v}"
        );
        v
    }

    /// Deletes an object (with finalizers it only gets a deletionTimestamp). Returns
    /// `{"deleted": bool, "object": ...}`.
    #[track_caller]
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Value {
        self.0.control_ok(
            "DELETE",
            &format!(
                "/objects?resource={}&namespace={}&name={}",
                encode(resource),
                encode(namespace),
                encode(name)
            ),
            None,
        )
    }
}

/// What [`ApiServer::restart`] does, in order: close every connection (abruptly, or with
/// `graceful` watches first end with the chunked terminator); refuse connections for `down`;
/// answer 403 "RBAC: clusterrole ... not found" to every non-admin resource request for
/// `forbidden`; 503 + `Retry-After: 5` for `unavailable`; 429 "storage is (re)initializing" +
/// `Retry-After: 1` for `initializing`; then serve normally. As a starting kube-apiserver renews
/// its identity Lease, the restart writes Lease `kube-system/apiserver-fixture` (the
/// resourceVersion moves), then compacts the history: a watch from any resourceVersion from before
/// the restart gets the 410 ERROR event.
#[derive(Clone, Debug)]
pub struct Restart {
    pub down: Duration,
    pub forbidden: Duration,
    pub unavailable: Duration,
    pub initializing: Duration,
    /// `"all"` (every resource request) or `"crd"` (only custom resources, as a real server
    /// whose CRD paths are not installed yet).
    pub unavailable_scope: &'static str,
    /// `"all"` or `"watch"` (only watches, as a 1.36 server that serves lists from etcd).
    pub initializing_scope: &'static str,
    pub graceful: bool,
}

impl Default for Restart {
    /// Down 1 s, no 403 phase, 503 for 1 s, 429 for 1 s, abrupt.
    fn default() -> Restart {
        Restart {
            down: Duration::from_secs(1),
            forbidden: Duration::ZERO,
            unavailable: Duration::from_secs(1),
            initializing: Duration::from_secs(1),
            unavailable_scope: "all",
            initializing_scope: "all",
            graceful: false,
        }
    }
}

/// A fault for [`ApiServer::inject`]: which requests it matches, and what they get instead.
#[derive(Clone, Debug)]
pub struct Fault(pub Value);

impl Fault {
    /// The next request with this method (`PATCH`, `GET`, ...) and this exact path.
    pub fn on(method: &str, path: &str) -> Fault {
        Fault(json!({"method": method, "path": path, "count": 1}))
    }

    /// The next request of this API verb (`get`, `list`, `watch`, `patch`, ...) to `resource`.
    pub fn verb(verb: &str, resource: &str) -> Fault {
        Fault(json!({"verb": verb, "resource": resource, "count": 1}))
    }

    /// Matches paths by regular expression instead.
    pub fn path_regex(mut self, re: &str) -> Fault {
        self.0.as_object_mut().unwrap().remove("path");
        self.0["path_regex"] = json!(re);
        self
    }

    /// How many matching requests it applies to (1 by default).
    pub fn count(mut self, n: u32) -> Fault {
        self.0["count"] = json!(n);
        self
    }

    /// Answer this status with a Status object of the usual reason and message.
    pub fn status(mut self, code: u16) -> Fault {
        self.0["status"] = json!(code);
        self
    }

    pub fn message(mut self, text: &str) -> Fault {
        self.0["message"] = json!(text);
        self
    }

    pub fn reason(mut self, reason: &str) -> Fault {
        self.0["reason"] = json!(reason);
        self
    }

    /// Adds `Retry-After` (and `details.retryAfterSeconds`).
    pub fn retry_after(mut self, seconds: u32) -> Fault {
        self.0["retry_after"] = json!(seconds);
        self
    }

    /// Waits before answering (alone: then answers normally).
    pub fn delay(mut self, d: Duration) -> Fault {
        self.0["delay_seconds"] = json!(d.as_secs_f64());
        self
    }

    /// Closes the connection without an answer.
    pub fn close(mut self) -> Fault {
        self.0["close"] = json!(true);
        self
    }

    /// For a watch: a 200 stream carrying one ERROR event with this status, then its end.
    pub fn as_watch_event(mut self) -> Fault {
        self.0["as_watch_event"] = json!(true);
        self
    }
}

/// A request for [`ApiServer::https`].
#[derive(Clone, Debug)]
pub struct KubeRequest {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl KubeRequest {
    pub fn new(method: &str, path: &str) -> KubeRequest {
        KubeRequest {
            method: method.to_string(),
            path: path.to_string(),
            token: None,
            content_type: None,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn token(mut self, token: &str) -> KubeRequest {
        self.token = Some(token.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> KubeRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A JSON body (`Content-Type: application/json` unless set otherwise).
    pub fn json(mut self, body: &Value) -> KubeRequest {
        self.body = Some(body.to_string());
        if self.content_type.is_none() {
            self.content_type = Some("application/json".to_string());
        }
        self
    }

    /// A body with this content type (patches).
    pub fn body(mut self, content_type: &str, body: &str) -> KubeRequest {
        self.content_type = Some(content_type.to_string());
        self.body = Some(body.to_string());
        self
    }
}

/// A response read by curl.
#[derive(Clone, Debug)]
pub struct KubeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl KubeResponse {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Panics with the body unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &KubeResponse {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }
}

/// A watch being read by curl: events as they arrive, then how the stream ended.
pub struct WatchStream {
    child: Child,
    lines: Receiver<String>,
    /// The status and headers, once curl printed them (status 0: no response).
    head: Arc<WatchHead>,
}

type WatchHead = (
    Mutex<Option<(u16, Vec<(String, String)>)>>,
    std::sync::Condvar,
);

/// How a watch stream ended.
#[derive(Clone, Debug)]
pub struct WatchEnd {
    /// The response status (0: none).
    pub status: u16,
    /// The events not read with [`WatchStream::next_event`] before the end.
    pub events: Vec<Value>,
    /// curl's exit code: 0 after the chunked terminator, 18 when the connection closed before
    /// it, 56 when TLS was cut, 28 when `max` ran out.
    pub exit: Option<i32>,
}

impl WatchEnd {
    /// The stream ended with the chunked terminator.
    pub fn clean(&self) -> bool {
        self.exit == Some(0)
    }
}

impl WatchStream {
    fn line(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    /// The response's status and headers: waits (up to 15 s) until curl printed them, which it
    /// does with the first event or at the end of the stream (0: no response at all).
    pub fn head(&self) -> (u16, Vec<(String, String)>) {
        let (lock, cv) = &*self.head;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, CURL_TIMEOUT, |h| h.is_none())
            .unwrap();
        guard.clone().unwrap_or((0, Vec::new()))
    }

    /// The response status ([`WatchStream::head`]).
    pub fn status(&self) -> u16 {
        self.head().0
    }

    /// A response header ([`WatchStream::head`]).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head()
            .1
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The next event, or `None` if none arrives within `timeout` (or the stream ended).
    pub fn next_event(&self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.line(deadline)?;
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch line {line:?}: {e}")),
            );
        }
    }

    /// Reads until the stream ends (at most `timeout`, then kills curl).
    pub fn finish(mut self, timeout: Duration) -> WatchEnd {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => events.push(serde_json::from_str(&line).unwrap_or(Value::Null)),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let exit = self.child.wait().ok().and_then(|s| s.code());
        WatchEnd {
            status: self.status(),
            events,
            exit,
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A resourceVersion as the API writes it (a string of digits) as a number.
pub fn parse_rv(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .unwrap_or_else(|| panic!("not a resourceVersion: {v}"))
}

/// Percent-encodes a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Parses curl -i output: the last response (after any 100 Continue).
fn parse_http(text: &str) -> Option<KubeResponse> {
    let mut rest = text;
    loop {
        let (head, body) = rest.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        if status == 100 {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        return Some(KubeResponse {
            status,
            headers,
            body: body.to_string(),
        });
    }
}

/// `tests/apiserver/apiserver.py` of this crate.
pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apiserver/apiserver.py")
}

/// Panics, with the install command, unless `tool` runs.
#[track_caller]
fn require_tool(tool: &str) {
    let probe = if tool == "openssl" {
        "version"
    } else {
        "--version"
    };
    let found = Command::new(tool)
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is needed by the apiserver fixture and was not found: install it with \
         `sudo apt-get install -y {tool}` (scripts/test.sh does this)"
    );
}

/// A CA and a server certificate for 127.0.0.1 (and localhost, and `also`), EC P-256, valid two days, with
/// the extensions rustls/webpki insist on. Returns the CA PEM.
fn make_certificates(dir: &Path, also: Option<std::net::IpAddr>) -> String {
    let extra = also.map_or(String::new(), |ip| format!(",IP:{ip}"));
    fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n[dn]\n\
         CN = imc-e2e test CA\n[ext]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost{extra}\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
        ),
    )
    .expect("write server.ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-config", "ca.cnf"],
            &ec[..],
            &[
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req", "-new"],
            &ec[..],
            &[
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    let serial = format!(
        "0x{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    let mut pem = String::new();
    fs::File::open(dir.join("ca.crt"))
        .and_then(|mut f| f.read_to_string(&mut pem))
        .expect("read ca.crt");
    pem
}

#[track_caller]
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
}

fn read_logs(stderr: ChildStderr, logs: &Logs) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        logs.lines.lock().unwrap().push(text);
        line.clear();
    }
}

/// What the imc-controller writes on a Ready channel at `generation`: the Ready condition,
/// observedGeneration and the host address.
pub fn ready_status(ns: &str, name: &str, generation: i64) -> Value {
    json!({
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True"}],
        "address": {"url": format!("http://{name}-kn-channel.{ns}.svc.cluster.local")},
    })
}

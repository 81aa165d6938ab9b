//! The dispatcher under test (DUT): one `imc-dispatcher` process per test, fed a channels file in a
//! temporary directory, killed when dropped.
//!
//! Its stderr is read by a background thread that keeps every line, so tests can assert on logs; the
//! ingress address comes from the `ingress listening ... addr=127.0.0.1:PORT` line.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Conn, Request, Response};
use crate::manifest::{channels_yaml, Channel};
use crate::RELOAD;

/// How long a DUT may take to bind its ingress, and then to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The dispatcher's I/O driver (`--io-driver`). Every test runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn as_arg(self) -> &'static str {
        match self {
            Driver::IoUring => "io-uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// A kubelet probe, as the kubelet sends it (the path does not matter).
pub fn kube_probe() -> Request {
    Request::new("GET", "/").header("User-Agent", "kube-probe/1.30")
}

/// Where the DUT reads its channels from.
enum Source {
    File {
        name: String,
        contents: String,
    },
    Dir(Vec<(String, String)>),
    /// A cluster: `--kubeconfig`, and imc-control as the dispatcher's child.
    Cluster(PathBuf),
}

/// Configures a DUT before it starts.
pub struct DutBuilder {
    driver: Driver,
    source: Source,
    workers: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl DutBuilder {
    /// `--channels <dir>/channels.yaml` holding these channels.
    pub fn channels(self, channels: &[Channel]) -> DutBuilder {
        self.channels_file("channels.yaml", &channels_yaml(channels))
    }

    /// `--channels <dir>/<name>` holding exactly `contents`.
    pub fn channels_file(mut self, name: &str, contents: &str) -> DutBuilder {
        self.source = Source::File {
            name: name.to_string(),
            contents: contents.to_string(),
        };
        self
    }

    /// `--channels <dir>/channels.d`, a directory holding these files.
    pub fn channels_dir(mut self, files: &[(&str, &str)]) -> DutBuilder {
        self.source = Source::Dir(
            files
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect(),
        );
        self
    }

    /// The channels of the cluster this kubeconfig points at (`--kubeconfig`, no `--channels`):
    /// the dispatcher starts imc-control next to its own binary.
    pub fn cluster(mut self, kubeconfig: &Path) -> DutBuilder {
        self.source = Source::Cluster(kubeconfig.to_path_buf());
        self
    }

    /// `--workers n` instead of the default 2 (e.g. 1, so that every connection shares one
    /// worker's pools and budgets).
    pub fn workers(mut self, n: usize) -> DutBuilder {
        self.workers = n;
        self
    }

    /// An environment variable of the process (e.g. an allocator setting a measurement needs).
    pub fn env(mut self, key: &str, value: &str) -> DutBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Extra command-line arguments, e.g. `["--max-body-bytes", "1000"]`.
    pub fn args(mut self, args: &[&str]) -> DutBuilder {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts the DUT and waits until its kubelet probe answers 204.
    #[track_caller]
    pub fn start(self) -> Dut {
        let dut = self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match Conn::try_open(dut.addr).and_then(|mut c| c.request(&kube_probe())) {
                Ok(resp) if resp.status == 204 => return dut,
                Ok(resp) => format!("{resp:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "DUT not ready within {START_TIMEOUT:?}; last probe: {last}\nlogs:\n{}",
                    dut.logs().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the DUT and waits only until its ingress is bound, not until it is ready.
    #[track_caller]
    pub fn spawn(self) -> Dut {
        let root = TempDir::new();
        let source = root.0.join("src");
        fs::create_dir_all(&source).expect("create source directory");
        let mut source_args: Vec<std::ffi::OsString> = Vec::new();
        let channels = match &self.source {
            Source::Cluster(kubeconfig) => {
                source_args.push("--kubeconfig".into());
                source_args.push(kubeconfig.into());
                kubeconfig.clone()
            }
            Source::File { name, contents } => {
                let path = source.join(name);
                fs::write(&path, contents).expect("write channels file");
                path
            }
            Source::Dir(files) => {
                let dir = source.join("channels.d");
                fs::create_dir_all(&dir).expect("create channels directory");
                for (name, contents) in files {
                    fs::write(dir.join(name), contents).expect("write channels file");
                }
                dir
            }
        };
        if source_args.is_empty() {
            source_args.push("--channels".into());
            source_args.push(channels.clone().into());
        }
        let bin = binary();
        let mut child = Command::new(&bin)
            .args(&source_args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--tls-listen", "127.0.0.1:0"])
            .args(["--workers", &self.workers.to_string()])
            .args(["--io-driver", self.driver.as_arg()])
            .args(["--log-format", "text"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let logs = Arc::new(Logs::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let reader_logs = Arc::clone(&logs);
        thread::spawn(move || read_logs(stderr, &reader_logs));
        let mut dut = Dut {
            child,
            logs,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            channels,
            root,
        };
        dut.addr = dut.wait_for_ingress();
        dut.tls_addr = dut.wait_for_line("https ingress listening", tls_ingress_addr);
        dut
    }
}

/// A running dispatcher process.
pub struct Dut {
    child: Child,
    logs: Arc<Logs>,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    channels: PathBuf,
    root: TempDir,
}

impl Dut {
    pub fn builder(driver: Driver) -> DutBuilder {
        DutBuilder {
            driver,
            source: Source::File {
                name: "channels.yaml".to_string(),
                contents: String::new(),
            },
            workers: 2,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts a DUT serving `channels` (file `channels.yaml`) and waits until it is ready.
    #[track_caller]
    pub fn start(driver: Driver, channels: &[Channel]) -> Dut {
        Dut::builder(driver).channels(channels).start()
    }

    /// The ingress address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The https ingress address (`--tls-listen`).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    #[track_caller]
    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// Sends one request on a new connection and reads its response.
    #[track_caller]
    pub fn send(&self, req: &Request) -> Response {
        self.connect().send(req)
    }

    /// The status the kubelet readiness probe gets now.
    #[track_caller]
    pub fn probe(&self) -> u16 {
        self.send(&kube_probe()).status
    }

    /// The URL that reaches `channel` through this DUT by path routing
    /// (`http://127.0.0.1:PORT/<namespace>/<name>`), for `replyUri`s that point back at a channel.
    pub fn channel_url(&self, channel: &Channel) -> String {
        format!("http://{}{}", self.addr, channel.path())
    }

    /// Atomically replaces the channels file with these channels.
    pub fn set_channels(&self, channels: &[Channel]) {
        self.write_channels_raw(&channels_yaml(channels));
    }

    /// [`Dut::set_channels`], then waits (up to [`RELOAD`]) until the new set is in force: the set
    /// also holds a marker channel with a fresh name, and the call returns once it routes.
    #[track_caller]
    pub fn apply_channels(&self, channels: &[Channel]) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let marker = Channel::new(
            "imc-e2e",
            &format!("applied-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        );
        let mut all = channels.to_vec();
        all.push(marker.clone());
        self.set_channels(&all);
        let probe = crate::fixtures::e1()
            .host("anything.example")
            .target(&marker.path())
            .id("apply-marker");
        crate::eventually(RELOAD, "the new channel set is in force", || {
            (self.send(&probe).status == 202).then_some(())
        });
    }

    /// Atomically replaces the channels file with exactly `contents`.
    pub fn write_channels_raw(&self, contents: &str) {
        assert!(
            self.channels.is_file(),
            "write_channels_raw needs a file source"
        );
        self.replace(&self.channels, contents);
    }

    /// Atomically writes file `name` in the channels directory.
    pub fn write_in_dir(&self, name: &str, contents: &str) {
        assert!(
            self.channels.is_dir(),
            "write_in_dir needs a directory source"
        );
        self.replace(&self.channels.join(name), contents);
    }

    /// Writes a temporary file outside the watched paths, then renames it over `path`, so the
    /// dispatcher never sees a half-written file.
    fn replace(&self, path: &Path, contents: &str) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmp = self.root.0.join(format!(
            "write-{}.tmp",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&tmp, contents).expect("write temporary file");
        fs::rename(&tmp, path).expect("rename over the channels file");
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// The number of log lines so far; pass it to [`Dut::wait_log`] to look only at later lines.
    pub fn log_mark(&self) -> usize {
        self.logs.lines.lock().unwrap().len()
    }

    /// Waits up to `timeout` for a log line, at index `since` or later, that satisfies `wanted`,
    /// and returns it.
    pub fn wait_log(
        &self,
        since: usize,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.logs.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().skip(since).find(|l| wanted(l)) {
                return Some(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.logs.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pids of the dispatcher's child processes named `name` (e.g. `imc-control`), read
    /// from `/proc`.
    pub fn children(&self, name: &str) -> Vec<u32> {
        let me = self.child.id();
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // `pid (comm) state ppid ...`; comm may hold spaces, so split at its last ')'.
                let Some((head, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let comm = head.split_once('(').map_or("", |(_, c)| c);
                let ppid = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok());
                comm == name && ppid == Some(me)
            })
            .collect()
    }

    /// Sends signal `name` (`TERM`, `INT`, `KILL`, ...) with `kill(1)`.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}: {status}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit and returns how it ended, or `None` if it is
    /// still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("query the DUT process") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size of the process in KiB (`VmRSS` of `/proc/<pid>/status`).
    #[track_caller]
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Virtual memory size of the process in KiB (`VmSize` of `/proc/<pid>/status`): address
    /// space reserved, touched or not, so it also shows allocations nobody wrote to yet.
    #[track_caller]
    pub fn vm_size_kib(&self) -> u64 {
        self.status_kib("VmSize")
    }

    /// A `<field>:   <n> kB` line of `/proc/<pid>/status`.
    #[track_caller]
    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in {path}"))
    }

    /// CPU time the process has used so far, user and system (`utime` + `stime` of
    /// `/proc/<pid>/stat`, every thread included). Its resolution is one clock tick (10 ms).
    #[track_caller]
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        // The command name (field 2) is in parentheses and may hold spaces: count from the last
        // `)`. After it come field 3 (state) onwards, so utime (14) and stime (15) are the 12th
        // and 13th.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no field {} in {path}: {stat:?}", i + 3))
        };
        let total = ticks(11) + ticks(12);
        Duration::from_nanos(total * 1_000_000_000 / clock_ticks_per_second())
    }

    /// Panics, with the logs, if the process has exited.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("query the DUT process") {
            panic!(
                "DUT exited with {status}\nlogs:\n{}",
                self.logs().join("\n")
            );
        }
    }

    fn wait_for_ingress(&mut self) -> SocketAddr {
        self.wait_for_line("ingress listening ... addr=", ingress_addr)
    }

    /// Waits for the first log line `parse` finds an address in; panics naming `what`.
    fn wait_for_line(&mut self, what: &str, parse: fn(&str) -> Option<SocketAddr>) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            {
                let lines = self.logs.lines.lock().unwrap();
                if let Some(addr) = lines.iter().find_map(|l| parse(l)) {
                    return addr;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    let _ = self
                        .logs
                        .grew
                        .wait_timeout(lines, left.min(Duration::from_millis(50)))
                        .unwrap();
                }
            }
            if let Some(status) = self.child.try_wait().expect("query the DUT process") {
                panic!(
                    "DUT exited with {status} before binding its ingress\nlogs:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no `{what}` line within {START_TIMEOUT:?}\nlogs:\n{}",
                    self.logs().join("\n")
                );
            }
        }
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let logs = self.logs();
            let tail = &logs[logs.len().saturating_sub(60)..];
            eprintln!("--- DUT logs (last {} lines) ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

fn read_logs(stderr: ChildStderr, logs: &Logs) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    // Ends at end of stream, i.e. when the process exits.
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        logs.lines.lock().unwrap().push(text);
        logs.grew.notify_all();
        line.clear();
    }
}

/// The address in an `ingress listening ... addr=127.0.0.1:PORT` line.
fn ingress_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("ingress listening") || line.contains("https ingress listening") {
        return None;
    }
    addr_field(line)
}

fn tls_ingress_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("https ingress listening") {
        return None;
    }
    addr_field(line)
}

fn addr_field(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    let value = rest.split(|c: char| c.is_whitespace() || c == ',').next()?;
    value.trim_matches('"').parse().ok()
}

/// `getconf CLK_TCK`: the unit of the times in `/proc/<pid>/stat` (100 on every common Linux).
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100)
    })
}

/// `IMC_DISPATCHER_BIN`, else `imc-dispatcher` next to the test binary's `deps/` directory.
fn binary() -> PathBuf {
    project_binary("imc-dispatcher", "IMC_DISPATCHER_BIN")
}

/// `$env`, else the workspace binary `name` next to the test binary's `deps/` directory (`cargo
/// test --workspace` builds every binary of the workspace first).
pub fn project_binary(name: &str, env: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace` first (or set {env})",
        bin.display()
    );
    bin
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "imc-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

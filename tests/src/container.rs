//! The imc-rs image in a real container runtime: Docker, through its CLI.
//!
//! [`images`] builds two images once per test process, both from binaries `cargo test` built on
//! the host (nothing can be pulled here):
//!
//! - the product image, from the repository's `Dockerfile` text below its `FINAL STAGE` line
//!   (verbatim), over a root file system laid out by `scripts/image-rootfs.sh`, the script the
//!   Dockerfile's own build stage runs; so the image users build and the image tested here differ
//!   only in where the binaries were compiled;
//! - a sink image holding `imc-loadgen` (same script), the subscriber the dispatcher delivers to.
//!
//! [`docker_available`] decides whether the container tests run: under CI (`CI` set and not
//! `false`/`0`) a daemon that does not answer fails the test; elsewhere the tests are skipped
//! with a loud message, never silently.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::dut::{project_binary, TempDir};

/// The product image the tests build (a tag of their own, so a user's `latest` is never touched).
pub const IMAGE: &str = "imc-rs/imc-dispatcher:e2e";
/// The sink image.
pub const SINK_IMAGE: &str = "imc-rs/e2e-sink:e2e";

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether a Docker daemon answers. Under CI a missing daemon is a failure; elsewhere the caller
/// skips its test after the loud message printed here.
#[track_caller]
pub fn docker_available() -> bool {
    let why = match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "`docker info` exited with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("`docker` could not be run: {e}"),
    };
    if under_ci() {
        panic!("the container tests need a Docker daemon under CI: {why}");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no Docker daemon answers ({why}).\n\
         !!!!!!!! The container tests (the image under upstream's restrictions) did not run.\n\
         !!!!!!!! Start dockerd to run them; under CI=true this is a failure.\n"
    );
    false
}

/// Runs `docker ARGS`, returning its output whatever its status.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run docker {args:?}: {e}"))
}

/// Runs `docker ARGS` and returns its trimmed stdout; panics with its stderr on failure.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} exited with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A name no other test (or test process) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "imc-e2e-{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The repository's Dockerfile from its `FINAL STAGE` marker line to the end: the image itself.
pub fn final_stage() -> String {
    let path = crate::repo().join("Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text
        .find("# ---- FINAL STAGE")
        .expect("the Dockerfile marks its final stage with `# ---- FINAL STAGE`");
    text[start..].to_string()
}

/// Sizes of the built images, in bytes, as Docker reports them.
pub struct Images {
    pub image_bytes: u64,
    /// Where the binaries came from (`target/debug`, or `IMC_DISPATCHER_BIN`'s directory).
    pub bin_dir: PathBuf,
}

/// Builds [`IMAGE`] and [`SINK_IMAGE`] once per process (see the module docs).
pub fn images() -> &'static Images {
    static BUILT: OnceLock<Images> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dispatcher = project_binary("imc-dispatcher", "IMC_DISPATCHER_BIN");
        let bin_dir = dispatcher.parent().expect("a directory").to_path_buf();
        let script = crate::repo().join("scripts/image-rootfs.sh");
        let build = |tag: &str, binaries: &str, dockerfile: String| {
            let ctx = TempDir::new();
            let out = Command::new("sh")
                .arg(&script)
                .arg(&bin_dir)
                .arg(ctx.0.join("rootfs"))
                .env("BINARIES", binaries)
                .output()
                .expect("run scripts/image-rootfs.sh");
            assert!(
                out.status.success(),
                "image-rootfs.sh {binaries}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(ctx.0.join("Dockerfile"), dockerfile).expect("write Dockerfile");
            // The classic builder: it needs no BuildKit plugin, which this machine's Docker
            // client lacks, and builds the Dockerfile's stages as written.
            let out = Command::new("docker")
                .args(["build", "-q", "-t", tag, "."])
                .env("DOCKER_BUILDKIT", "0")
                .current_dir(&ctx.0)
                .output()
                .expect("run docker build");
            assert!(
                out.status.success(),
                "docker build {tag}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // The product: the Dockerfile's final stage, whose `COPY --from=build /rootfs/ /` reads
        // the stage named `build`, here one holding the host-built root file system.
        build(
            IMAGE,
            "imc-dispatcher imc-control",
            format!(
                "FROM scratch AS build\nCOPY rootfs/ /rootfs/\n\n{}",
                final_stage()
            ),
        );
        build(
            SINK_IMAGE,
            "imc-loadgen",
            "FROM scratch\nCOPY rootfs/ /\nUSER 65532:65532\nENTRYPOINT [\"/usr/local/bin/imc-loadgen\"]\n"
                .to_string(),
        );
        let size = docker_ok(&["image", "inspect", "-f", "{{.Size}}", IMAGE]);
        Images {
            image_bytes: size.parse().expect("image size in bytes"),
            bin_dir,
        }
    })
}

/// A user-defined bridge network, removed on drop. Containers on it resolve each other's names
/// and aliases through Docker's embedded DNS server, as pods resolve Services.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create() -> Network {
        let name = unique("net");
        docker_ok(&["network", "create", &name]);
        Network { name }
    }

    /// The host's address on this network: a fixture on the host bound here is reachable from
    /// the containers.
    pub fn gateway(&self) -> IpAddr {
        docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &self.name,
        ])
        .parse()
        .expect("the network's gateway address")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A container started with `docker run -d`, removed (with `-f`) on drop; its log is printed
/// when the test is failing.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique> RUN_ARGS IMAGE CMD`.
    #[track_caller]
    pub fn run(prefix: &str, run_args: &[&str], image: &str, cmd: &[&str]) -> Container {
        let name = unique(prefix);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(run_args);
        args.push(image);
        args.extend_from_slice(cmd);
        docker_ok(&args);
        Container { name }
    }

    /// The container's address on its (first) network.
    pub fn ip(&self) -> IpAddr {
        docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &self.name,
        ])
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{} has no address (did it exit?)", self.name))
        .parse()
        .expect("an IP address")
    }

    /// Everything the container wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `Some(exit code)` once the container has stopped.
    pub fn exit_code(&self) -> Option<i64> {
        let state = docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.name,
        ]);
        let (status, code) = state.split_once(' ').expect("status and exit code");
        (status == "exited" || status == "dead").then(|| code.parse().expect("an exit code"))
    }

    /// Waits up to `timeout` for the container to stop by itself; its exit code.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- docker logs {} ----\n{}", self.name, self.logs());
        }
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end: the status
/// and the whole response. `None` if the peer cannot be reached or does not answer in time.
pub fn http(addr: SocketAddr, head: &str, body: &[u8], timeout: Duration) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, timeout).ok()?;
    c.set_read_timeout(Some(timeout)).ok()?;
    let mut req = head.trim_end().replace('\n', "\r\n");
    req.push_str(&format!(
        "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    c.write_all(req.as_bytes()).ok()?;
    c.write_all(body).ok()?;
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

/// What the kubelet sends for upstream's probes (`GET /healthz` on 8080, `kube-probe/` agent).
pub fn kubelet_probe(ip: IpAddr, port: u16) -> Option<u16> {
    http(
        SocketAddr::new(ip, port),
        &format!(
            "GET /healthz HTTP/1.1\nHost: {ip}:{port}\nUser-Agent: kube-probe/1.32\nAccept: */*"
        ),
        b"",
        Duration::from_secs(1),
    )
    .map(|(status, _)| status)
}

/// A binary-mode CloudEvent POSTed to a channel by host; the status.
pub fn post_event(ip: IpAddr, channel_host: &str, id: &str, timeout: Duration) -> Option<u16> {
    http(
        SocketAddr::new(ip, 8080),
        &format!(
            "POST / HTTP/1.1\nHost: {channel_host}\nCe-Specversion: 1.0\nCe-Id: {id}\n\
             Ce-Source: /e2e/container\nCe-Type: dev.imc-rs.e2e\nContent-Type: application/json"
        ),
        br#"{"hello":"container"}"#,
        timeout,
    )
    .map(|(status, _)| status)
}

/// The `/report` of an `imc-loadgen sink` at `addr` (JSON text).
pub fn sink_report(addr: SocketAddr) -> Option<String> {
    http(
        addr,
        "GET /report HTTP/1.1\nHost: sink",
        b"",
        Duration::from_secs(2),
    )
    .and_then(|(status, text)| {
        (status == 200).then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))?
    })
}

/// The Prometheus text the dispatcher serves on 9090.
pub fn metrics(ip: IpAddr) -> Option<String> {
    http(
        SocketAddr::new(ip, 9090),
        "GET /metrics HTTP/1.1\nHost: metrics",
        b"",
        Duration::from_secs(2),
    )
    .map(|(_, text)| text)
}

/// The Docker run flags for upstream's Deployment's `securityContext` (contract §1.1):
/// `readOnlyRootFilesystem` → `--read-only`, `capabilities.drop: [ALL]` → `--cap-drop ALL`,
/// `allowPrivilegeEscalation: false` → `no-new-privileges`; `runAsNonRoot` is met by the image's
/// numeric user, given again as `--user` as the kubelet would resolve it.
pub const RESTRICTED: &[&str] = &[
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

/// A seccomp profile file that refuses `syscalls` with `errno` and allows everything else.
///
/// The daemon on this machine (Docker Engine 20.10) still allows io_uring in its default
/// profile; Docker 25+ and containerd's RuntimeDefault do not (they drop `io_uring_setup`,
/// `io_uring_enter` and `io_uring_register` from the allow list, so those calls fail with the
/// profile's default errno, EPERM). Refusing exactly those calls over an allow-all base
/// reproduces what the dispatcher meets under a current RuntimeDefault; the other restrictions
/// of the real default profile are not reproduced by this file (the daemon's own default is run
/// as well, in another test).
pub fn seccomp_refusing(dir: &Path, name: &str, syscalls: &[&str], errno: u32) -> PathBuf {
    let names: Vec<String> = syscalls.iter().map(|s| format!("\"{s}\"")).collect();
    let profile = format!(
        "{{\"defaultAction\":\"SCMP_ACT_ALLOW\",\"syscalls\":[{{\"names\":[{}],\
         \"action\":\"SCMP_ACT_ERRNO\",\"errnoRet\":{errno}}}]}}",
        names.join(",")
    );
    let path = dir.join(name);
    std::fs::write(&path, profile).expect("write the seccomp profile");
    path
}

/// A temporary directory for mounts and profiles, removed on drop.
pub struct Scratch(TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(TempDir::new())
    }

    pub fn path(&self) -> &Path {
        &self.0 .0
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

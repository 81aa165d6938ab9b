//! The command line of the real binary: every flag documented with its environment variable,
//! and start-up refusals that say what is wrong and exit 2. (Being an integration test of this
//! package, it also makes `cargo test` build `imc-dispatcher`, which the e2e suite runs.)

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imc-dispatcher"));
    cmd.args(args).env_remove("IMC_CHANNELS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("imc-dispatcher runs")
}

#[test]
fn help_documents_every_flag_and_its_variable() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, var) in [
        ("--channels", "IMC_CHANNELS"),
        ("--listen", "IMC_LISTEN"),
        ("--metrics-listen", "IMC_METRICS_LISTEN"),
        ("--workers", "IMC_WORKERS"),
        ("--io-driver", "IMC_IO_DRIVER"),
        ("--cluster-domain", "CLUSTER_DOMAIN"),
        ("--max-body-bytes", "IMC_MAX_BODY_BYTES"),
        ("--max-header-bytes", "IMC_MAX_HEADER_BYTES"),
        ("--header-read-timeout", "IMC_HEADER_READ_TIMEOUT"),
        ("--idle-timeout", "IMC_IDLE_TIMEOUT"),
        ("--log-format", "IMC_LOG_FORMAT"),
        ("--tls-listen", "IMC_TLS_LISTEN"),
        ("--tls-cert", "IMC_TLS_CERT"),
        ("--tls-key", "IMC_TLS_KEY"),
        ("--transport-encryption", "TRANSPORT_ENCRYPTION"),
        ("--custom-certs-dir", "IMC_CUSTOM_CERTS_DIR"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

#[test]
fn no_channel_source_is_refused_with_a_reason() {
    let out = run(&["--listen", "127.0.0.1:0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--channels"));
}

#[test]
fn missing_channels_path_is_refused_with_the_path() {
    let out = run(
        &[
            "--channels",
            "/nonexistent/imc.yaml",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/imc.yaml"));
}

#[test]
fn bad_tls_settings_are_refused_with_the_variable() {
    for (var, value) in [
        ("TLS_MIN_VERSION", "1.1"),
        ("TLS_CIPHER_SUITES", "TLS_NOT_A_SUITE"),
        ("TLS_CURVE_PREFERENCES", "CurveP521"),
    ] {
        let out = run(
            &[
                "--channels",
                "/dev/null",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            &[(var, value)],
        );
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}={value}: {err}");
    }
    let out = run(&["--transport-encryption", "sometimes"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_flag_values_are_refused() {
    let out = run(&["--io-driver", "kqueue"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--idle-timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}

/// A dispatcher on a one-channel file, with the given environment, its stderr piped; returned
/// once it logged that the channel set is applied.
struct Started {
    child: std::process::Child,
    stderr: Option<std::io::Lines<std::io::BufReader<std::process::ChildStderr>>>,
    dir: std::path::PathBuf,
}

impl Started {
    fn new(name: &str, env: &[(&str, &str)]) -> Started {
        let dir = std::env::temp_dir().join(format!("imc-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "kind: InMemoryChannel\nmetadata: {name: a}\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imc-dispatcher"))
            .args([
                "--channels",
                file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0", "--workers", "1"])
            .args(["--tls-listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let applied = lines.any(|l| l.is_ok_and(|l| l.contains("channel set applied")));
        let mut s = Started {
            child,
            stderr: Some(lines),
            dir,
        };
        assert!(applied, "start-up failed");
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "exited after start-up"
        );
        s
    }

    /// Waits up to 10 s for the process to exit on its own.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn upstream_deployment_variables_never_break_startup() {
    // Upstream panics on MAX_IDLE_CONNS_PER_HOST=0; imc-rs must start with what its Deployment sets.
    Started::new(
        "env",
        &[
            ("SYSTEM_NAMESPACE", "knative-eventing"),
            ("POD_NAME", "imc-dispatcher-0"),
            ("CONTAINER_NAME", "dispatcher"),
            ("MAX_IDLE_CONNS", "0"),
            ("MAX_IDLE_CONNS_PER_HOST", "nonsense"),
            ("CONFIG_LOGGING_NAME", "config-logging"),
            ("CONFIG_OBSERVABILITY_NAME", "config-observability"),
            ("METRICS_DOMAIN", "knative.dev/inmemorychannel-dispatcher"),
        ],
    );
}

#[test]
fn sigterm_drains_even_when_stderr_is_gone() {
    // Logging into a closed pipe must not kill the threads that log: the signal thread logs
    // "draining" right before it starts the drain.
    let mut d = Started::new("pipe", &[]);
    d.stderr = None; // the read end closes: every later log line hits a broken pipe
    let status = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(d.exit_code(), Some(0), "no clean drain with stderr closed");
}

//! `imc-loadgen sink` as a process: started on a free port, asked for its report over HTTP,
//! stopped with SIGTERM or awaited when it exits by itself (`--exit-when-complete`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `IMC_LOADGEN_BIN`, else `imc-loadgen` beside the test binary.
pub fn loadgen_binary() -> PathBuf {
    crate::dut::project_binary("imc-loadgen", "IMC_LOADGEN_BIN")
}

/// A running `imc-loadgen sink`, killed when dropped.
pub struct LoadgenSink {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl LoadgenSink {
    /// `BIN sink --listen 127.0.0.1:0 ARGS`, once it has said where it listens. Its stdout (the
    /// `--display` events, the `--json` report) is kept for [`LoadgenSink::stop`]; its stderr is
    /// passed through to the test's output.
    pub fn start(bin: &Path, args: &[&str]) -> LoadgenSink {
        let mut child = Command::new(bin)
            .args(["sink", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} sink: {e}", bin.display()));
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("the sink's first line");
        let addr = line
            .strip_prefix("sink listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the sink: {line:?}"));
        // Keep draining stderr so the sink never blocks on it; its report goes there.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            eprint!("{rest}");
        });
        LoadgenSink {
            child: Some(child),
            addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The body of `GET /report` (JSON).
    pub fn report(&self) -> String {
        let mut c = TcpStream::connect(self.addr).expect("connect to the sink");
        c.write_all(b"GET /report HTTP/1.1\r\nHost: sink\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut resp = String::new();
        c.read_to_string(&mut resp).expect("read");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        resp.split_once("\r\n\r\n")
            .expect("a head and a body")
            .1
            .to_owned()
    }

    /// Stops the sink with SIGTERM; returns its stdout and exit status.
    pub fn stop(mut self) -> Output {
        let child = self.child.take().expect("running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {}", child.id());
        child.wait_with_output().expect("the sink exits")
    }

    /// Waits for the sink to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the sink did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("the sink's output")
    }
}

impl Drop for LoadgenSink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

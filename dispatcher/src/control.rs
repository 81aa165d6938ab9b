//! The cluster channel source: imc-control, run as the dispatcher's supervised child, hands it
//! versioned snapshots of the cluster's InMemoryChannels over an inherited socket pair (no
//! writable path, no second container: upstream's Deployment runs one read-only container).
//!
//! One thread, off the cores, does everything here: it starts `imc-control` (found next to this
//! executable), reads its snapshots, builds the channel set with the same translation the file
//! source uses (a rejected channel keeps its previous configuration and is logged with the
//! field), publishes it, waits until every worker has installed it, and acknowledges it with what
//! became of each channel (imc-control writes status only for channels acknowledged as served,
//! D17). If the child exits it is restarted with capped backoff; meanwhile the dispatcher serves
//! its last snapshot and stays ready.
//!
//! Never blocks a worker and never holds a lock a worker takes: the only shared state is the
//! [`Hub`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channels::{BuildOptions, ChannelSet, FileLoad, Hub};
use crate::imc::{Imc, Source};
use crate::tls::{certified_key, ClientTrust, ServerCert};
use crate::wire::{
    self, Ack, ChannelResult, Decoder, Snapshot, TlsInputs, ToControl, ToDispatcher,
};
use rustls::crypto::CryptoProvider;

/// The environment variable that tells imc-control which inherited descriptor is its end.
pub const CONTROL_FD_ENV: &str = "IMC_CONTROL_FD";

/// Restart backoff of the child: doubles from the first to the cap; reset after a long run.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);

/// How often the source looks whether every worker has installed a published set (workers look
/// for a new set between requests and every 20 ms when idle).
const INSTALL_POLL: Duration = Duration::from_millis(1);

/// The origin recorded for channels from the cluster, in logs and in the set.
const ORIGIN: &str = "<imc-control>";

/// The pid of the running child, for the signal thread to pass SIGTERM on (0: none).
pub static CHILD_PID: AtomicI32 = AtomicI32::new(0);

/// What the supervisor needs to start the child and build sets.
pub struct ControlSource {
    pub program: PathBuf,
    /// Arguments for imc-control (`--kubeconfig`, `--disable-ha`); its other settings come
    /// from the environment it inherits (`SYSTEM_NAMESPACE`, `NAMESPACE`, `POD_NAME`, ...).
    pub args: Vec<String>,
    pub cluster_domain: String,
    pub namespace_mode: Option<String>,
    pub hub: Arc<Hub>,
    /// Where the cluster's 8443 certificate goes, and the provider that parses it; `None` when
    /// `--tls-cert`/`--tls-key` files are served instead.
    pub server_cert: Option<(Arc<ServerCert>, Arc<CryptoProvider>)>,
}

/// The version last applied, and the set it built (the next delta applies to it).
struct State {
    version: Option<u64>,
    set: Arc<ChannelSet>,
    /// The server certificate last installed from a snapshot (the trust bundles are kept by
    /// [`ClientTrust`], which compares them itself).
    server: Option<wire::ServerCert>,
}

impl ControlSource {
    /// The imc-control next to `exe` (the dispatcher's own path).
    pub fn program_next_to(exe: &std::path::Path) -> PathBuf {
        exe.with_file_name("imc-control")
    }

    /// Runs the child, restarted forever, on the calling thread.
    pub fn run(self) {
        let mut state = State {
            version: None,
            set: Arc::new(ChannelSet::default()),
            server: None,
        };
        let mut backoff = RESTART_FIRST;
        let mut failing = false;
        loop {
            if self.hub.is_draining() {
                return;
            }
            let started = Instant::now();
            match self.spawn() {
                Ok((mut child, stream)) => {
                    if failing {
                        tracing::info!(pid = child.id(), "imc-control started again");
                        failing = false;
                    } else {
                        tracing::info!(pid = child.id(), program = %self.program.display(), "imc-control started");
                    }
                    CHILD_PID.store(child.id() as i32, Ordering::Release);
                    let why = self.converse(stream, &mut state);
                    let status = child.wait();
                    CHILD_PID.store(0, Ordering::Release);
                    if self.hub.is_draining() {
                        tracing::info!(?status, "imc-control stopped");
                        return;
                    }
                    tracing::warn!(?status, reason = %why, serving = state.set.len(),
                        "imc-control exited; the last snapshot stays in force and it is restarted");
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(program = %self.program.display(), error = %e,
                            "cannot start imc-control; retrying with backoff");
                        failing = true;
                    }
                }
            }
            if started.elapsed() > STABLE_RUN {
                backoff = RESTART_FIRST;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(RESTART_CAP);
        }
    }

    /// Starts the child with its end of a fresh socket pair.
    fn spawn(&self) -> io::Result<(Child, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        // The child's end must survive exec: clear close-on-exec on it (ours keeps it).
        let fd = theirs.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_SETFD with 0 only clears FD_CLOEXEC.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(CONTROL_FD_ENV, fd.to_string())
            .spawn()?;
        drop(theirs);
        Ok((child, ours))
    }

    /// Serves one child until its end closes; returns why the conversation ended.
    fn converse(&self, mut stream: UnixStream, state: &mut State) -> String {
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            loop {
                match decoder.message::<ToDispatcher>() {
                    Ok(Some(ToDispatcher::Snapshot(snap))) => {
                        let reply = self.apply(snap, state);
                        if let Err(e) = stream.write_all(&wire::encode(&reply)) {
                            return format!("cannot write to imc-control: {e}");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("bad frame from imc-control: {e}"),
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => return "imc-control closed its end".into(),
                Ok(n) => decoder.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return format!("cannot read from imc-control: {e}"),
            }
        }
    }

    /// The Secret's certificate for the 8443 listener, swapped atomically (open connections
    /// keep theirs). A pair that does not parse keeps the previous certificate; a Secret that is
    /// gone leaves none (handshakes fail, as upstream's with no Secret).
    fn install_server_cert(&self, tls: &TlsInputs) {
        let Some((target, provider)) = &self.server_cert else {
            return;
        };
        match &tls.server {
            Some(c) => match certified_key(c.cert_pem.as_bytes(), c.key_pem.as_bytes(), provider) {
                Ok(key) => {
                    let replaced = target.is_set();
                    target.set(Some(Arc::new(key)));
                    tracing::info!(secret = %c.source, resource_version = %c.resource_version, replaced, "https ingress certificate from the Secret installed");
                }
                Err(e) => {
                    tracing::warn!(secret = %c.source, resource_version = %c.resource_version, error = %e, "https ingress certificate from the Secret not usable; keeping the previous one")
                }
            },
            None => {
                if target.is_set() {
                    target.set(None);
                    tracing::warn!("the server certificate Secret is gone (or lacks tls.crt/tls.key): https ingress handshakes fail until it is back");
                }
            }
        }
    }

    /// Applies a snapshot: the whole state, or a delta on the version last applied (then only
    /// the channels in it are translated again).
    fn apply(&self, snap: Snapshot, state: &mut State) -> ToControl {
        if let Some(base) = snap.base {
            if state.version != Some(base) {
                tracing::info!(base, have = ?state.version, "snapshot delta on another version; asking for the whole state");
                return ToControl::Resync {
                    have: state.version,
                };
            }
        }
        let mut upserted = Vec::with_capacity(snap.upserts.len());
        let mut imcs = Vec::with_capacity(snap.upserts.len());
        let mut malformed = 0;
        for object in snap.upserts {
            match serde_json::from_str::<Imc>(object.get()) {
                Ok(imc) => {
                    upserted.push((imc.key(), imc.metadata.generation));
                    imcs.push(imc);
                }
                Err(e) => {
                    malformed += 1;
                    tracing::error!(error = %e, "imc-control sent an InMemoryChannel the dispatcher cannot read; skipped");
                }
            }
        }
        // The TLS inputs first: channels translated below take the trust they bring.
        if state.server != snap.tls.server {
            self.install_server_cert(&snap.tls);
            state.server = snap.tls.server.clone();
        }
        let trust_changed = ClientTrust::get().set_bundles(&snap.tls.trust_bundles);
        let opts = BuildOptions {
            cluster_domain: &self.cluster_domain,
            namespace_mode: self.namespace_mode.as_deref(),
            source: Source::Cluster,
        };
        let (set, report) = if snap.base.is_some() {
            let origin: Arc<std::path::Path> = std::path::Path::new(ORIGIN).into();
            ChannelSet::apply(&state.set, &origin, &imcs, &snap.deletes, &opts)
        } else {
            let loads = [FileLoad {
                path: PathBuf::from(ORIGIN),
                result: Ok(imcs),
            }];
            ChannelSet::build(&state.set, &loads, &opts)
        };
        self.hub.set_features(&snap.features);
        // Channels this snapshot did not touch still hold destinations of the old trust.
        let set = if trust_changed {
            let (again, n) = set.reprepare_https();
            tracing::info!(
                channels = n,
                "trust bundles changed; channels with https targets prepared again"
            );
            again
        } else {
            set
        };
        if !set.same_as(&state.set) || self.hub.generation() == 0 {
            let set = Arc::new(set);
            let generation = self.hub.publish(set.clone());
            state.set = set;
            while !self.hub.installed_everywhere(generation) {
                if self.hub.is_draining() {
                    break;
                }
                std::thread::sleep(INSTALL_POLL);
            }
            tracing::info!(
                version = snap.version,
                generation,
                channels = state.set.len(),
                rejected = report.channels_rejected,
                "snapshot from imc-control installed"
            );
        }
        self.hub
            .record_reload(report.channels_rejected == 0 && malformed == 0);
        state.version = Some(snap.version);
        let outcomes: BTreeMap<&str, _> = report
            .outcomes
            .iter()
            .map(|(k, s, r)| (k.as_str(), (*s, r)))
            .collect();
        let channels = upserted
            .into_iter()
            .filter_map(|(key, generation)| {
                let (state, reason) = outcomes.get(key.as_str())?;
                Some(ChannelResult {
                    generation,
                    state: *state,
                    reason: (*reason).clone(),
                    key,
                })
            })
            .collect();
        ToControl::Ack(Ack {
            version: snap.version,
            channels,
        })
    }
}

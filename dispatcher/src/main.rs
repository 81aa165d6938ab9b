//! `imc-dispatcher`: parses the command line, binds the listeners, starts the channel source and
//! one worker thread per core.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use imc_dispatcher::channels::Hub;
use imc_dispatcher::config::{Args, LogFormat};
use imc_dispatcher::control::{ControlSource, CHILD_PID};
use imc_dispatcher::source::FileSource;
use imc_dispatcher::tls::{ClientTrust, ServerCert, Settings};
use imc_dispatcher::worker::{self, Driver, WorkerSpec};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use tracing_subscriber::EnvFilter;

/// How often the https ingress's certificate files are re-read.
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

// One allocator for all cores, with per-thread heaps: allocation on a core never contends.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(args: &Args) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        eprintln!("--log-level {}: {e}; using info", args.log_level);
        EnvFilter::new("info")
    });
    // A log line that cannot be written (stderr closed, log collector gone) is dropped.
    // tracing-subscriber would otherwise report it with eprintln!, which panics when stderr is
    // the broken part, and every thread that logs would die with it.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_target(false);
    match args.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

/// A panic is a bug; a thread that died of one would leave a listener nobody accepts on, a source
/// nobody reloads or a drain nobody starts. Abort instead, so the supervisor restarts the process.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

/// Where the channels come from.
enum ChannelsFrom {
    File(PathBuf),
    Cluster,
}

fn main() -> ExitCode {
    abort_on_panic();
    let args = Args::parse();
    init_logging(&args);
    // The channel source: a file of manifests, or the cluster (in a pod, or with --kubeconfig).
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let source = match (&args.channels, &args.kubeconfig) {
        (Some(path), _) => {
            if let Err(e) = std::fs::metadata(path) {
                tracing::error!(path = %path.display(), error = %e, "--channels path cannot be read");
                return ExitCode::from(2);
            }
            ChannelsFrom::File(path.clone())
        }
        (None, Some(_)) => ChannelsFrom::Cluster,
        (None, None) if in_cluster => ChannelsFrom::Cluster,
        (None, None) => {
            tracing::error!("no channel source: pass --channels PATH (a file or directory of InMemoryChannel manifests), or run in a cluster (or with --kubeconfig)");
            return ExitCode::from(2);
        }
    };
    let workers = args.worker_count();
    let (driver, refusal) = match Driver::choose(args.io_driver) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(why) = &refusal {
        // The one line of this fallback; `imc_io_driver_info{fallback=...}` says it too.
        tracing::warn!(
            reason = why.code,
            "io_uring is not available: {}; using epoll",
            why.detail
        );
    }
    let (listeners, addr) = match worker::bind_listeners(args.listen, workers) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %args.listen, error = %e, "cannot bind the ingress");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        %addr,
        workers,
        driver = driver.name(),
        version = env!("CARGO_PKG_VERSION"),
        pod = args.pod_name.as_deref().unwrap_or("-"),
        container = args.container_name.as_deref().unwrap_or("-"),
        system_namespace = %args.system_namespace,
        "ingress listening"
    );

    // TLS, both directions: the TLS_* settings (a bad value stops start-up), the trust of https
    // targets, and the https ingress with its certificate (watched: rotation needs no restart).
    let tls_settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    ClientTrust::load(tls_settings.clone(), &args.custom_certs_dir).install();
    let server_cert = Arc::new(ServerCert::default());
    let tls_config = match imc_dispatcher::tls::server_config(&tls_settings, server_cert.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if let Err(e) = imc_dispatcher::tls::watch_server_cert(
                cert.clone(),
                key.clone(),
                tls_settings.provider(),
                server_cert.clone(),
                CERT_POLL,
            ) {
                tracing::error!(error = %e, "cannot start the certificate watcher");
                return ExitCode::from(1);
            }
        }
        _ if args.channels.is_none() => tracing::info!("https ingress certificate: from the Secret imc-dispatcher-server-tls, through imc-control (until it arrives, handshakes fail)"),
        _ => tracing::info!("no --tls-cert/--tls-key: https ingress handshakes fail until a certificate is configured"),
    }
    let (tls_listeners, tls_addr) = match worker::bind_listeners(args.tls_listen, workers) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %args.tls_listen, error = %e, "cannot bind the https ingress");
            return ExitCode::from(1);
        }
    };
    tracing::info!(addr = %tls_addr, "https ingress listening");

    let hub = Arc::new(Hub::new(workers));
    hub.set_default_encryption(args.transport_encryption);
    if let Err(e) = spawn_signal_thread(hub.clone()) {
        tracing::error!(error = %e, "cannot install signal handlers");
        return ExitCode::from(1);
    }
    let started = match source {
        ChannelsFrom::File(path) => {
            let source = FileSource::new(
                path,
                args.cluster_domain.clone(),
                args.namespace.clone(),
                hub.clone(),
            );
            std::thread::Builder::new()
                .name("imc-source".into())
                .spawn(move || source.run())
        }
        ChannelsFrom::Cluster => {
            let program = match &args.control_bin {
                Some(p) => p.clone(),
                None => match std::env::current_exe() {
                    Ok(exe) => ControlSource::program_next_to(&exe),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot find this executable to find imc-control next to it");
                        return ExitCode::from(1);
                    }
                },
            };
            let mut control_args = Vec::new();
            if let Some(k) = &args.kubeconfig {
                control_args.push("--kubeconfig".to_owned());
                control_args.push(k.display().to_string());
            }
            if args.disable_ha {
                control_args.push("--disable-ha".to_owned());
            }
            // The child inherits the environment too; the flags carry what was given as flags.
            control_args.push("--system-namespace".to_owned());
            control_args.push(args.system_namespace.clone());
            if let Some(pod) = &args.pod_name {
                control_args.push("--pod-name".to_owned());
                control_args.push(pod.clone());
            }
            let source = ControlSource {
                program,
                args: control_args,
                cluster_domain: args.cluster_domain.clone(),
                namespace_mode: args.namespace.clone(),
                hub: hub.clone(),
                // The Secret imc-dispatcher-server-tls, unless --tls-cert/--tls-key name files.
                server_cert: args
                    .tls_cert
                    .is_none()
                    .then(|| (server_cert.clone(), tls_settings.provider())),
            };
            std::thread::Builder::new()
                .name("imc-control-source".into())
                .spawn(move || source.run())
        }
    };
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the channel source");
        return ExitCode::from(1);
    }

    // D12: metrics on by default, scraped on their own thread.
    let registries: Vec<_> = (0..workers)
        .map(|_| Arc::new(imc_dispatcher::metrics::WorkerRegistry::default()))
        .collect();
    match imc_dispatcher::metrics::bind(args.metrics_listen) {
        Ok((listener, addr)) => {
            tracing::info!(%addr, "metrics listening");
            let (regs, hub) = (registries.clone(), hub.clone());
            let info = imc_dispatcher::metrics::ProcessInfo {
                driver: driver.name(),
                fallback: refusal.as_ref().map(|r| r.code),
            };
            let spawned = std::thread::Builder::new()
                .name("imc-metrics".into())
                .spawn(move || imc_dispatcher::metrics::serve(listener, regs, hub, info));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the metrics listener");
                return ExitCode::from(1);
            }
        }
        Err(e) => {
            tracing::error!(addr = %args.metrics_listen, error = %e, "cannot bind the metrics listener");
            return ExitCode::from(1);
        }
    }

    // DNS lookups of subscriber hosts block; they run here, never on a worker core.
    let blocking = monoio::blocking::DefaultThreadPool::new(2);
    let limits = args.limits();
    let mut handles = Vec::with_capacity(workers);
    for (id, (listener, tls_listener)) in listeners.into_iter().zip(tls_listeners).enumerate() {
        let spec = WorkerSpec {
            id,
            driver,
            listener,
            tls_listener,
            tls_config: tls_config.clone(),
            hub: hub.clone(),
            limits,
            max_idle_per_host: args.idle_per_destination(),
            max_inflight: args.max_inflight_deliveries,
            max_conns: args.max_connections,
            max_buffered_body: args.max_buffered_body_bytes,
            shutdown_grace: args.shutdown_grace,
            blocking: blocking.clone(),
            registry: registries[id].clone(),
            metrics_enabled: !args.no_metrics,
        };
        let handle = std::thread::Builder::new()
            .name(format!("imc-worker-{id}"))
            .spawn(move || worker::run(spec));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot start a worker thread");
                return ExitCode::from(1);
            }
        }
    }
    let mut abandoned = 0;
    let mut failed = false;
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(n)) => abandoned += n,
            Ok(Err(e)) => {
                tracing::error!(worker = id, error = %e, "worker stopped");
                failed = true;
            }
            Err(_) => {
                tracing::error!(worker = id, "worker panicked");
                failed = true;
            }
        }
    }
    if abandoned > 0 {
        tracing::error!(abandoned, grace = ?args.shutdown_grace, "grace period over; requests and deliveries abandoned");
        return ExitCode::from(1);
    }
    if failed {
        return ExitCode::from(1);
    }
    tracing::info!("drained; every accepted event was finished");
    ExitCode::SUCCESS
}

/// D13: SIGTERM (or SIGINT) starts the drain; a second one ends the process at once.
fn spawn_signal_thread(hub: Arc<Hub>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("imc-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::warn!(signal = sig, "second signal; exiting without draining");
                    std::process::exit(1);
                }
                tracing::info!(
                    signal = sig,
                    "draining: no new connections, finishing accepted events"
                );
                hub.start_drain();
                // imc-control goes too (it releases its lease); the last snapshot stays in force.
                let child = CHILD_PID.load(Ordering::Acquire);
                if child > 0 {
                    // SAFETY: kill(2) with a pid this process spawned and has not reaped yet
                    // (the supervisor clears CHILD_PID before it reaps); no memory is involved.
                    unsafe {
                        libc::kill(child, libc::SIGTERM);
                    }
                }
            }
        })?;
    Ok(())
}

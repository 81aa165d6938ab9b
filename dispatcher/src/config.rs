//! Command line and environment. Every flag can also be set through an environment variable
//! (`IMC_*`); the variables of upstream's Deployment are accepted and never break start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The I/O driver of the worker runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoDriver {
    /// io_uring when the kernel and seccomp allow it, epoll otherwise.
    Auto,
    /// io_uring only; start-up fails if it is refused.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// `transport-encryption` (contract §6.1): which ingress port serves events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[repr(u8)]
pub enum Encryption {
    /// 8080 serves; 8443 answers 404 after the handshake (upstream's default).
    Disabled = 0,
    /// Both ports serve.
    Permissive = 1,
    /// 8443 serves; 8080 answers 404 to everything but probes.
    Strict = 2,
}

impl Encryption {
    /// The value of the `transport-encryption` flag of `config-features` (upstream's names).
    pub fn from_flag(v: &str) -> Option<Encryption> {
        match v.trim().to_ascii_lowercase().as_str() {
            "disabled" => Some(Encryption::Disabled),
            "permissive" => Some(Encryption::Permissive),
            "strict" => Some(Encryption::Strict),
            _ => None,
        }
    }

    pub fn from_u8(v: u8) -> Encryption {
        match v {
            1 => Encryption::Permissive,
            2 => Encryption::Strict,
            _ => Encryption::Disabled,
        }
    }

    /// Whether the plain HTTP port (8080) serves events.
    pub fn plain_serves(self) -> bool {
        self != Encryption::Strict
    }

    /// Whether the https port (8443) serves events.
    pub fn tls_serves(self) -> bool {
        self != Encryption::Disabled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// imc-dispatcher: receives CloudEvents for InMemoryChannels and delivers them to every subscriber.
#[derive(Debug, Clone, Parser)]
#[command(name = "imc-dispatcher", version, about, long_about = None)]
pub struct Args {
    /// InMemoryChannel manifests to serve: a YAML (multi-document) or JSON file, or a directory of
    /// them, as `kubectl get imc -o yaml` prints them. Watched; changes apply without a restart.
    /// Without it, the channels come from the cluster (in a pod, or with --kubeconfig) through
    /// imc-control.
    #[arg(long, env = "IMC_CHANNELS", value_name = "PATH")]
    pub channels: Option<PathBuf>,

    /// Serve the InMemoryChannels of the cluster this kubeconfig points at (through imc-control,
    /// started as a child). In a pod the service account is used without it.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// No leader election: this replica writes status even if others run (upstream's flag).
    #[arg(long)]
    pub disable_ha: bool,

    /// The imc-control program [default: `imc-control` next to this executable].
    #[arg(long, env = "IMC_CONTROL_BIN", value_name = "PATH")]
    pub control_bin: Option<PathBuf>,

    /// Address of the event ingress (host- and path-routed). Port 0 picks a free port.
    #[arg(
        long,
        env = "IMC_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Address of the https event ingress (the same routes as --listen; contract §1.3). It
    /// always listens; without a certificate its handshakes fail. Port 0 picks a free port.
    #[arg(
        long,
        env = "IMC_TLS_LISTEN",
        default_value = "0.0.0.0:8443",
        value_name = "ADDR"
    )]
    pub tls_listen: SocketAddr,

    /// PEM certificate chain of the https ingress (standalone; in a cluster the
    /// imc-dispatcher-server-tls Secret mounted as files). Re-read on change, no restart.
    #[arg(long, env = "IMC_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#1, PKCS#8 or SEC1) of --tls-cert.
    #[arg(long, env = "IMC_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// `transport-encryption` (contract §6.1): disabled (8443 answers 404), permissive (both
    /// ports serve), strict (8080 answers 404 but to probes). The cluster's `config-features`
    /// flag of the same name overrides it while it is set.
    #[arg(
        long,
        env = "TRANSPORT_ENCRYPTION",
        value_enum,
        default_value = "disabled"
    )]
    pub transport_encryption: Encryption,

    /// PEM CA certificates trusted for https targets besides the system roots (every file of
    /// the directory; missing: none), as upstream's /knative-custom-certs.
    #[arg(
        long,
        env = "IMC_CUSTOM_CERTS_DIR",
        default_value = "/knative-custom-certs",
        value_name = "DIR"
    )]
    pub custom_certs_dir: PathBuf,

    /// Address of the metrics and health endpoint.
    #[arg(
        long,
        env = "IMC_METRICS_LISTEN",
        default_value = "0.0.0.0:9090",
        value_name = "ADDR"
    )]
    pub metrics_listen: SocketAddr,

    /// Worker threads, one runtime and one listener each [default: number of CPUs].
    #[arg(long, env = "IMC_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// I/O driver: io_uring, or epoll where container runtimes block io_uring.
    #[arg(long, env = "IMC_IO_DRIVER", value_enum, default_value = "auto")]
    pub io_driver: IoDriver,

    /// Cluster domain used for the host of channels that have no status.address.url.
    #[arg(
        long,
        env = "CLUSTER_DOMAIN",
        default_value = "cluster.local",
        value_name = "D"
    )]
    pub cluster_domain: String,

    /// Serve only channels of this namespace that carry `eventing.knative.dev/scope: namespace`
    /// (upstream's namespace-scoped dispatcher). Unset: serve cluster-scoped channels.
    #[arg(long, env = "NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,

    /// Largest accepted request body; larger requests get 413 (D3).
    #[arg(long, env = "IMC_MAX_BODY_BYTES", default_value_t = 32 << 20, value_name = "B")]
    pub max_body_bytes: usize,

    /// Largest accepted request head (request line and headers); larger ones get 431 (D4).
    #[arg(long, env = "IMC_MAX_HEADER_BYTES", default_value_t = 64 << 10, value_name = "B")]
    pub max_header_bytes: usize,

    /// Most headers accepted in one request; more get 431 (D4).
    #[arg(long, env = "IMC_MAX_HEADERS", default_value_t = 128, value_name = "N")]
    pub max_headers: usize,

    /// Time a client has to send a whole request head once it started one (D5), e.g. `10s`.
    #[arg(long, env = "IMC_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub header_read_timeout: Duration,

    /// Most time a request body may take to arrive, from the end of its head; past it the
    /// request gets 408 and the connection is closed. A slow body holds its buffer while it
    /// trickles: this bounds for how long.
    #[arg(long, env = "IMC_BODY_READ_TIMEOUT", default_value = "20s", value_parser = parse_duration, value_name = "DUR")]
    pub body_read_timeout: Duration,

    /// Request-body bytes one worker holds at once: bodies being read plus those of events still
    /// being delivered. A new body past it gets 503 with `Retry-After: 1` before it is read; a
    /// body that would pass it while arriving gets the same, then a close (D11 for memory).
    #[arg(long, env = "IMC_MAX_BUFFERED_BODY_BYTES", default_value_t = 256 << 20, value_name = "B")]
    pub max_buffered_body_bytes: usize,

    /// Most CloudEvent attributes (core and extensions) in one event, binary or structured; more
    /// get 413.
    #[arg(
        long,
        env = "IMC_MAX_ATTRIBUTES",
        default_value_t = 128,
        value_name = "N"
    )]
    pub max_attributes: usize,

    /// Time an idle keep-alive connection is kept open (D5), e.g. `60s`.
    #[arg(long, env = "IMC_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub idle_timeout: Duration,

    /// Idle connections kept per subscriber host and worker (upstream's variable).
    #[arg(long, env = "MAX_IDLE_CONNS_PER_HOST", default_value = "1000", value_parser = lenient_count, value_name = "N")]
    pub max_idle_conns_per_host: usize,

    /// Idle connections kept per destination (upstream's variable: upstream has one HTTP client
    /// per destination URL and this bounds each client's idle connections). A destination here
    /// is a pool's authority, so the bound that applies is the smaller of this and
    /// `MAX_IDLE_CONNS_PER_HOST`.
    #[arg(long, env = "MAX_IDLE_CONNS", default_value = "1000", value_parser = lenient_count, value_name = "N")]
    pub max_idle_conns: usize,

    /// The namespace this dispatcher runs in (upstream's variable, from the pod's
    /// `metadata.namespace`): config-features, the Lease and the TLS Secret live there. Passed
    /// on to imc-control; logged at start.
    #[arg(
        long,
        env = "SYSTEM_NAMESPACE",
        default_value = "knative-eventing",
        value_name = "NS"
    )]
    pub system_namespace: String,

    /// This pod's name (upstream's variable, from `metadata.name`); logged at start, and the
    /// first part of imc-control's Lease identity.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// This container's name (upstream's variable; upstream reads and does not use it either).
    #[arg(long, env = "CONTAINER_NAME", value_name = "NAME")]
    pub container_name: Option<String>,

    /// Subscriber deliveries in flight per worker, sync and async; past it the ingress answers
    /// 503 with `Retry-After: 1` (D11).
    #[arg(
        long,
        env = "IMC_MAX_INFLIGHT_DELIVERIES",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_inflight_deliveries: usize,

    /// Open client connections per worker; past it new connections are closed at once.
    #[arg(
        long,
        env = "IMC_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// On SIGTERM, time to finish every accepted event before exiting (D13).
    #[arg(long, env = "IMC_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration, value_name = "DUR")]
    pub shutdown_grace: Duration,

    /// Record no metrics (the endpoint still serves health, readiness and process gauges).
    #[arg(long, env = "IMC_NO_METRICS")]
    pub no_metrics: bool,

    /// Log format: `text` for people, `json` for log pipelines (one object per line).
    #[arg(long, env = "IMC_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `imc_dispatcher=debug`.
    #[arg(
        long,
        env = "IMC_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

/// Parses `10s`, `500ms`, `1m30s`, a bare number of seconds, or ISO 8601 (`PT10S`); shared with
/// imc-control (it lives in the model crate).
pub use imc_model::policy::parse_duration;

/// Upstream requires `MAX_IDLE_CONNS_PER_HOST` > 0 and panics otherwise; imc-rs never fails start-up
/// on upstream's variables: a value that is not a positive number falls back to the default.
fn lenient_count(s: &str) -> Result<usize, String> {
    Ok(s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(1000))
}

impl Args {
    /// Idle connections kept per authority and worker: the tighter of upstream's two bounds.
    pub fn idle_per_destination(&self) -> usize {
        self.max_idle_conns_per_host.min(self.max_idle_conns)
    }

    pub fn worker_count(&self) -> usize {
        self.workers
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The limits the ingress enforces, copied into every worker.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body: self.max_body_bytes,
            max_head: self.max_header_bytes,
            max_headers: self.max_headers.max(1),
            header_timeout: self.header_read_timeout,
            body_timeout: self.body_read_timeout,
            idle_timeout: self.idle_timeout,
            max_attributes: self.max_attributes.max(1),
        }
    }
}

/// Bounds of one ingress connection (D3-D5) and of one event.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub max_head: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_attributes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_accepted_form() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("PT1.5S").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn upstream_variables_never_break_startup() {
        assert_eq!(lenient_count("0").unwrap(), 1000);
        assert_eq!(lenient_count("abc").unwrap(), 1000);
        assert_eq!(lenient_count("100").unwrap(), 100);
    }
}

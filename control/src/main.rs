//! `imc-control`: the control plane of imc-rs. It watches the cluster's InMemoryChannels and the
//! `config-features` ConfigMap, hands imc-dispatcher complete, versioned snapshots over the
//! socket it inherited (the dispatcher starts it as its supervised child), and once the
//! dispatcher acknowledges that a channel is routed on every worker, the leader of the replicas
//! (a `coordination.k8s.io` Lease) writes `status.subscribers` back (D17).
//!
//! It runs on one thread (a current-thread tokio runtime): a few watch streams, one conversation
//! with the dispatcher, and writes paced by `KUBE_API_QPS`/`KUBE_API_BURST`. The dispatcher never
//! waits on it: when the API server is gone, or this process is, the dispatcher serves its last
//! snapshot.
//!
//! # Layout
//! - [`cache`]: the channels as last seen, the scope filter, and the snapshots made from them.
//! - [`link`]: the socket to the dispatcher (frames of `imc_model::wire`).
//! - [`lease`]: leader election on a Lease, with upstream's name and timing.
//! - [`status`]: the status write-back queue: JSON Patches on `/status`, paced and retried.

mod cache;
mod lease;
mod link;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use imc_model::wire::ServerCert;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use crate::cache::Cache;
use crate::lease::Election;
use crate::status::StatusWriter;

/// imc-control: watches InMemoryChannels for imc-dispatcher and writes their status back. Started
/// by imc-dispatcher (as its child, over an inherited socket); not meant to be run by hand.
#[derive(Debug, Clone, Parser)]
#[command(name = "imc-control", version, about, long_about = None)]
pub struct Args {
    /// The descriptor of the socket to the dispatcher (set by the dispatcher).
    #[arg(long, env = "IMC_CONTROL_FD", value_name = "FD")]
    pub control_fd: i32,

    /// Kubeconfig to use instead of the pod's service account.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the dispatcher: config-features, config-leader-election and the Lease live
    /// here (upstream's variable; required by upstream, defaulted here).
    #[arg(
        long,
        env = "SYSTEM_NAMESPACE",
        default_value = "knative-eventing",
        value_name = "NS"
    )]
    pub system_namespace: String,

    /// Namespace-scoped mode: watch only this namespace, serve only channels annotated
    /// `eventing.knative.dev/scope: namespace` (upstream's variable).
    #[arg(long, env = "NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,

    /// This replica's name, the first part of its Lease identity (upstream's variable; the
    /// host name when unset).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// No leader election: this replica writes status whatever other replicas do.
    #[arg(long)]
    pub disable_ha: bool,

    /// The Lease that elects the replica writing status; upstream's name, so that exactly one
    /// process writes during a rolling update from upstream's image to this one.
    #[arg(
        long,
        default_value = "inmemorychannel-dispatcher.knative.dev.eventing.pkg.reconciler.inmemorychannel.dispatcher.reconciler.00-of-01",
        value_name = "NAME"
    )]
    pub lease_name: String,

    /// The ConfigMap with `lease-duration`, `renew-deadline` and `retry-period` (upstream's
    /// variable and name); its values override the flags below.
    #[arg(
        long,
        env = "CONFIG_LEADER_ELECTION_NAME",
        default_value = "config-leader-election",
        value_name = "NAME"
    )]
    pub leader_election_config: String,

    /// How long a Lease holds without renewal.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it stops writing.
    #[arg(long, default_value = "40s", value_parser = parse_duration, value_name = "DUR")]
    pub renew_deadline: Duration,

    /// How often the Lease is tried (and renewed).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub retry_period: Duration,

    /// Writes per second to the API server (status patches, Lease updates), sustained.
    #[arg(long, env = "KUBE_API_QPS", default_value_t = 50.0, value_name = "N")]
    pub kube_api_qps: f64,

    /// Writes in a burst above the sustained rate.
    #[arg(long, env = "KUBE_API_BURST", default_value_t = 100, value_name = "N")]
    pub kube_api_burst: u32,

    /// A burst of changes within this window makes one snapshot.
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "DUR")]
    pub debounce: Duration,

    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "IMC_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: String,

    /// Log filter, e.g. `info` or `imc_control=debug`.
    #[arg(
        long,
        env = "IMC_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

use imc_model::policy::parse_duration;

/// Everything the main loop reacts to.
pub enum Msg {
    Channel(Box<Event<DynamicObject>>),
    ChannelsFailing(String),
    Features(BTreeMap<String, String>),
    /// The Secret `imc-dispatcher-server-tls`, if it exists with both keys.
    ServerCert(Option<ServerCert>),
    /// Every trust-bundle ConfigMap's data, `<configmap>/<key>` → PEM.
    TrustBundles(BTreeMap<String, String>),
    SettingFailing(Watched, String),
    FromDispatcher(imc_model::wire::ToControl),
    DispatcherGone(String),
    Leader(bool),
    PatchDone(String, Result<(), status::PatchError>),
    /// A failed status write's backoff is over: look at the channel again.
    Reconsider(String),
}

fn init_logging(args: &Args) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_target(false);
    if args.log_format == "json" {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(args))
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no cluster configuration (service account or KUBECONFIG): {e}")
        })?,
    };
    // Every write carries this name as its field manager too (managedFields).
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("imc-control/", env!("CARGO_PKG_VERSION"))),
    ));
    kube::Client::try_from(config).map_err(|e| format!("cannot build the API client: {e}"))
}

pub fn imc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("messaging.knative.dev", "v1", "InMemoryChannel"),
        "inmemorychannels",
    )
}

async fn run(args: Args) -> ExitCode {
    let (mut link_tx, mut link_rx) = match link::connect(args.control_fd) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(fd = args.control_fd, error = %e, "cannot use the socket to the dispatcher");
            return ExitCode::from(2);
        }
    };
    let client = match client(&args).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    // Watch events wait here for the main loop, a bounded number of them: a list of 10,000
    // channels must not sit in a queue as 10,000 decoded objects.
    let (watch_tx, mut watch_rx) = mpsc::channel::<Msg>(32);

    // The dispatcher's answers.
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match link_rx.next().await {
                    Ok(m) => {
                        if tx.send(Msg::FromDispatcher(m)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Msg::DispatcherGone(e));
                        return;
                    }
                }
            }
        });
    }

    // InMemoryChannels: all namespaces, or the one of a namespace-scoped dispatcher.
    {
        let ar = imc_resource();
        let api: Api<DynamicObject> = match &args.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(item) = stream.next().await {
                let msg = match item {
                    Ok(ev) => Msg::Channel(Box::new(ev)),
                    Err(e) => Msg::ChannelsFailing(e.to_string()),
                };
                if watch_tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }

    // config-features, the server certificate Secret and the trust bundles, in the system
    // namespace: each a small set of objects reduced to what the dispatcher needs and sent whole
    // with the next snapshot when that changes.
    {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &args.system_namespace);
        tokio::spawn(watch_set(
            cms.clone(),
            watcher::Config::default().fields("metadata.name=config-features"),
            Watched::Features,
            |set: &BTreeMap<String, ConfigMap>| {
                set.values()
                    .next()
                    .and_then(|cm| cm.data.clone())
                    .map(|d| d.into_iter().collect())
                    .unwrap_or_default()
            },
            tx.clone(),
            Msg::Features,
        ));
        tokio::spawn(watch_set(
            cms,
            watcher::Config::default().labels(&format!("{TRUST_BUNDLE_LABEL}=true")),
            Watched::TrustBundles,
            trust_bundles,
            tx.clone(),
            Msg::TrustBundles,
        ));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.system_namespace);
        tokio::spawn(watch_set(
            secrets,
            watcher::Config::default().fields(&format!("metadata.name={SERVER_TLS_SECRET}")),
            Watched::ServerTls,
            server_cert,
            tx.clone(),
            Msg::ServerCert,
        ));
    }

    let writer = StatusWriter::new(client.clone(), args.kube_api_qps, args.kube_api_burst);

    // Leader election (or none, with --disable-ha).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let election = if args.disable_ha {
        let _ = tx.send(Msg::Leader(true));
        None
    } else {
        let election = Election::new(client.clone(), &args, writer.limiter()).await;
        Some(tokio::spawn(election.run(tx.clone(), stop_rx)))
    };

    let mut cache = Cache::new(args.namespace.clone());
    let mut status = writer;
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGTERM handler");
                return ExitCode::from(1);
            }
        };
    let mut health = Health::default();
    loop {
        let wake = cache.next_send(args.debounce);
        tokio::select! {
            msg = async {
                tokio::select! {
                    m = rx.recv() => m,
                    m = watch_rx.recv() => m,
                }
            } => {
                let Some(msg) = msg else { return ExitCode::from(1) };
                match msg {
                    Msg::Channel(ev) => {
                        health.channels_ok();
                        for key in cache.on_event(*ev) {
                            status.consider(&key);
                        }
                    }
                    Msg::ChannelsFailing(e) => health.channels_failing(&e),
                    Msg::Features(f) => {
                        health.ok(Watched::Features);
                        cache.set_features(f);
                    }
                    Msg::ServerCert(c) => {
                        health.ok(Watched::ServerTls);
                        match &c {
                            Some(c) => tracing::info!(secret = %c.source, resource_version = %c.resource_version, "server certificate for 8443 from the Secret"),
                            None => tracing::info!(secret = SERVER_TLS_SECRET, "no usable server certificate Secret (absent, or without tls.crt and tls.key): 8443 handshakes fail until there is one"),
                        }
                        cache.set_server_cert(c);
                    }
                    Msg::TrustBundles(b) => {
                        health.ok(Watched::TrustBundles);
                        tracing::info!(bundles = b.len(), "trust bundles for https targets");
                        cache.set_trust_bundles(b);
                    }
                    Msg::SettingFailing(w, e) => health.failing(w, &e),
                    Msg::FromDispatcher(m) => {
                        for key in cache.on_reply(m) {
                            status.consider(&key);
                        }
                    }
                    Msg::DispatcherGone(e) => {
                        tracing::info!(reason = %e, "the dispatcher closed the socket; exiting");
                        return ExitCode::SUCCESS;
                    }
                    Msg::Leader(leading) => {
                        status.set_leader(leading);
                        if leading {
                            for key in cache.served_keys() {
                                status.consider(&key);
                            }
                        }
                    }
                    Msg::PatchDone(key, result) => status.done(&key, result, &tx),
                    Msg::Reconsider(key) => status.consider(&key),
                }
            }
            _ = sleep_until(wake) => {
                if let Some(frame) = cache.take_snapshot() {
                    if let Err(e) = link_tx.send(&frame).await {
                        tracing::info!(error = %e, "cannot write to the dispatcher; exiting");
                        return ExitCode::SUCCESS;
                    }
                }
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: exiting (the Lease is released)");
                let _ = stop_tx.send(true);
                if let Some(election) = election {
                    let _ = tokio::time::timeout(Duration::from_secs(3), election).await;
                }
                return ExitCode::SUCCESS;
            }
        }
        status.pump(&cache, &tx);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs the API server's watch health once per change, not once per attempt.
#[derive(Default)]
struct Health {
    channels_down: bool,
    settings_down: BTreeSet<Watched>,
}

impl Health {
    fn channels_failing(&mut self, e: &str) {
        if !self.channels_down {
            tracing::warn!(error = %e, "InMemoryChannel watch failing; retrying with backoff, the dispatcher keeps its last snapshot");
            self.channels_down = true;
        }
    }

    fn channels_ok(&mut self) {
        if self.channels_down {
            tracing::info!("InMemoryChannel watch recovered");
            self.channels_down = false;
        }
    }

    fn failing(&mut self, w: Watched, e: &str) {
        if self.settings_down.insert(w) {
            tracing::warn!(error = %e, "{} watch failing; retrying with backoff", w.name());
        }
    }

    fn ok(&mut self, w: Watched) {
        if self.settings_down.remove(&w) {
            tracing::info!("{} watch recovered", w.name());
        }
    }
}

/// The Secret holding the 8443 certificate (upstream's name, contract §1.1).
const SERVER_TLS_SECRET: &str = "imc-dispatcher-server-tls";
/// The label of the ConfigMaps whose data https targets trust (contract §6.5).
const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// The watches of the system namespace besides the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watched {
    Features,
    ServerTls,
    TrustBundles,
}

impl Watched {
    fn name(self) -> &'static str {
        match self {
            Watched::Features => "config-features",
            Watched::ServerTls => "Secret imc-dispatcher-server-tls",
            Watched::TrustBundles => "trust-bundle ConfigMaps",
        }
    }
}

/// Watches the objects `config` selects, keeps them by name, and sends `wrap(reduce(set))`
/// after the first complete list and whenever that value changes (a relist that changes nothing
/// sends nothing). Errors are reported (the watcher retries with client-go's backoff).
async fn watch_set<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: Watched,
    reduce: fn(&BTreeMap<String, K>) -> T,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: fn(T) -> Msg,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
    T: PartialEq + Clone,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut set: BTreeMap<String, K> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, K>> = None;
    let mut sent: Option<T> = None;
    let name_of = |o: &K| o.meta().name.clone().unwrap_or_default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name_of(&o), o);
                continue;
            }
            Ok(Event::InitDone) => set = listing.take().unwrap_or_default(),
            Ok(Event::Apply(o)) => {
                set.insert(name_of(&o), o);
            }
            Ok(Event::Delete(o)) => {
                set.remove(&name_of(&o));
            }
            Err(e) => {
                if tx.send(Msg::SettingFailing(what, e.to_string())).is_err() {
                    return;
                }
                continue;
            }
        }
        let next = reduce(&set);
        if sent.as_ref() != Some(&next) {
            sent = Some(next.clone());
            if tx.send(wrap(next)).is_err() {
                return;
            }
        }
    }
}

/// The Secret's `tls.crt` and `tls.key` (PEM), if it has both and they are text.
fn server_cert(set: &BTreeMap<String, Secret>) -> Option<ServerCert> {
    let secret = set.values().next()?;
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.trim().is_empty())
    };
    Some(ServerCert {
        source: format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default()
        ),
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// Every value of every trust-bundle ConfigMap (upstream trusts all data values).
fn trust_bundles(set: &BTreeMap<String, ConfigMap>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, cm) in set {
        for (key, value) in cm.data.iter().flatten() {
            out.insert(format!("{name}/{key}"), value.clone());
        }
    }
    out
}

//! TLS in both directions (contract §1.2, §6.1, §6.5): the settings upstream reads from
//! `TLS_MIN_VERSION`, `TLS_MAX_VERSION`, `TLS_CIPHER_SUITES` and `TLS_CURVE_PREFERENCES`
//! (knative.dev/pkg/tls, with Go's crypto/tls names), the trust of https targets, the client
//! configuration of each trust set, and the 8443 server certificate with its live reload.
//!
//! Budget: nothing here runs per request. Trust sets and client configurations are built off
//! the cores when a channel set is prepared, and cached (one per distinct `…CACerts`); the
//! server certificate is read by a file-watching thread and swapped atomically; a worker reads
//! it once per handshake.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};

/// Where the image's root CAs are, unless `SSL_CERT_FILE` says otherwise (as Go's x509 reads it).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// ALPN: HTTP/1.1 only, both ways (the dispatcher speaks nothing else).
const ALPN: &[u8] = b"http/1.1";
/// TLS sessions remembered per worker for resumption with https targets.
const SESSIONS_PER_WORKER: usize = 1024;

/// `TLS_MIN_VERSION` and friends, parsed.
#[derive(Clone)]
pub struct Settings {
    min: Version,
    max: Version,
    /// `TLS_CIPHER_SUITES`: the TLS 1.2 suites allowed; `None`: all. As in Go, the TLS 1.3
    /// suites are not configurable (a TLS 1.3 name in the list is accepted and changes nothing).
    tls12_suites: Option<Vec<SupportedCipherSuite>>,
    /// `TLS_CURVE_PREFERENCES`, in order; `None`: the provider's defaults.
    groups: Option<Vec<&'static dyn SupportedKxGroup>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Version {
    Tls12,
    Tls13,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("min", &self.min)
            .field("max", &self.max)
            .field(
                "tls12_suites",
                &self
                    .tls12_suites
                    .as_ref()
                    .map(|s| s.iter().map(|s| s.suite()).collect::<Vec<_>>()),
            )
            .field(
                "groups",
                &self
                    .groups
                    .as_ref()
                    .map(|g| g.iter().map(|g| g.name()).collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl Default for Settings {
    /// Upstream's default: TLS 1.3 only.
    fn default() -> Settings {
        Settings {
            min: Version::Tls13,
            max: Version::Tls13,
            tls12_suites: None,
            groups: None,
        }
    }
}

/// Go's `tls.CipherSuites()` names that rustls's ring provider implements.
fn suite_by_go_name(name: &str) -> Option<Option<SupportedCipherSuite>> {
    use ring::cipher_suite as cs;
    Some(match name {
        // TLS 1.3: accepted, not configurable (Go ignores them in Config.CipherSuites).
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            None
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => Some(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => Some(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            Some(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        _ => return None,
    })
}

/// Suites Go's `tls.CipherSuites()` lists that rustls does not implement (CBC modes, RSA key
/// exchange): refused with a reason rather than as unknown names.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

fn parse_version(var: &str, v: &str) -> Result<Version, String> {
    match v.trim() {
        "1.2" => Ok(Version::Tls12),
        "1.3" => Ok(Version::Tls13),
        other => Err(format!(
            "invalid {var} {other:?}: unsupported TLS version, must be \"1.2\" or \"1.3\""
        )),
    }
}

impl Settings {
    /// Reads the `TLS_*` variables of the process.
    pub fn from_env() -> Result<Settings, String> {
        Settings::from_vars(|k| std::env::var(k).ok())
    }

    /// Parses the `TLS_*` variables `get` returns, with upstream's names and values; empty
    /// values mean unset, as upstream reads them.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut s = Settings::default();
        if let Some(v) = var("TLS_MIN_VERSION") {
            s.min = parse_version("TLS_MIN_VERSION", &v)?;
        }
        if let Some(v) = var("TLS_MAX_VERSION") {
            s.max = parse_version("TLS_MAX_VERSION", &v)?;
        }
        if s.max < s.min {
            return Err(format!(
                "TLS_MAX_VERSION ({:?}) is below TLS_MIN_VERSION ({:?}): no version is left",
                s.max, s.min
            ));
        }
        if let Some(v) = var("TLS_CIPHER_SUITES") {
            let mut suites = Vec::new();
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match suite_by_go_name(name) {
                    Some(Some(suite)) => suites.push(suite),
                    Some(None) => {}
                    None if GO_ONLY_SUITES.contains(&name) => {
                        return Err(format!("invalid TLS_CIPHER_SUITES: cipher suite {name:?} is known to Go but not implemented by this build (rustls has no CBC or RSA key exchange suites)"))
                    }
                    None => {
                        return Err(format!(
                            "invalid TLS_CIPHER_SUITES: unknown cipher suite {name:?}"
                        ))
                    }
                }
            }
            s.tls12_suites = Some(suites);
        }
        if let Some(v) = var("TLS_CURVE_PREFERENCES") {
            let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let g: &'static dyn SupportedKxGroup = match name {
                    "X25519" => ring::kx_group::X25519,
                    "CurveP256" | "P-256" => ring::kx_group::SECP256R1,
                    "CurveP384" | "P-384" => ring::kx_group::SECP384R1,
                    "CurveP521" | "P-521" | "X25519MLKEM768" => {
                        return Err(format!("invalid TLS_CURVE_PREFERENCES: curve {name:?} is known to Go but not implemented by this build (ring provider: X25519, CurveP256, CurveP384)"))
                    }
                    _ => {
                        return Err(format!(
                            "invalid TLS_CURVE_PREFERENCES: unknown curve {name:?}"
                        ))
                    }
                };
                groups.push(g);
            }
            if groups.is_empty() {
                return Err("invalid TLS_CURVE_PREFERENCES: no curve named".into());
            }
            s.groups = Some(groups);
        }
        if s.min == Version::Tls12 && s.tls12_suites.as_ref().is_some_and(|v| v.is_empty()) {
            // Go would accept the list and fail every TLS 1.2 handshake; say it at start instead.
            tracing::warn!("TLS_CIPHER_SUITES names no TLS 1.2 suite: TLS 1.2 peers will fail");
        }
        Ok(s)
    }

    /// The ring provider restricted to these settings.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut p = ring::default_provider();
        if let Some(allowed) = &self.tls12_suites {
            p.cipher_suites.retain(|s| match s {
                SupportedCipherSuite::Tls13(_) => true,
                SupportedCipherSuite::Tls12(_) => allowed.iter().any(|a| a.suite() == s.suite()),
            });
        }
        if let Some(groups) = &self.groups {
            p.kx_groups = groups.clone();
        }
        Arc::new(p)
    }

    pub fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        let mut v = Vec::with_capacity(2);
        if self.max >= Version::Tls13 {
            v.push(&rustls::version::TLS13);
        }
        if self.min <= Version::Tls12 {
            v.push(&rustls::version::TLS12);
        }
        v
    }
}

/// What an https target connects with: the client configuration of its trust set and the name
/// its certificate must carry (SNI and verification).
#[derive(Clone)]
pub struct ClientTls {
    /// The trust set's identity, part of the pool key: connections verified against one trust
    /// set are never reused for a target with another.
    pub trust_id: u64,
    /// Shared by every worker; each worker uses a copy with its own session cache
    /// ([`ClientTls::for_worker`]).
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust_id", &self.trust_id)
            .field("name", &self.name)
            .finish()
    }
}

impl ClientTls {
    /// This trust set's configuration with the worker's session cache: made once per worker and
    /// trust set (the pool keeps it with the target's idle list), never per connection.
    pub fn for_worker(&self, sessions: &Arc<ClientSessionMemoryCache>) -> Arc<ClientConfig> {
        let mut c = (*self.config).clone();
        c.resumption = Resumption::store(sessions.clone());
        Arc::new(c)
    }
}

/// The trust of https targets (contract §6.5): the system roots and the custom certificates,
/// read once at start, plus each target's own `…CACerts`.
pub struct ClientTrust {
    settings: Settings,
    provider: Arc<CryptoProvider>,
    /// The system roots and the custom certificates, read at start.
    fixed: RootCertStore,
    /// `fixed` plus the cluster's trust bundles (contract §6.5, from imc-control): what every
    /// https target trusts before its own `…CACerts`. Replaced by [`ClientTrust::set_bundles`].
    base: Mutex<Arc<RootCertStore>>,
    /// The trust bundles `base` holds, to see whether a snapshot changed them.
    bundles: Mutex<std::collections::BTreeMap<String, String>>,
    /// One client configuration per distinct `…CACerts` (`None`: the base trust alone).
    configs: Mutex<HashMap<Option<String>, TrustSet>>,
    next_id: AtomicU64,
}

/// A trust set's identity and client configuration.
type TrustSet = (u64, Arc<ClientConfig>);

static CLIENT_TRUST: OnceLock<ClientTrust> = OnceLock::new();

impl ClientTrust {
    /// Loads the system roots (`SSL_CERT_FILE`, else [`SYSTEM_CA_FILE`]) and every PEM file
    /// under `custom_dir` (missing: none). A file that cannot be read or holds no certificate is
    /// logged and skipped; none of this fails start-up.
    pub fn load(settings: Settings, custom_dir: &Path) -> ClientTrust {
        let mut base = RootCertStore::empty();
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE));
        match std::fs::read(&system) {
            Ok(pem) => {
                let (added, ignored) = add_pem(&mut base, &pem);
                tracing::info!(file = %system.display(), added, ignored, "system root CAs loaded");
            }
            Err(e) => {
                tracing::warn!(file = %system.display(), error = %e, "no system root CAs: https targets need their own CACerts or --custom-certs-dir")
            }
        }
        match std::fs::read_dir(custom_dir) {
            Ok(dir) => {
                let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
                files.sort();
                for path in files {
                    // A mounted ConfigMap or Secret has `..data` and timestamped directories
                    // beside the key links: only files (links followed) are read.
                    if !path.is_file() {
                        continue;
                    }
                    match std::fs::read(&path) {
                        Ok(pem) => {
                            let (added, ignored) = add_pem(&mut base, &pem);
                            if added == 0 {
                                tracing::warn!(file = %path.display(), ignored, "no usable PEM certificate in a custom certificates file");
                            } else {
                                tracing::info!(file = %path.display(), added, "custom CA certificates loaded");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %e, "custom certificates file unreadable")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %custom_dir.display(), error = %e, "custom certificates directory unreadable")
            }
        }
        ClientTrust {
            provider: settings.provider(),
            settings,
            base: Mutex::new(Arc::new(base.clone())),
            fixed: base,
            bundles: Mutex::new(Default::default()),
            configs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Installs the process's trust (once, at start).
    pub fn install(self) {
        let _ = CLIENT_TRUST.set(self);
    }

    /// The process's trust; upstream's defaults (system roots, no custom directory) if
    /// [`ClientTrust::install`] was not called (unit tests).
    pub fn get() -> &'static ClientTrust {
        CLIENT_TRUST.get_or_init(|| {
            ClientTrust::load(Settings::default(), Path::new("/nonexistent-custom-certs"))
        })
    }

    /// Replaces the cluster's trust bundles (`<configmap>/<key>` → PEM). Returns whether the
    /// trust changed: then every cached client configuration is dropped and the next
    /// [`ClientTrust::client_for`] builds new ones under new trust ids, so that channels
    /// prepared again with them get new pool keys (connections verified against the old trust
    /// are not reused for them; they age out of the pool). Upstream re-reads the bundles on
    /// each new connection; here a change reaches new connections once the routing tables hold
    /// the re-prepared channels, milliseconds after the snapshot.
    pub fn set_bundles(&self, next: &std::collections::BTreeMap<String, String>) -> bool {
        let mut bundles = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        if *bundles == *next {
            return false;
        }
        let mut roots = self.fixed.clone();
        for (name, pem) in next {
            let (added, ignored) = add_pem(&mut roots, pem.as_bytes());
            if added == 0 {
                tracing::warn!(bundle = %name, ignored, "trust bundle holds no usable PEM certificate");
            } else {
                tracing::info!(bundle = %name, added, "trust bundle loaded for https targets");
            }
        }
        // Under the configurations' lock, which `client_for` holds while it reads the base: no
        // configuration of the old trust survives the swap.
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(roots);
        configs.clear();
        *bundles = next.clone();
        true
    }

    /// The TLS side of an https target: `host` (its SNI and the name its certificate must
    /// carry) and its own `…CACerts` PEM. Runs off the cores; configurations are cached by
    /// `ca`.
    pub fn client_for(&self, host: &str, ca: Option<&str>) -> Result<ClientTls, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        let key = ca.map(str::to_owned);
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, config)) = configs.get(&key) {
            return Ok(ClientTls {
                trust_id: *id,
                config: config.clone(),
                name,
            });
        }
        let mut roots = (**self.base.lock().unwrap_or_else(|e| e.into_inner())).clone();
        if let Some(pem) = ca {
            let (added, _) = add_pem(&mut roots, pem.as_bytes());
            if added == 0 {
                return Err("CACerts holds no usable PEM certificate".into());
            }
        }
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&self.settings.versions())
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let config = Arc::new(config);
        // Bounded by the distinct CACerts the operator configured.
        configs.insert(key, (id, config.clone()));
        Ok(ClientTls {
            trust_id: id,
            config,
            name,
        })
    }
}

/// A worker's TLS session cache for https targets (resumption across its connections).
pub fn worker_sessions() -> Arc<ClientSessionMemoryCache> {
    Arc::new(ClientSessionMemoryCache::new(SESSIONS_PER_WORKER))
}

fn add_pem(store: &mut RootCertStore, pem: &[u8]) -> (usize, usize) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    store.add_parsable_certificates(certs)
}

/// Why a TLS exchange failed, in the words of upstream's logs where there are some: the
/// certificate expired, its issuer is unknown, it names another host.
pub fn describe(e: &std::io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate is not valid yet".into()
            }
            CertificateError::UnknownIssuer => {
                "certificate signed by unknown authority (unknown issuer)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate name mismatch ({c})")
            }
            other => format!("invalid certificate: {other}"),
        },
        other => other.to_string(),
    }
}

/// The 8443 server certificate: swapped atomically when its files change; a handshake takes
/// whatever is current (open connections keep the one they got).
#[derive(Debug, Default)]
pub struct ServerCert {
    current: ArcSwapOption<CertifiedKey>,
    /// Handshakes refused for want of a certificate are logged at most once a second.
    last_refusal_log: Mutex<Option<Instant>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.current.load_full();
        if key.is_none() {
            let mut last = self
                .last_refusal_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                tracing::warn!("TLS handshake on the https ingress refused: no server certificate (--tls-cert/--tls-key, or the imc-dispatcher-server-tls Secret)");
            }
        }
        key
    }
}

impl ServerCert {
    pub fn set(&self, key: Option<Arc<CertifiedKey>>) {
        self.current.store(key);
    }

    pub fn is_set(&self) -> bool {
        self.current.load().is_some()
    }
}

/// Parses a certificate chain and its key (PKCS#1, PKCS#8 or SEC1 PEM), checking that they
/// belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("certificate file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key file: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("certificate and key: {e}"))
}

/// The server configuration of the 8443 ingress: these settings, the certificate `cert`
/// resolves, ALPN `http/1.1`, no client certificates (upstream has no mTLS on ingress).
pub fn server_config(settings: &Settings, cert: Arc<ServerCert>) -> Result<ServerConfig, String> {
    let mut config = ServerConfig::builder_with_provider(settings.provider())
        .with_protocol_versions(&settings.versions())
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Watches `--tls-cert` and `--tls-key` on its own thread: both files are read every
/// `interval` and a changed, valid pair replaces the certificate. Reading the contents (a few
/// KiB) instead of looking at times catches every kind of replacement, a Kubernetes Secret's
/// `..data` symlink swap included. A pair that does not parse (or whose halves do not match yet,
/// mid-rotation) is logged and the previous certificate stays.
pub fn watch_server_cert(
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    target: Arc<ServerCert>,
    interval: Duration,
) -> std::io::Result<()> {
    let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut last_error: Option<String> = None;
    let mut load = move || {
        let read = std::fs::read(&cert_file).and_then(|c| Ok((c, std::fs::read(&key_file)?)));
        let (cert, key) = match read {
            Ok(pair) => pair,
            Err(e) => {
                let msg = format!(
                    "cannot read {} / {}: {e}",
                    cert_file.display(),
                    key_file.display()
                );
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "https ingress certificate not loaded");
                    last_error = Some(msg);
                }
                return;
            }
        };
        if last.as_ref().is_some_and(|(c, k)| *c == cert && *k == key) {
            return;
        }
        match certified_key(&cert, &key, &provider) {
            Ok(ck) => {
                let replaced = target.is_set();
                target.set(Some(Arc::new(ck)));
                tracing::info!(cert = %cert_file.display(), key = %key_file.display(), replaced, "https ingress certificate loaded");
                last = Some((cert, key));
                last_error = None;
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(cert = %cert_file.display(), key = %key_file.display(), error = %e, "https ingress certificate not loaded; keeping the previous one");
                    last_error = Some(e);
                }
            }
        }
    };
    load();
    std::thread::Builder::new()
        .name("imc-tls-cert".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            load();
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn default_is_tls13_only() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.versions().len(), 1);
        assert_eq!(s.versions()[0].version, rustls::ProtocolVersion::TLSv1_3);
    }

    #[test]
    fn upstream_names_and_values_are_accepted() {
        let s = Settings::from_vars(vars(&[
            ("TLS_MIN_VERSION", "1.2"),
            ("TLS_MAX_VERSION", "1.3"),
            (
                "TLS_CIPHER_SUITES",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256",
            ),
            ("TLS_CURVE_PREFERENCES", "X25519,CurveP256,P-384"),
        ]))
        .unwrap();
        assert_eq!(s.versions().len(), 2);
        let p = s.provider();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(p.kx_groups.len(), 3);
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        for (k, v, why) in [
            ("TLS_MIN_VERSION", "1.1", "TLS_MIN_VERSION"),
            ("TLS_MAX_VERSION", "tls13", "TLS_MAX_VERSION"),
            ("TLS_CIPHER_SUITES", "TLS_FAKE", "unknown cipher suite"),
            (
                "TLS_CIPHER_SUITES",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
                "not implemented",
            ),
            ("TLS_CURVE_PREFERENCES", "CurveP521", "not implemented"),
            ("TLS_CURVE_PREFERENCES", "brainpool", "unknown curve"),
        ] {
            let e = Settings::from_vars(vars(&[(k, v)])).unwrap_err();
            assert!(e.contains(why), "{k}={v}: {e}");
        }
        let e = Settings::from_vars(vars(&[("TLS_MAX_VERSION", "1.2")])).unwrap_err();
        assert!(e.contains("below"), "{e}");
    }

    #[test]
    fn client_configs_are_cached_per_trust_set() {
        let t = ClientTrust::load(Settings::default(), Path::new("/nonexistent"));
        let a = t.client_for("a.example", None).unwrap();
        let b = t.client_for("b.example", None).unwrap();
        assert_eq!(a.trust_id, b.trust_id);
        assert!(Arc::ptr_eq(&a.config, &b.config));
        let bad = t.client_for("a.example", Some("not pem")).unwrap_err();
        assert!(bad.contains("no usable PEM"), "{bad}");
        assert!(t.client_for("bad name!", None).is_err());
    }
}

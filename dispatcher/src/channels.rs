//! The channel set: a full, immutable snapshot of every served channel, built off the cores, and
//! the [`Hub`] that hands snapshots to the workers.
//!
//! Budget: nothing here runs on a request. A worker looks at one atomic (the published
//! generation, written only when the configuration changes) between requests and at its tick.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Encryption;
use crate::imc::{ChannelConfig, Imc, Source};
use crate::routing::Prepared;
use crate::wire::ChannelState;

/// Where a channel came from, so that a file that stops parsing keeps its previous channels.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Shared by every channel of the file (an allocation per set, not per channel).
    pub origin: Arc<Path>,
    pub config: Arc<ChannelConfig>,
    /// The routing entry every worker wraps, prepared here, off the cores.
    pub prepared: Arc<Prepared>,
    /// Whether this channel routes its host (the first by key claims a host; the others are
    /// reachable by path only).
    pub owns_host: bool,
}

/// One channel object's entry in the next set: its new configuration, or the previous one where
/// it is not Ready or invalid (logged with the field), or none. Records the outcome.
fn translate(
    previous: Option<&Entry>,
    imc: &Imc,
    key: &str,
    origin: &Arc<Path>,
    opts: &BuildOptions,
    report: &mut BuildReport,
) -> Option<Entry> {
    let outcome = |report: &mut BuildReport, state, reason| {
        report.outcomes.push((key.to_owned(), state, reason));
    };
    if !imc.in_scope(opts.namespace_mode) {
        tracing::debug!(file = %origin.display(), channel = %key, "channel out of this dispatcher's scope");
        outcome(report, ChannelState::OutOfScope, None);
        return None;
    }
    if !imc.is_ready(opts.source) {
        outcome(report, ChannelState::NotReady, None);
        // Upstream leaves the routing table alone for a channel that is not Ready.
        match previous {
            Some(_) => {
                tracing::info!(file = %origin.display(), channel = %key, "channel not ready; its previous configuration stays")
            }
            None => {
                tracing::info!(file = %origin.display(), channel = %key, "channel not ready; not served")
            }
        }
        return previous.cloned();
    }
    match ChannelConfig::from_imc(imc, opts.cluster_domain) {
        Ok(config) => {
            outcome(report, ChannelState::Served, None);
            Some(match previous {
                // Unchanged channels keep their allocations (and so their identity).
                Some(p) if *p.config == config => Entry {
                    origin: origin.clone(),
                    ..p.clone()
                },
                _ => Entry {
                    origin: origin.clone(),
                    prepared: Arc::new(Prepared::new(key, &config)),
                    config: Arc::new(config),
                    owns_host: false,
                },
            })
        }
        Err(reason) => {
            report.channels_rejected += 1;
            tracing::error!(file = %origin.display(), channel = %key, reason = %reason,
                kept_previous = previous.is_some(), "channel update rejected");
            outcome(report, ChannelState::Rejected, Some(reason));
            previous.cloned()
        }
    }
}

/// Every served channel, keyed by `<namespace>/<name>`.
#[derive(Debug, Default)]
pub struct ChannelSet {
    pub channels: BTreeMap<String, Entry>,
}

/// One file of manifests as read: its channels, or why it could not be read.
pub struct FileLoad {
    pub path: PathBuf,
    pub result: Result<Vec<Imc>, String>,
}

/// What a build found wrong; each problem has already been logged with its file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub files_failed: usize,
    pub channels_rejected: usize,
    /// What became of each channel object read (by `<namespace>/<name>`), for imc-control's
    /// acknowledgement; the reason of a rejection names the field.
    pub outcomes: Vec<(String, ChannelState, Option<String>)>,
}

pub struct BuildOptions<'a> {
    pub cluster_domain: &'a str,
    pub namespace_mode: Option<&'a str>,
    /// How the Ready gate reads a channel without status (see [`Imc::is_ready`]).
    pub source: Source,
}

impl ChannelSet {
    /// Builds the next set from freshly read files. A bad file or a bad channel never takes
    /// routing down: the previous good configuration of what failed stays in force.
    pub fn build(
        prev: &ChannelSet,
        files: &[FileLoad],
        opts: &BuildOptions,
    ) -> (ChannelSet, BuildReport) {
        let mut next = BTreeMap::new();
        let mut report = BuildReport::default();
        for file in files {
            let origin: Arc<Path> = file.path.as_path().into();
            let imcs = match &file.result {
                Ok(imcs) => imcs,
                Err(reason) => {
                    report.files_failed += 1;
                    let kept = prev
                        .channels
                        .iter()
                        .filter(|(_, e)| *e.origin == *file.path);
                    let mut n = 0;
                    for (key, entry) in kept {
                        next.insert(key.clone(), entry.clone());
                        n += 1;
                    }
                    tracing::error!(file = %file.path.display(), reason = %reason, kept_channels = n,
                        "channel file rejected; its previous channels stay in force");
                    continue;
                }
            };
            for imc in imcs {
                let key = imc.key();
                if next.contains_key(&key) {
                    tracing::warn!(file = %file.path.display(), channel = %key, "channel defined twice; the first definition is used");
                    continue;
                }
                if let Some(entry) = translate(
                    prev.channels.get(&key),
                    imc,
                    &key,
                    &origin,
                    opts,
                    &mut report,
                ) {
                    next.insert(key, entry);
                }
            }
        }
        let mut set = ChannelSet { channels: next };
        set.assign_hosts(true);
        (set, report)
    }

    /// The set `prev` with `changed` channel objects translated again and `deleted` keys gone:
    /// a one-channel change costs one translation, not one per channel of the set. Channels from
    /// `origin` only (the cluster source keeps all its channels under one origin).
    pub fn apply(
        prev: &ChannelSet,
        origin: &Arc<Path>,
        changed: &[Imc],
        deleted: &[String],
        opts: &BuildOptions,
    ) -> (ChannelSet, BuildReport) {
        let mut next = prev.channels.clone();
        let mut report = BuildReport::default();
        for key in deleted {
            next.remove(key);
        }
        for imc in changed {
            let key = imc.key();
            match translate(
                prev.channels.get(&key),
                imc,
                &key,
                origin,
                opts,
                &mut report,
            ) {
                Some(entry) => {
                    next.insert(key, entry);
                }
                None => {
                    next.remove(&key);
                }
            }
        }
        let mut set = ChannelSet { channels: next };
        set.assign_hosts(false);
        (set, report)
    }

    /// Decides which channel routes each host: the first by key claims it (a build logs the
    /// others; an apply is quiet, the conflict was logged when it arose). Only entries whose
    /// claim changed are touched.
    fn assign_hosts(&mut self, log: bool) {
        let mut hosts: HashMap<&str, &str> = HashMap::with_capacity(self.channels.len());
        let mut flips = Vec::new();
        for (key, entry) in &self.channels {
            let owns = match hosts.get(entry.config.host.as_str()) {
                Some(other) => {
                    if log {
                        tracing::warn!(channel = %key, host = %entry.config.host, other = %other,
                            "host already routes to another channel; this channel is reachable by path only");
                    }
                    false
                }
                None => {
                    hosts.insert(&entry.config.host, key);
                    true
                }
            };
            if owns != entry.owns_host {
                flips.push((key.clone(), owns));
            }
        }
        for (key, owns) in flips {
            if let Some(e) = self.channels.get_mut(&key) {
                e.owns_host = owns;
            }
        }
    }

    /// The keys whose routing differs between `prev` and `self`: added, removed, re-prepared,
    /// or with a changed claim on their host. What a worker must touch to go from one to the
    /// other.
    pub fn diff(&self, prev: &ChannelSet) -> Vec<String> {
        let mut out = Vec::new();
        let (mut a, mut b) = (
            prev.channels.iter().peekable(),
            self.channels.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return out,
                (Some((k, _)), None) => {
                    out.push((*k).clone());
                    a.next();
                }
                (None, Some((k, _))) => {
                    out.push((*k).clone());
                    b.next();
                }
                (Some((ka, ea)), Some((kb, eb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out.push((*ka).clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out.push((*kb).clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(&ea.prepared, &eb.prepared) || ea.owns_host != eb.owns_host
                        {
                            out.push((*ka).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }

    /// This set with every channel that has an https target prepared again, so that its
    /// destinations take the current trust (after the cluster's trust bundles changed). Other
    /// channels keep their entries; how many were prepared again is returned.
    pub fn reprepare_https(&self) -> (ChannelSet, usize) {
        let mut n = 0;
        let channels = self
            .channels
            .iter()
            .map(|(key, e)| {
                let https = e.config.subscribers.iter().any(|s| {
                    [&s.target, &s.reply, &s.dead_letter]
                        .into_iter()
                        .flatten()
                        .any(|t| t.tls)
                });
                let entry = if https {
                    n += 1;
                    Entry {
                        prepared: Arc::new(Prepared::new(key, &e.config)),
                        ..e.clone()
                    }
                } else {
                    e.clone()
                };
                (key.clone(), entry)
            })
            .collect();
        (ChannelSet { channels }, n)
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether `other` routes exactly what this set routes (same channels, same prepared
    /// entries): publishing it would make every worker rebuild its table for nothing.
    pub fn same_as(&self, other: &ChannelSet) -> bool {
        self.channels.len() == other.channels.len()
            && self
                .channels
                .iter()
                .zip(&other.channels)
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(&x.prepared, &y.prepared))
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

/// The hand-off between the source (one thread, off the cores) and the workers.
pub struct Hub {
    current: ArcSwap<ChannelSet>,
    generation: AtomicU64,
    /// Per worker: the generation it has installed.
    installed: Box<[AtomicU64]>,
    /// D14: latched once the first set is installed on every worker.
    ready: AtomicBool,
    /// D13: set once on SIGTERM; workers stop accepting and drain.
    draining: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok: AtomicBool,
    /// The `config-features` flags the dispatcher runs with (from imc-control; empty with the
    /// file source), exported as a metric.
    features: ArcSwap<BTreeMap<String, String>>,
    /// `transport-encryption` in force (a [`crate::config::Encryption`]): the cluster's flag
    /// while `config-features` has it, else `--transport-encryption`. Workers copy it on their
    /// tick, so a request reads a cell of its own core.
    encryption: AtomicU8,
    encryption_default: AtomicU8,
    /// The last few publications' changes: generation `g` and the keys that differ from `g - 1`.
    /// A worker one or a few generations behind touches only those keys of its table instead of
    /// rebuilding it (a 10,000-channel rebuild costs the core milliseconds).
    deltas: Mutex<VecDeque<(u64, Arc<[String]>)>>,
}

/// The `config-features` flag of contract §6.1.
const TRANSPORT_ENCRYPTION: &str = "transport-encryption";

/// Publications whose changes a worker can still catch up with key by key.
const DELTAS_KEPT: usize = 16;

impl Hub {
    pub fn new(workers: usize) -> Hub {
        Hub {
            current: ArcSwap::from_pointee(ChannelSet::default()),
            generation: AtomicU64::new(0),
            installed: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(false),
            features: ArcSwap::from_pointee(BTreeMap::new()),
            encryption: AtomicU8::new(Encryption::Disabled as u8),
            encryption_default: AtomicU8::new(Encryption::Disabled as u8),
            deltas: Mutex::new(VecDeque::new()),
        }
    }

    /// `--transport-encryption`: the mode while the cluster does not set one.
    pub fn set_default_encryption(&self, mode: Encryption) {
        self.encryption_default.store(mode as u8, Ordering::Relaxed);
        self.apply_encryption(&self.features.load());
    }

    pub fn encryption(&self) -> Encryption {
        Encryption::from_u8(self.encryption.load(Ordering::Relaxed))
    }

    fn apply_encryption(&self, features: &BTreeMap<String, String>) {
        let default = Encryption::from_u8(self.encryption_default.load(Ordering::Relaxed));
        let mode = match features.get(TRANSPORT_ENCRYPTION) {
            None => default,
            Some(v) => Encryption::from_flag(v).unwrap_or_else(|| {
                tracing::warn!(flag = TRANSPORT_ENCRYPTION, value = %v, fallback = ?default, "unknown transport-encryption value (disabled, permissive or strict); using the default");
                default
            }),
        };
        let prev = self.encryption.swap(mode as u8, Ordering::Relaxed);
        if prev != mode as u8 {
            tracing::info!(mode = ?mode, "transport encryption");
        }
    }

    /// Installs the feature flags of a snapshot, logging what changed.
    pub fn set_features(&self, next: &BTreeMap<String, String>) {
        let prev = self.features.load();
        if **prev == *next {
            return;
        }
        self.apply_encryption(next);
        for (flag, value) in next {
            if prev.get(flag) != Some(value) {
                tracing::info!(flag = %flag, value = %value, previous = prev.get(flag).map(String::as_str), "feature flag set");
            }
        }
        for flag in prev.keys().filter(|f| !next.contains_key(*f)) {
            tracing::info!(flag = %flag, "feature flag removed");
        }
        self.features.store(Arc::new(next.clone()));
    }

    pub fn features(&self) -> Arc<BTreeMap<String, String>> {
        self.features.load_full()
    }

    /// Whether every worker has installed generation `g` (or a later one).
    pub fn installed_everywhere(&self, g: u64) -> bool {
        self.installed
            .iter()
            .all(|i| i.load(Ordering::Acquire) >= g)
    }

    /// Records the result of a read of the channel source that changed something.
    pub fn record_reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.last_reload_ok.store(ok, Ordering::Relaxed);
    }

    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    pub fn last_reload_ok(&self) -> bool {
        self.last_reload_ok.load(Ordering::Relaxed)
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Makes `set` the configuration every worker switches to between requests. The keys that
    /// changed are worked out here, off the cores (one merge walk of both sets). One source
    /// publishes at a time.
    pub fn publish(&self, set: Arc<ChannelSet>) -> u64 {
        let changed: Arc<[String]> = set.diff(&self.current.load()).into();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        {
            let mut deltas = self.deltas.lock().expect("deltas lock");
            if deltas.len() == DELTAS_KEPT {
                deltas.pop_front();
            }
            deltas.push_back((generation, changed));
        }
        self.current.store(set);
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// The keys that changed from generation `from` to `to`, if every publication in between is
    /// still kept; `None`: rebuild.
    pub fn changes(&self, from: u64, to: u64) -> Option<Vec<Arc<[String]>>> {
        if from == 0 {
            return None;
        }
        let deltas = self.deltas.lock().expect("deltas lock");
        let first = deltas.front()?.0;
        if from + 1 < first {
            return None;
        }
        let out: Vec<_> = deltas
            .iter()
            .filter(|(g, _)| *g > from && *g <= to)
            .map(|(_, keys)| keys.clone())
            .collect();
        (out.len() as u64 == to - from).then_some(out)
    }

    pub fn current(&self) -> Arc<ChannelSet> {
        self.current.load_full()
    }

    /// The published generation: one uncontended load, cheap enough for every request.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn mark_installed(&self, worker: usize, generation: u64) {
        self.installed[worker].store(generation, Ordering::Release);
    }

    /// D14: ready once the first published set is installed on every worker; then latched, as
    /// upstream's probe is.
    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let all = self
            .installed
            .iter()
            .all(|g| g.load(Ordering::Acquire) >= 1);
        if all {
            self.ready.store(true, Ordering::Relaxed);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(path: &str, yaml: Result<&str, &str>) -> FileLoad {
        FileLoad {
            path: PathBuf::from(path),
            result: yaml
                .map(|y| crate::source::parse_manifests(y, Path::new(path)).unwrap())
                .map_err(str::to_owned),
        }
    }

    const OPTS: BuildOptions<'static> = BuildOptions {
        cluster_domain: "cluster.local",
        namespace_mode: None,
        source: Source::File,
    };

    #[test]
    fn bad_file_keeps_its_previous_channels() {
        let first = [
            load("a.yaml", Ok("kind: InMemoryChannel\nmetadata: {name: a}")),
            load("b.yaml", Ok("kind: InMemoryChannel\nmetadata: {name: b}")),
        ];
        let (set, _) = ChannelSet::build(&ChannelSet::default(), &first, &OPTS);
        assert_eq!(set.len(), 2);
        let second = [
            load("a.yaml", Err("broken")),
            load("b.yaml", Ok("kind: InMemoryChannel\nmetadata: {name: c}")),
        ];
        let (next, report) = ChannelSet::build(&set, &second, &OPTS);
        let keys: Vec<_> = next.channels.keys().cloned().collect();
        assert_eq!(
            keys,
            ["default/a", "default/c"],
            "b deleted, a kept, c added"
        );
        assert_eq!(report.files_failed, 1);
    }

    #[test]
    fn invalid_channel_keeps_previous_config_and_not_ready_is_not_added() {
        let ok = [load("f", Ok("kind: InMemoryChannel\nmetadata: {name: a}\nspec: {subscribers: [{uid: u, subscriberUri: 'http://s1'}]}"))];
        let (set, _) = ChannelSet::build(&ChannelSet::default(), &ok, &OPTS);
        let bad = [load("f", Ok("kind: InMemoryChannel\nmetadata: {name: a}\nspec: {subscribers: [{uid: u, subscriberUri: 'http://s2', delivery: {timeout: nope}}]}\n---\nkind: InMemoryChannel\nmetadata: {name: n}\nstatus: {conditions: [{type: Ready, status: 'False'}]}"))];
        let (next, report) = ChannelSet::build(&set, &bad, &OPTS);
        assert_eq!(report.channels_rejected, 1);
        assert_eq!(next.len(), 1);
        let target = next.channels["default/a"].config.subscribers[0]
            .target
            .clone()
            .unwrap();
        assert_eq!(target.host, "s1");
    }

    fn routes(
        t: &crate::routing::Table,
        set: &ChannelSet,
    ) -> Vec<(String, Option<String>, Option<String>)> {
        use crate::routing::Key;
        let mut hosts: Vec<&str> = set
            .channels
            .values()
            .map(|e| e.config.host.as_str())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        let mut out: Vec<_> = set
            .channels
            .keys()
            .map(|k| {
                let by_path = t.route(&Key::Path(k), None).map(|c| c.key.to_string());
                (k.clone(), by_path, None)
            })
            .collect();
        for h in hosts {
            let by_host = t.route(&Key::Host, Some(h)).map(|c| c.key.to_string());
            out.push((h.to_owned(), None, by_host));
        }
        out
    }

    /// Applying a set's changes key by key gives the table a rebuild gives: changed, added and
    /// deleted channels, and a host whose owner goes away passing to the next claimant.
    #[test]
    fn a_delta_applied_to_a_table_equals_a_rebuild() {
        use crate::routing::Table;
        let y = |name: &str, host: &str, sink: &str| {
            format!("kind: InMemoryChannel\nmetadata: {{name: {name}}}\nstatus: {{address: {{url: 'http://{host}'}}}}\nspec: {{subscribers: [{{uid: u, subscriberUri: 'http://{sink}'}}]}}\n---\n")
        };
        let first = y("a", "ha", "s1")
            + &y("b", "shared", "s1")
            + &y("c", "shared", "s1")
            + &y("d", "hd", "s1");
        let (set1, _) = ChannelSet::build(&ChannelSet::default(), &[load("f", Ok(&first))], &OPTS);
        let second = y("a", "ha", "s2")
            + &y("c", "shared", "s1")
            + &y("d", "hd", "s1")
            + &y("e", "he", "s1");
        let (set2, _) = ChannelSet::build(&set1, &[load("f", Ok(&second))], &OPTS);
        let keys = set2.diff(&set1);
        assert_eq!(
            keys,
            ["default/a", "default/b", "default/c", "default/e"],
            "d is untouched"
        );
        let mut t = Table::build(&set1);
        t.apply(&set2, &keys);
        assert_eq!(routes(&t, &set2), routes(&Table::build(&set2), &set2));
        assert_eq!(
            t.route(&crate::routing::Key::Host, Some("shared"))
                .map(|c| c.key.to_string()),
            Some("default/c".into()),
            "b owned the shared host; c inherits it"
        );
        // apply() on the set gives what build() gives.
        let imcs = crate::source::parse_manifests(&y("e", "he", "s9"), Path::new("f")).unwrap();
        let (set3, _) = ChannelSet::apply(
            &set2,
            &Arc::from(Path::new("f")),
            &imcs,
            &["default/a".into()],
            &OPTS,
        );
        assert_eq!(set3.diff(&set2), ["default/a", "default/e"]);
        assert!(!set3.channels.contains_key("default/a"));
        assert_eq!(
            set3.channels["default/e"].config.subscribers[0]
                .target
                .as_ref()
                .unwrap()
                .host,
            "s9"
        );
    }

    #[test]
    fn the_hub_hands_workers_the_changes_or_asks_for_a_rebuild() {
        let hub = Hub::new(1);
        let y = |n: &str| format!("kind: InMemoryChannel\nmetadata: {{name: {n}}}\n");
        let (s1, _) = ChannelSet::build(&ChannelSet::default(), &[load("f", Ok(&y("a")))], &OPTS);
        let s1 = Arc::new(s1);
        assert_eq!(hub.publish(s1.clone()), 1);
        let (s2, _) =
            ChannelSet::build(&s1, &[load("f", Ok(&(y("a") + "---\n" + &y("b"))))], &OPTS);
        assert_eq!(hub.publish(Arc::new(s2)), 2);
        assert!(
            hub.changes(0, 2).is_none(),
            "nothing installed yet: rebuild"
        );
        let c = hub.changes(1, 2).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(&*c[0], ["default/b".to_string()]);
        for _ in 0..DELTAS_KEPT + 1 {
            hub.publish(hub.current());
        }
        assert!(
            hub.changes(1, hub.generation()).is_none(),
            "too far behind: rebuild"
        );
    }

    #[test]
    fn hub_is_ready_only_when_every_worker_installed() {
        let hub = Hub::new(2);
        assert!(!hub.is_ready());
        let g = hub.publish(Arc::default());
        hub.mark_installed(0, g);
        assert!(!hub.is_ready());
        hub.mark_installed(1, g);
        assert!(hub.is_ready());
    }

    /// Contract §6.1: the cluster's `transport-encryption` flag overrides the command line while
    /// it is set, changes without a restart, and an unknown value falls back to the flag.
    #[test]
    fn cluster_transport_encryption_overrides_the_flag() {
        let hub = Hub::new(1);
        assert_eq!(hub.encryption(), Encryption::Disabled);
        hub.set_default_encryption(Encryption::Permissive);
        assert_eq!(hub.encryption(), Encryption::Permissive);
        let flags = |v: &str| BTreeMap::from([(TRANSPORT_ENCRYPTION.to_owned(), v.to_owned())]);
        hub.set_features(&flags("strict"));
        assert_eq!(hub.encryption(), Encryption::Strict);
        hub.set_features(&flags("Disabled"));
        assert_eq!(hub.encryption(), Encryption::Disabled);
        hub.set_features(&flags("sometimes"));
        assert_eq!(hub.encryption(), Encryption::Permissive);
        hub.set_features(&BTreeMap::new());
        assert_eq!(hub.encryption(), Encryption::Permissive);
    }
}

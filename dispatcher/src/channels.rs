//! The channel set: a full, immutable snapshot of every served channel, built off the cores, and
//! the [`Hub`] that hands snapshots to the workers.
//!
//! Budget: nothing here runs on a request. A worker looks at one atomic (the published
//! generation, written only when the configuration changes) between requests and at its tick.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::imc::{ChannelConfig, Imc, Source};
use crate::routing::Prepared;

/// Where a channel came from, so that a file that stops parsing keeps its previous channels.
#[derive(Debug, Clone)]
pub struct Entry {
    pub origin: PathBuf,
    pub config: Arc<ChannelConfig>,
    /// The routing entry every worker wraps, prepared here, off the cores.
    pub prepared: Arc<Prepared>,
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
        let mut hosts: HashMap<String, String> = HashMap::new();
        for file in files {
            let imcs = match &file.result {
                Ok(imcs) => imcs,
                Err(reason) => {
                    report.files_failed += 1;
                    let kept = prev.channels.iter().filter(|(_, e)| e.origin == file.path);
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
                let key = format!("{}/{}", imc.namespace(), imc.metadata.name);
                if !imc.in_scope(opts.namespace_mode) {
                    tracing::debug!(file = %file.path.display(), channel = %key, "channel out of this dispatcher's scope");
                    continue;
                }
                if next.contains_key(&key) {
                    tracing::warn!(file = %file.path.display(), channel = %key, "channel defined twice; the first definition is used");
                    continue;
                }
                let previous = prev.channels.get(&key);
                if !imc.is_ready(opts.source) {
                    // Upstream leaves the routing table alone for a channel that is not Ready.
                    if let Some(p) = previous {
                        tracing::info!(file = %file.path.display(), channel = %key, "channel not ready; its previous configuration stays");
                        next.insert(key, p.clone());
                    } else {
                        tracing::info!(file = %file.path.display(), channel = %key, "channel not ready; not served");
                    }
                    continue;
                }
                let entry = match ChannelConfig::from_imc(imc, opts.cluster_domain) {
                    // Unchanged channels keep their allocations (and so their identity).
                    Ok(config) => match previous {
                        Some(p) if *p.config == config => Entry {
                            origin: file.path.clone(),
                            config: p.config.clone(),
                            prepared: p.prepared.clone(),
                        },
                        _ => Entry {
                            origin: file.path.clone(),
                            prepared: Arc::new(Prepared::new(&key, &config)),
                            config: Arc::new(config),
                        },
                    },
                    Err(reason) => {
                        report.channels_rejected += 1;
                        tracing::error!(file = %file.path.display(), channel = %key, reason = %reason,
                            kept_previous = previous.is_some(), "channel update rejected");
                        match previous {
                            Some(p) => p.clone(),
                            None => continue,
                        }
                    }
                };
                if let Some(other) = hosts.get(&entry.config.host) {
                    tracing::warn!(file = %file.path.display(), channel = %key, host = %entry.config.host, other = %other,
                        "host already routes to another channel; this channel is reachable by path only");
                } else {
                    hosts.insert(entry.config.host.clone(), key.clone());
                }
                next.insert(key, entry);
            }
        }
        (ChannelSet { channels: next }, report)
    }

    pub fn len(&self) -> usize {
        self.channels.len()
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
}

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
        }
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

    /// Makes `set` the configuration every worker switches to between requests.
    pub fn publish(&self, set: Arc<ChannelSet>) -> u64 {
        self.current.store(set);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
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
}

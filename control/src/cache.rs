//! The InMemoryChannels as last seen (only those this dispatcher serves: the scope filter of
//! contract §4.6 applies here), the feature flags, and the conversation with the dispatcher:
//! which version it acknowledged, which channels it routes at which generation, and what the next
//! snapshot must carry.
//!
//! One snapshot is in flight at a time: changes that arrive meanwhile wait for its ack, so a
//! burst becomes one delta on the acknowledged version (a delta is only ever based on a version
//! the dispatcher has). The first snapshot of a conversation, and any after a `Resync`, is whole.
//!
//! Memory: an object is kept as its compact JSON (what the snapshot frame carries, copied, never
//! re-encoded), with a hash of the fields the dispatcher reads. A change to anything else (the
//! status this process writes back, managedFields, resourceVersion) updates the kept JSON but
//! sends nothing: the status write-back's own echo does not become a snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use imc_model::imc::{scope_matches, SCOPE_ANNOTATION};
use imc_model::wire::{
    self, ChannelState, ServerCert, Snapshot, TlsInputs, ToControl, ToDispatcher,
};
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

/// One channel object as kept.
struct Kept {
    raw: Box<RawValue>,
    /// A hash of what the dispatcher reads of it (see [`routing_hash`]).
    routing: u64,
}

impl Kept {
    fn of(v: &Value) -> Option<Kept> {
        Some(Kept {
            routing: routing_hash(v),
            raw: serde_json::value::to_raw_value(v).ok()?,
        })
    }
}

/// A hash of the fields the dispatcher's translation reads: name, namespace, generation and
/// annotations; the spec; the status's address, conditions and observedGeneration.
fn routing_hash(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in [
        "/metadata/name",
        "/metadata/namespace",
        "/metadata/generation",
        "/metadata/annotations",
        "/spec",
        "/status/address",
        "/status/conditions",
        "/status/observedGeneration",
    ] {
        p.hash(&mut h);
        if let Some(x) = v.pointer(p) {
            x.to_string().hash(&mut h);
        }
    }
    h.finish()
}

pub struct Cache {
    namespace_mode: Option<String>,
    objects: BTreeMap<String, Kept>,
    /// Objects of a relist in progress (between `Init` and `InitDone`), kept compact as they
    /// arrive (a list of 10,000 channels as JSON trees would cost tens of MiB).
    listing: Option<BTreeMap<String, Kept>>,
    /// The first complete list has arrived: snapshots may be sent.
    synced: bool,
    features: BTreeMap<String, String>,
    /// The server certificate Secret and the trust bundles (sent whole, like the features).
    tls: TlsInputs,
    /// The features or the TLS inputs changed since the last snapshot.
    settings_changed: bool,
    changed: BTreeSet<String>,
    deleted: BTreeSet<String>,
    /// When the oldest change not yet sent arrived.
    dirty_since: Option<Instant>,
    next_version: u64,
    acked: Option<u64>,
    in_flight: Option<u64>,
    need_whole: bool,
    /// The generation of each channel whose configuration the dispatcher routes (from acks).
    served: HashMap<String, Option<i64>>,
}

/// `<namespace>/<name>` of an object as served.
fn key_of(v: &Value) -> Option<String> {
    let name = v.pointer("/metadata/name")?.as_str()?;
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

impl Cache {
    pub fn new(namespace_mode: Option<String>) -> Cache {
        Cache {
            namespace_mode,
            objects: BTreeMap::new(),
            listing: None,
            synced: false,
            features: BTreeMap::new(),
            tls: TlsInputs::default(),
            settings_changed: false,
            changed: BTreeSet::new(),
            deleted: BTreeSet::new(),
            dirty_since: None,
            next_version: 1,
            acked: None,
            in_flight: None,
            need_whole: true,
            served: HashMap::new(),
        }
    }

    fn in_scope(&self, v: &Value) -> bool {
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let scope = v
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SCOPE_ANNOTATION))
            .and_then(Value::as_str);
        scope_matches(ns, scope, self.namespace_mode.as_deref())
    }

    fn dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// Keeps `kept`; marks it for the next snapshot when what the dispatcher reads of it changed.
    fn upsert(&mut self, key: String, kept: Kept) {
        let routing = kept.routing;
        let old = self.objects.insert(key.clone(), kept);
        if old.is_some_and(|o| o.routing == routing) {
            return;
        }
        self.deleted.remove(&key);
        self.changed.insert(key);
        self.dirty();
    }

    fn remove(&mut self, key: &str) {
        if self.objects.remove(key).is_some() {
            self.changed.remove(key);
            self.deleted.insert(key.to_owned());
            self.dirty();
        }
        self.served.remove(key);
    }

    /// Applies a watch event; returns the channels whose status may need a write.
    pub fn on_event(&mut self, ev: Event<DynamicObject>) -> Vec<String> {
        let value = |o: DynamicObject| serde_json::to_value(o).ok();
        match ev {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                if let Some(v) = value(o) {
                    if let (Some(key), true, Some(kept)) =
                        (key_of(&v), self.in_scope(&v), Kept::of(&v))
                    {
                        self.listing
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key, kept);
                    }
                }
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .objects
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for k in &gone {
                    self.remove(k);
                }
                let mut touched = Vec::new();
                for (k, v) in listed {
                    self.upsert(k.clone(), v);
                    touched.push(k);
                }
                if !self.synced {
                    tracing::info!(channels = self.objects.len(), "InMemoryChannels listed");
                    self.synced = true;
                    self.dirty();
                }
                touched
            }
            Event::Apply(o) => {
                let Some(v) = value(o) else { return Vec::new() };
                let Some(key) = key_of(&v) else {
                    return Vec::new();
                };
                if self.in_scope(&v) {
                    if let Some(kept) = Kept::of(&v) {
                        self.upsert(key.clone(), kept);
                    }
                    vec![key]
                } else {
                    self.remove(&key);
                    Vec::new()
                }
            }
            Event::Delete(o) => {
                if let Some(key) = value(o).as_ref().and_then(key_of) {
                    self.remove(&key);
                }
                Vec::new()
            }
        }
    }

    pub fn set_features(&mut self, f: BTreeMap<String, String>) {
        if f != self.features {
            self.features = f;
            self.settings_changed = true;
            self.dirty();
        }
    }

    /// The server certificate (`None`: no usable Secret); sent with the next snapshot.
    pub fn set_server_cert(&mut self, cert: Option<ServerCert>) {
        if cert != self.tls.server {
            self.tls.server = cert;
            self.settings_changed = true;
            self.dirty();
        }
    }

    /// Every trust bundle (`<configmap>/<key>` → PEM); sent with the next snapshot.
    pub fn set_trust_bundles(&mut self, bundles: BTreeMap<String, String>) {
        if bundles != self.tls.trust_bundles {
            self.tls.trust_bundles = bundles;
            self.settings_changed = true;
            self.dirty();
        }
    }

    /// When the next snapshot is due: `debounce` after the oldest unsent change, once the first
    /// list is complete and no snapshot awaits its ack.
    pub fn next_send(&self, debounce: Duration) -> Option<Instant> {
        if !self.synced || self.in_flight.is_some() {
            return None;
        }
        let pending = self.need_whole
            || self.settings_changed
            || !self.changed.is_empty()
            || !self.deleted.is_empty();
        if !pending {
            return None;
        }
        Some(self.dirty_since.unwrap_or_else(Instant::now) + debounce)
    }

    /// The next snapshot's frame: whole, or the changes since the acknowledged version.
    pub fn take_snapshot(&mut self) -> Option<Vec<u8>> {
        if !self.synced || self.in_flight.is_some() {
            return None;
        }
        let version = self.next_version;
        self.next_version += 1;
        let whole = self.need_whole || self.acked.is_none();
        let (base, upserts, deletes) = if whole {
            (
                None,
                self.objects.values().map(|k| k.raw.clone()).collect(),
                Vec::new(),
            )
        } else {
            let upserts = self
                .changed
                .iter()
                .filter_map(|k| self.objects.get(k).map(|o| o.raw.clone()))
                .collect();
            (self.acked, upserts, self.deleted.iter().cloned().collect())
        };
        self.changed.clear();
        self.deleted.clear();
        self.settings_changed = false;
        self.need_whole = false;
        self.dirty_since = None;
        self.in_flight = Some(version);
        let snap = Snapshot {
            version,
            base,
            features: self.features.clone(),
            upserts,
            deletes,
            tls: self.tls.clone(),
        };
        tracing::debug!(
            version,
            whole,
            upserts = snap.upserts.len(),
            deletes = snap.deletes.len(),
            "snapshot sent"
        );
        Some(wire::encode(&ToDispatcher::Snapshot(snap)))
    }

    /// Takes the dispatcher's answer; returns the channels it now routes (their status may need
    /// a write).
    pub fn on_reply(&mut self, m: ToControl) -> Vec<String> {
        match m {
            ToControl::Ack(ack) => {
                if self.in_flight != Some(ack.version) {
                    tracing::warn!(version = ack.version, expected = ?self.in_flight, "ack of an unexpected version; sending the whole state");
                    self.need_whole = true;
                    self.in_flight = None;
                    self.dirty();
                    return Vec::new();
                }
                self.in_flight = None;
                self.acked = Some(ack.version);
                let mut served = Vec::new();
                for c in ack.channels {
                    match c.state {
                        ChannelState::Served => {
                            self.served.insert(c.key.clone(), c.generation);
                            served.push(c.key);
                        }
                        ChannelState::OutOfScope => {
                            self.served.remove(&c.key);
                        }
                        ChannelState::Rejected => {
                            tracing::warn!(channel = %c.key, reason = c.reason.as_deref().unwrap_or(""),
                                "the dispatcher rejected this channel's update; its status is not written");
                        }
                        ChannelState::NotReady => {}
                    }
                }
                served
            }
            ToControl::Resync { have } => {
                tracing::info!(?have, "the dispatcher asks for the whole state");
                self.need_whole = true;
                self.in_flight = None;
                self.dirty();
                Vec::new()
            }
        }
    }

    /// The channel's current object (parsed from what is kept), if the dispatcher routes
    /// exactly this generation of it.
    pub fn served_object(&self, key: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(self.objects.get(key)?.raw.get()).ok()?;
        let generation = v.pointer("/metadata/generation").and_then(Value::as_i64);
        (self.served.get(key) == Some(&generation)).then_some(v)
    }

    pub fn served_keys(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }
}

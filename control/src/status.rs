//! The status write-back (contract §4.4, D17): for each channel the dispatcher routes at its
//! current generation, the leader patches `status.subscribers` with a JSON Patch on the status
//! subresource (upstream's ClusterRole allows `patch`, not `update`, there), computed from the
//! object as last seen, and only when it would change something. Writes are paced by a token
//! bucket (`KUBE_API_QPS`, `KUBE_API_BURST`); a failed write is retried with capped backoff and
//! logged once per channel until it succeeds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imc_model::status::subscribers_patch;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use tokio::sync::mpsc::UnboundedSender;

use crate::cache::Cache;
use crate::Msg;

/// Patches in flight at once.
const CONCURRENCY: usize = 8;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// The field manager of every write (managedFields), as upstream's is its component name.
pub const FIELD_MANAGER: &str = "imc-control";

#[derive(Debug)]
pub enum PatchError {
    /// The channel is gone: nothing to write.
    Gone,
    Failed(String),
}

/// A token bucket shared by every writer of this process.
pub struct Limiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    pub fn new(qps: f64, burst: u32) -> Arc<Limiter> {
        let burst = f64::from(burst.max(1));
        Arc::new(Limiter {
            qps: if qps > 0.0 { qps } else { f64::INFINITY },
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("limiter lock");
                let now = Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.qps)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

struct Retry {
    backoff: Duration,
    logged: bool,
}

pub struct StatusWriter {
    client: kube::Client,
    limiter: Arc<Limiter>,
    leader: bool,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    running: HashSet<String>,
    retries: HashMap<String, Retry>,
}

impl StatusWriter {
    pub fn new(client: kube::Client, qps: f64, burst: u32) -> StatusWriter {
        StatusWriter {
            client,
            limiter: Limiter::new(qps, burst),
            leader: false,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            retries: HashMap::new(),
        }
    }

    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    pub fn set_leader(&mut self, leading: bool) {
        if leading != self.leader {
            tracing::info!(
                leading,
                "status write-back {}",
                if leading {
                    "on: this replica holds the lease"
                } else {
                    "off: another replica holds the lease"
                }
            );
        }
        self.leader = leading;
    }

    /// Looks at `key`'s status again when the queue gets to it.
    pub fn consider(&mut self, key: &str) {
        if self.queued.insert(key.to_owned()) {
            self.queue.push_back(key.to_owned());
        }
    }

    /// Starts the writes that are due, up to [`CONCURRENCY`] at once.
    pub fn pump(&mut self, cache: &Cache, tx: &UnboundedSender<Msg>) {
        if !self.leader {
            return;
        }
        while self.running.len() < CONCURRENCY {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            self.queued.remove(&key);
            if self.running.contains(&key) {
                // A write of it is in flight: look again when it is done.
                self.consider(&key);
                return;
            }
            let Some(object) = cache.served_object(&key) else {
                continue;
            };
            let Some(patch) = subscribers_patch(&object) else {
                if let Some(r) = self.retries.remove(&key) {
                    if r.logged {
                        tracing::info!(channel = %key, "status up to date again");
                    }
                }
                continue;
            };
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &crate::imc_resource());
            let (name, limiter, tx, key2) = (
                name.to_owned(),
                self.limiter.clone(),
                tx.clone(),
                key.clone(),
            );
            self.running.insert(key);
            tokio::spawn(async move {
                limiter.acquire().await;
                let result = write(&api, &name, &patch).await;
                let _ = tx.send(Msg::PatchDone(key2, result));
            });
        }
    }

    /// A write ended.
    pub fn done(&mut self, key: &str, result: Result<(), PatchError>, tx: &UnboundedSender<Msg>) {
        self.running.remove(key);
        match result {
            Ok(()) => {
                if self.retries.remove(key).is_some_and(|r| r.logged) {
                    tracing::info!(channel = %key, "status written after earlier failures");
                }
            }
            Err(PatchError::Gone) => {
                self.retries.remove(key);
            }
            Err(PatchError::Failed(e)) => {
                let r = self.retries.entry(key.to_owned()).or_insert(Retry {
                    backoff: RETRY_FIRST,
                    logged: false,
                });
                if !r.logged {
                    tracing::warn!(channel = %key, error = %e, "status patch failed; retrying with backoff");
                    r.logged = true;
                }
                let wait = r.backoff;
                r.backoff = (r.backoff * 2).min(RETRY_CAP);
                let (tx, key) = (tx.clone(), key.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Msg::Reconsider(key));
                });
            }
        }
    }
}

async fn write(api: &Api<DynamicObject>, name: &str, patch: &str) -> Result<(), PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_str(patch).map_err(|e| PatchError::Failed(format!("bad patch: {e}")))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch_status(name, &params, &Patch::Json::<()>(ops))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(PatchError::Gone),
        Err(e) => Err(PatchError::Failed(e.to_string())),
    }
}

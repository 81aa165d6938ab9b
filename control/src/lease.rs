//! Leader election on a `coordination.k8s.io/v1` Lease in the system namespace, the way
//! client-go's `leaderelection` (which upstream's dispatcher runs through knative.dev/pkg) does it:
//! upstream's Lease name, its identity shape (`<pod>_<random>`), lease duration 60 s, renew
//! deadline 40 s, retry period 10 s unless `config-leader-election` says otherwise. A Lease
//! held by another identity counts as expired only when it has not changed for a lease duration
//! by *our* clock (its times are not compared with ours: no clock-skew assumption). Only the
//! holder writes status; every replica serves every channel (contract §1.7).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::status::{Limiter, FIELD_MANAGER};
use crate::{Args, Msg};

pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    limiter: Arc<Limiter>,
    /// The holder's record as last seen, and when we saw it change.
    observed: Option<(LeaseSpec, Instant)>,
    leading: bool,
    last_renewed: Option<Instant>,
    failing: bool,
}

/// `<pod name or host name>_<random>`, as knative.dev/pkg's `UniqueID`.
fn identity(pod: Option<&str>) -> String {
    let base = pod.map(str::to_owned).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "imc-control".into())
    });
    let mut random = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .is_ok();
    if !filled {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        random = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}_{hex}")
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)
}

impl Election {
    /// Reads `config-leader-election` once (its values override the flags).
    pub async fn new(client: kube::Client, args: &Args, limiter: Arc<Limiter>) -> Election {
        let mut lease_duration = args.lease_duration;
        let mut renew_deadline = args.renew_deadline;
        let mut retry_period = args.retry_period;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &args.system_namespace);
        match cms.get_opt(&args.leader_election_config).await {
            Ok(Some(cm)) => {
                let data = cm.data.unwrap_or_default();
                let read = |key: &str, into: &mut Duration| {
                    if let Some(v) = data.get(key) {
                        match imc_model::policy::parse_duration(v) {
                            Ok(d) => *into = d,
                            Err(e) => {
                                tracing::warn!(configmap = %args.leader_election_config, key, error = %e, "ignored")
                            }
                        }
                    }
                };
                read("lease-duration", &mut lease_duration);
                read("renew-deadline", &mut renew_deadline);
                read("retry-period", &mut retry_period);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(configmap = %args.leader_election_config, error = %e, "cannot read the leader-election settings; using the defaults")
            }
        }
        let identity = identity(args.pod_name.as_deref());
        tracing::info!(lease = %args.lease_name, namespace = %args.system_namespace, %identity,
            lease_duration = ?lease_duration, renew_deadline = ?renew_deadline, retry_period = ?retry_period,
            "leader election");
        Election {
            api: Api::namespaced(client, &args.system_namespace),
            name: args.lease_name.clone(),
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
            limiter,
            observed: None,
            leading: false,
            last_renewed: None,
            failing: false,
        }
    }

    /// Tries the Lease every retry period, tells the main loop when leadership changes, and
    /// releases the Lease when `stop` fires.
    pub async fn run(mut self, tx: UnboundedSender<Msg>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(holding) => {
                    if self.failing {
                        tracing::info!(lease = %self.name, "Lease reachable again");
                        self.failing = false;
                    }
                    if holding {
                        self.last_renewed = Some(Instant::now());
                    }
                    self.set(holding, &tx);
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(lease = %self.name, error = %e, "cannot get or update the Lease; retrying");
                        self.failing = true;
                    }
                    let expired = self
                        .last_renewed
                        .is_none_or(|t| t.elapsed() > self.renew_deadline);
                    if self.leading && expired {
                        self.set(false, &tx);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period) => {}
                _ = stop.changed() => {
                    if self.leading {
                        self.release().await;
                    }
                    return;
                }
            }
        }
    }

    fn set(&mut self, leading: bool, tx: &UnboundedSender<Msg>) {
        if leading != self.leading {
            self.leading = leading;
            tracing::info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
            let _ = tx.send(Msg::Leader(leading));
        }
    }

    fn params() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: `Ok(true)` while we hold the Lease.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, String> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| e.to_string())?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs(self.lease_duration)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.limiter.acquire().await;
            return match self.api.create(&Self::params(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map_or(
                self.lease_duration,
                |s| Duration::from_secs(s.max(0) as u64),
            );
        let seen_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, t)| *t);
        if !holder.is_empty() && holder != self.identity && seen_at.elapsed() < duration {
            return Ok(false);
        }
        let mut next = spec;
        if holder != self.identity {
            next.acquire_time = Some(now());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(secs(self.lease_duration));
        next.renew_time = Some(now());
        lease.spec = Some(next);
        self.limiter.acquire().await;
        match self.api.replace(&self.name, &Self::params(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gives the Lease up so another replica takes over at once (client-go's release: holder
    /// cleared, a one-second duration).
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self.api.replace(&self.name, &Self::params(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.name, "Lease released"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "cannot release the Lease"),
        }
    }
}

//! A subscriber's delivery policy (contract §3.3-3.4, D16), parsed once from its `delivery`
//! block: how many attempts, the backoff between them, the per-attempt timeout and how far a
//! `Retry-After` is honoured.

use std::time::Duration;

use crate::imc::DeliverySpec;

/// D16: a computed retry delay never exceeds one hour (upstream: no cap).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Retries fire at once (no policy, or only one of policy/delay given).
    None,
    /// `delay × k`, k the zero-based index of the failed attempt: the first retry is immediate.
    Linear(Duration),
    /// `delay × 2^k`, k zero-based: the first retry waits `delay`.
    Exponential(Duration),
}

/// A subscriber's `delivery` block, parsed once when the channel set is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff: Backoff,
    /// Per-attempt timeout: connect, send, response head and body.
    pub timeout: Option<Duration>,
    /// Honour `Retry-After` on 429/503, capped at this value.
    pub retry_after_max: Option<Duration>,
}

/// ISO 8601 duration (`PT0.5S`, `PT1M`, `P1D`), as upstream's period library reads it.
pub fn parse_iso_duration(s: &str) -> Result<Duration, String> {
    let span: jiff::Span = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not an ISO 8601 duration: {e}"))?;
    let sd = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("`{s}` cannot be a fixed duration: {e}"))?;
    Duration::try_from(sd).map_err(|_| format!("`{s}` is negative"))
}

/// A duration as both processes' flags and ConfigMaps write them: `10s`, `500ms`, `1m30s`, a
/// bare number of seconds, or ISO 8601 (`PT10S`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let sd: jiff::SignedDuration = t
        .parse()
        .map_err(|e| format!("`{s}` is not a duration (like 10s, 500ms, PT10S): {e}"))?;
    Duration::try_from(sd).map_err(|_| format!("`{s}` is negative"))
}

impl DeliveryPolicy {
    /// `Ok(None)`: no `delivery` block, exactly one attempt and no timeout (upstream).
    pub fn from_spec(spec: Option<&DeliverySpec>) -> Result<Option<Self>, String> {
        let Some(spec) = spec else {
            return Ok(None);
        };
        let retry = match spec.retry {
            None => 0,
            Some(r) if r >= 0 => r as u32,
            Some(r) => return Err(format!("retry must be >= 0, got {r}")),
        };
        let delay = spec
            .backoff_delay
            .as_deref()
            .map(parse_iso_duration)
            .transpose()
            .map_err(|e| format!("backoffDelay: {e}"))?;
        let backoff = match (spec.backoff_policy.as_deref(), delay) {
            (Some(p), _) if p != "linear" && p != "exponential" => {
                return Err(format!(
                    "backoffPolicy must be linear or exponential, got `{p}`"
                ))
            }
            (Some("linear"), Some(d)) => Backoff::Linear(d),
            (Some("exponential"), Some(d)) => Backoff::Exponential(d),
            _ => Backoff::None,
        };
        let timeout = spec
            .timeout
            .as_deref()
            .map(parse_iso_duration)
            .transpose()
            .map_err(|e| format!("timeout: {e}"))?
            .filter(|d| !d.is_zero());
        let retry_after_max = spec
            .retry_after_max
            .as_deref()
            .map(parse_iso_duration)
            .transpose()
            .map_err(|e| format!("retryAfterMax: {e}"))?;
        Ok(Some(DeliveryPolicy {
            retry,
            backoff,
            timeout,
            retry_after_max,
        }))
    }

    /// Delay before retry number `k` (1-based): upstream evaluates its backoff with the zero-based
    /// index of the attempt that failed, so linear starts at zero and exponential at `delay`.
    pub fn delay(&self, k: u32) -> Duration {
        let i = k.saturating_sub(1);
        let d = match self.backoff {
            Backoff::None => Duration::ZERO,
            Backoff::Linear(d) => d.saturating_mul(i),
            Backoff::Exponential(d) => d.saturating_mul(1u32.checked_shl(i).unwrap_or(u32::MAX)),
        };
        d.min(MAX_DELAY)
    }

    /// The wait before retry `k` when the failed attempt was a 429 or 503 asking for
    /// `retry_after`: the backoff, or that longer delay when `retryAfterMax` opts in, capped by it
    /// (contract §3.4). Other failures pass `None`.
    pub fn delay_after(&self, k: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.delay(k);
        match (self.retry_after_max, retry_after) {
            (Some(max), Some(ra)) => backoff.max(ra.min(max).min(MAX_DELAY)),
            _ => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: Option<&str>, delay: Option<&str>, retry: Option<i32>) -> DeliverySpec {
        DeliverySpec {
            retry,
            backoff_policy: policy.map(str::to_owned),
            backoff_delay: delay.map(str::to_owned),
            ..DeliverySpec::default()
        }
    }

    #[test]
    fn zero_based_backoff_formulas() {
        let ms = Duration::from_millis;
        let exp =
            DeliveryPolicy::from_spec(Some(&spec(Some("exponential"), Some("PT0.2S"), Some(3))))
                .unwrap()
                .unwrap();
        assert_eq!(
            [exp.delay(1), exp.delay(2), exp.delay(3)],
            [ms(200), ms(400), ms(800)]
        );
        let lin = DeliveryPolicy::from_spec(Some(&spec(Some("linear"), Some("PT0.2S"), Some(3))))
            .unwrap()
            .unwrap();
        assert_eq!(
            [lin.delay(1), lin.delay(2), lin.delay(3)],
            [ms(0), ms(200), ms(400)]
        );
        let half = DeliveryPolicy::from_spec(Some(&spec(None, Some("PT1S"), Some(2))))
            .unwrap()
            .unwrap();
        assert_eq!(
            half.delay(2),
            Duration::ZERO,
            "delay without policy means none"
        );
    }

    #[test]
    fn delays_are_capped_at_an_hour() {
        let exp =
            DeliveryPolicy::from_spec(Some(&spec(Some("exponential"), Some("PT1S"), Some(40))))
                .unwrap()
                .unwrap();
        assert_eq!(exp.delay(40), MAX_DELAY);
    }

    #[test]
    fn invalid_delivery_is_refused_with_the_field_named() {
        let e = DeliveryPolicy::from_spec(Some(&spec(Some("linear"), Some("garbage"), None)))
            .unwrap_err();
        assert!(e.starts_with("backoffDelay"), "{e}");
        assert!(DeliveryPolicy::from_spec(Some(&spec(Some("cubic"), None, None))).is_err());
        assert!(DeliveryPolicy::from_spec(Some(&spec(None, None, Some(-1)))).is_err());
        assert_eq!(DeliveryPolicy::from_spec(None).unwrap(), None);
    }
}

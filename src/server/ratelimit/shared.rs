//! The per-user budget shared by every replica, in Redis (`--rate-limit-redis-url`).
//!
//! The same GCRA as the local limiter, done atomically by one Lua script with Redis's own
//! clock (`TIME`), so replicas with skewed clocks agree and a user who spreads requests over N
//! replicas gets one budget. Each user's state is one integer (the theoretical arrival time, in
//! microseconds) that expires once the bucket is full again, so Redis holds active users only.
//!
//! Redis never sees a user id: the key is a keyed BLAKE3 of it under a key derived from the
//! server secret (the same on every replica). Nothing of a query reaches Redis beyond "this
//! pseudonymous user asked for n lookups now".
//!
//! If Redis is unreachable or slow (over `TIMEOUT`), the request is checked against the
//! per-process limiter instead: the service stays up. That limiter is charged all along with
//! every request Redis allows here, so its state is warm when a fallback starts: a user who
//! spent their budget through this replica is refused by the fallback too, never handed a fresh
//! burst. (A user who spent it through *other* replicas still has, on this one, what this one has
//! not seen them spend: at most one budget per replica over an outage.) Each fallback counts in
//! `contact_discovery_rate_limit_fallbacks_total` and is logged at most every 10 s. After a
//! failure the replica drops its connection and checks locally for `BACKOFF_MS` before asking
//! Redis again, so a hung Redis (or a dead TCP path) costs one slow request per second, not a
//! 100 ms wait on every request, and the next attempt reconnects instead of reusing a
//! connection that may never answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{FingerprintLimiter, Limited};
use crate::clock::Clock;
use crate::domain::{ServerSecret, UserId};
use crate::store::redis_link::RedisLink;

/// Longest wait for Redis before falling back to the local limiter, unless `with_timeout`.
const TIMEOUT: Duration = Duration::from_millis(100);
/// BLAKE3 `derive_key` context of the key that hides user ids. Fixed: changing it resets
/// every shared budget.
const KEY_CONTEXT: &str = "contact-discovery 2026-11 shared rate-limit user key v1";
/// Fallback warnings at most this often.
const WARN_EVERY_MS: u64 = 10_000;
/// After a Redis failure, how long (ms) requests are checked locally without asking Redis.
const BACKOFF_MS: u64 = 1_000;

/// GCRA over `n` cells: KEYS[1] holds the theoretical arrival time (µs); ARGV = emission
/// interval (µs per fingerprint), tolerance (emission × burst), n. Returns {1, 0} when
/// allowed, {0, µs to wait} when not. Doubles are exact here: times stay far below 2^53 µs.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + n * emission
if new_tat - now > tolerance then
  return {0, new_tat - tolerance - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, 0}
"#;

/// Shared per-user budgets in Redis, with the local limiter as the fallback.
pub struct SharedLimiter {
    redis: RedisLink,
    script: redis::Script,
    user_key: zeroize::Zeroizing<[u8; 32]>,
    emission_us: u64,
    tolerance_us: u64,
    burst: u64,
    fallbacks: prometheus::IntCounter,
    last_warn_ms: AtomicU64,
    /// Until when (unix ms by `clock`) not to ask Redis; 0 while it works.
    skip_until_ms: AtomicU64,
    timeout: Duration,
    /// Wall time for the back-off and the warning interval (the budget itself runs on Redis's
    /// clock). Tests move a manual one.
    clock: Clock,
}

impl SharedLimiter {
    /// A shared budget of `burst` fingerprints refilled at `refill_per_day`, in the Redis at
    /// `url` (checked now; connecting happens on first use, so a replica starts while Redis is
    /// down).
    pub fn new(
        url: &str,
        secret: &ServerSecret,
        burst: u32,
        refill_per_day: u32,
        fallbacks: prometheus::IntCounter,
    ) -> Result<Self, redis::RedisError> {
        let emission_us = (86_400_000_000 / u64::from(refill_per_day.max(1))).max(1);
        Ok(Self {
            redis: RedisLink::open(url)?,
            script: redis::Script::new(GCRA),
            user_key: zeroize::Zeroizing::new(secret.derive(KEY_CONTEXT)),
            emission_us,
            tolerance_us: emission_us * u64::from(burst),
            burst: u64::from(burst),
            fallbacks,
            last_warn_ms: AtomicU64::new(0),
            skip_until_ms: AtomicU64::new(0),
            timeout: TIMEOUT,
            clock: Clock::System,
        })
    }

    /// The same limiter timing its back-off and warnings by `clock` (the system clock by
    /// default); the server passes its own, so tests can move time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The same limiter waiting at most `timeout` for Redis (100 ms by default) before it
    /// falls back; tests on a loaded machine use it so only the test of slowness is about time.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Redis key of `user`'s budget: `cd:rl:` and 16 bytes of a keyed BLAKE3, in hex.
    pub fn key_of(&self, user: &UserId) -> String {
        let hash = blake3::keyed_hash(&self.user_key, user.as_str().as_bytes());
        let mut key = String::with_capacity(6 + 32);
        key.push_str("cd:rl:");
        for byte in &hash.as_bytes()[..16] {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }

    /// Takes `n` fingerprints from `user`'s shared budget, or says how long until they fit;
    /// on any Redis trouble, asks `local` instead.
    pub async fn check(
        &self,
        user: &UserId,
        n: usize,
        local: &FingerprintLimiter,
    ) -> Result<(), Limited> {
        if n == 0 {
            return Ok(());
        }
        if n as u64 > self.burst {
            // Never fits; the API caps batches below the burst anyway.
            return Err(Limited {
                retry_after_secs: (self.tolerance_us / 1_000_000).max(1),
            });
        }
        if self.backing_off() {
            // Redis failed a moment ago: do not make this request wait for it too.
            self.fallbacks.inc();
            return local.check(user, n);
        }
        match tokio::time::timeout(self.timeout, self.ask_redis(user, n as u64)).await {
            Ok(Ok(verdict)) => {
                if verdict.is_ok() {
                    // Charge the fallback budget too, whatever it says: Redis decided. Were it
                    // charged only during a fallback, every outage would start everyone with a
                    // full burst on every replica.
                    let _ = local.check(user, n);
                }
                verdict
            }
            failed => {
                if failed.is_err() {
                    // A connection that does not answer in time may never answer (a dead TCP
                    // path is only noticed after minutes): reconnect next time.
                    self.redis.forget();
                }
                self.skip_until_ms.store(
                    self.clock.now_millis().saturating_add(BACKOFF_MS),
                    Ordering::Relaxed,
                );
                self.fallbacks.inc();
                self.warn(match failed {
                    Ok(Err(_)) => "redis error",
                    _ => "redis timeout",
                });
                local.check(user, n)
            }
        }
    }

    /// Whether Redis failed less than `BACKOFF_MS` ago. A wall clock stepped back does not
    /// stretch the back-off: it never lasts more than `BACKOFF_MS` from now.
    fn backing_off(&self) -> bool {
        let until = self.skip_until_ms.load(Ordering::Relaxed);
        let now = self.clock.now_millis();
        now < until && until - now <= BACKOFF_MS
    }

    async fn ask_redis(&self, user: &UserId, n: u64) -> Result<Result<(), Limited>, ()> {
        let mut conn = self.redis.shared().await.map_err(drop)?;
        let reply: Result<(i64, i64), _> = self
            .script
            .key(self.key_of(user))
            .arg(self.emission_us)
            .arg(self.tolerance_us)
            .arg(n)
            .invoke_async(&mut conn)
            .await;
        match reply {
            Ok((1, _)) => Ok(Ok(())),
            Ok((_, wait_us)) => {
                let wait_us = u64::try_from(wait_us).unwrap_or(0);
                Ok(Err(Limited {
                    retry_after_secs: wait_us.div_ceil(1_000_000).max(1),
                }))
            }
            Err(_) => {
                self.redis.forget();
                Err(())
            }
        }
    }

    fn warn(&self, why: &'static str) {
        let now = self.clock.now_millis();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            crate::safe_warn!(
                "shared rate limit unavailable; checking against this replica's own budget",
                reason = why,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(secret: u8) -> SharedLimiter {
        SharedLimiter::new(
            "redis://127.0.0.1:1/",
            &ServerSecret::from_bytes([secret; 32]),
            100,
            2_000,
            prometheus::IntCounter::new("x", "x").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn keys_hide_the_user_and_agree_across_replicas_sharing_the_secret() {
        // Hex digits only, so a key that merely encoded the id could contain it verbatim.
        let alice = UserId::parse("a11ce0").unwrap();
        let bob = UserId::parse("b0b").unwrap();
        let (one, other_replica, other_secret) = (limiter(1), limiter(1), limiter(2));
        let key = one.key_of(&alice);
        assert_eq!(key, other_replica.key_of(&alice), "same secret, same key");
        assert_ne!(key, one.key_of(&bob));
        assert_ne!(key, other_secret.key_of(&alice));
        let id_hex: String = alice.as_str().bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !key.contains(alice.as_str()) && !key.contains(&id_hex),
            "{key}"
        );
        assert!(
            !key.contains(&blake3::hash(alice.as_str().as_bytes()).to_hex()[..16]),
            "keyed, not a plain hash anyone can recompute"
        );
        assert!(key.starts_with("cd:rl:"));
        assert_eq!(key.len(), "cd:rl:".len() + 32);
    }

    #[test]
    fn an_unparseable_url_is_refused_at_start() {
        for url in [
            "not a url",
            "http://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/x",
        ] {
            let built = SharedLimiter::new(
                url,
                &ServerSecret::from_bytes([1; 32]),
                100,
                2_000,
                prometheus::IntCounter::new("x", "x").unwrap(),
            );
            assert!(built.is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_the_local_budget() {
        let shared = limiter(1);
        let local = FingerprintLimiter::new(100, 2_000).unwrap();
        let alice = UserId::parse("alice").unwrap();
        assert!(shared.check(&alice, 60, &local).await.is_ok());
        assert!(
            shared.check(&alice, 60, &local).await.is_err(),
            "local budget spent"
        );
        assert_eq!(shared.fallbacks.get(), 2);
        assert!(
            shared.check(&alice, 101, &local).await.is_err(),
            "over the burst"
        );
    }
}

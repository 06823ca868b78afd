//! One Redis server as the replicas' shared state uses it (the registry stream in
//! `store/replication/`, the rate-limit budgets in `server/ratelimit/shared.rs`): a client, plus one
//! multiplexed connection opened on first use and dropped after a failure, so the next use
//! reconnects instead of reusing a connection that may never answer again.

use std::time::Duration;

use redis::RedisResult;
use redis::aio::MultiplexedConnection;

/// A Redis server: the checked URL and the connection callers share.
pub struct RedisLink {
    client: redis::Client,
    shared: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisLink {
    /// Checks `url` (`redis[s]://[user:password@]host:port/db`); connects only when first used,
    /// so a replica can start while Redis is down.
    pub fn open(url: &str) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            shared: tokio::sync::Mutex::new(None),
        })
    }

    /// A connection of the caller's own (the registry follower's). Responses may take up to
    /// 30 s; callers that need an answer sooner bound their own wait.
    ///
    /// `url` decides authentication and transport: `redis://user:password@host` (an ACL user)
    /// or `redis://:password@host` (AUTH), `rediss://` for TLS, checked against the system's
    /// roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` may name a private CA); never unverified.
    pub async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The shared connection, opened now if there is none.
    pub async fn shared(&self) -> RedisResult<MultiplexedConnection> {
        let mut slot = self.shared.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.connect().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the shared connection after a failure or a timeout, so the next `shared` opens a
    /// new one. Never waits: a held slot is one being filled by a fresh connection anyway.
    pub fn forget(&self) {
        if let Ok(mut slot) = self.shared.try_lock() {
            *slot = None;
        }
    }
}

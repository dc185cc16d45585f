//! Redis persistence: the view, and the lock naming the acting coordinator.
//!
//! Keys (`{prefix}` is `--key-prefix`):
//!
//! - `{prefix}:membership`: a JSON string, the last view written:
//!   `{"version":1,"epoch":12,"members":[{"node_id":"gw-0",
//!   "grpc_addr":"10.0.0.1:7001","http_addr":"10.0.0.1:3000",
//!   "state":"active","joined_epoch":3,"incarnation":"8412..."}]}`
//!   (`incarnation` is a decimal string: u64 values do not survive JSON
//!   tools that read numbers as doubles). It is written by one Lua script
//!   that replaces it only with a higher epoch, so the stored epoch never
//!   goes back even when two writers race.
//! - `{prefix}:coordinator`: the id of the acting coordinator
//!   (`SET NX PX`, renewed every heartbeat interval, TTL one lease TTL,
//!   deleted on a clean shutdown).
//!
//! Every call is bounded by [`OP_TIMEOUT`]: callers never wait on a dead
//! Redis for long.

use std::time::Duration;

use redis::Script;
use ringway_proto::cluster::v1::{Member, MemberState, View};
use ringway_redis::{ConnectOptions, RedisConfig, RedisConn};
use serde::{Deserialize, Serialize};

/// Upper bound of one Redis call, reconnection included.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// Connection and response timeout of the underlying connection.
pub const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Upper bound of the first connection at start-up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The format version written in the stored view.
pub const FORMAT_VERSION: u32 = 1;

/// Writes `ARGV[2]` to `KEYS[1]` unless the stored view's epoch is at
/// least `ARGV[1]`. Returns `{written (0|1), stored epoch}`. A stored value
/// that is not a view is overwritten.
const SAVE_VIEW: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, dec = pcall(cjson.decode, cur)
  if ok and type(dec) == 'table' then
    local e = tonumber(dec['epoch'])
    if e and e >= tonumber(ARGV[1]) then
      return {0, e}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, tonumber(ARGV[1])}
"#;

/// Takes `KEYS[1]` for `ARGV[1]` with TTL `ARGV[2]` ms if it is free,
/// renews it if ours. Returns `{ours (0|1), holder}`.
const CLAIM_OWNER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1]}
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur}
end
return {0, cur}
"#;

/// Deletes `KEYS[1]` if it holds `ARGV[1]`.
const RELEASE_OWNER: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A failed Redis operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("Redis {op} failed: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("the member key in {key} is not 64 hex digits; delete it (members then join again once their leases lapse)")]
    BadMemberKey { key: String },
    #[error("the stored view in {key} is not readable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: ViewFormatError,
    },
}

/// A stored view this coordinator cannot read.
#[derive(Debug, thiserror::Error)]
pub enum ViewFormatError {
    #[error("not a stored view: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format version {found} (this coordinator reads {FORMAT_VERSION})")]
    Version { found: u32 },
}

/// Result of [`Store::save_view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The view is stored.
    Written,
    /// Not written: Redis already holds this epoch or a later one.
    AlreadyAtOrPast { stored_epoch: u64 },
}

/// Result of [`Store::claim_owner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This coordinator holds the lock (taken or renewed).
    Ours,
    /// Another coordinator holds it.
    HeldBy(String),
}

/// Redis access of one coordinator instance.
#[derive(Clone)]
pub struct Store {
    con: RedisConn,
    membership_key: String,
    owner_key: String,
    member_key_key: String,
    instance_id: String,
    save_view: Script,
    claim_owner: Script,
    release_owner: Script,
}

impl Store {
    /// Connects (bounded by [`CONNECT_TIMEOUT`]) and checks the server
    /// answers a PING.
    pub async fn connect(
        redis: &RedisConfig,
        key_prefix: &str,
        instance_id: String,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(IO_TIMEOUT, IO_TIMEOUT);
        options.retries = 2;
        options.max_delay = Duration::from_secs(1);
        let con = bounded(
            "connect",
            CONNECT_TIMEOUT,
            RedisConn::connect(redis, options),
        )
        .await?;
        let store = Store {
            con,
            membership_key: format!("{key_prefix}:membership"),
            owner_key: format!("{key_prefix}:coordinator"),
            member_key_key: format!("{key_prefix}:member-key"),
            instance_id,
            save_view: Script::new(SAVE_VIEW),
            claim_owner: Script::new(CLAIM_OWNER),
            release_owner: Script::new(RELEASE_OWNER),
        };
        let mut con = store.con.clone();
        let _: String =
            bounded("PING", OP_TIMEOUT, redis::cmd("PING").query_async(&mut con)).await?;
        Ok(store)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn membership_key(&self) -> &str {
        &self.membership_key
    }

    pub fn owner_key(&self) -> &str {
        &self.owner_key
    }

    /// The stored view, if any.
    pub async fn load_view(&self) -> Result<Option<View>, StoreError> {
        let mut con = self.con.clone();
        let raw: Option<String> = bounded(
            "GET",
            OP_TIMEOUT,
            redis::cmd("GET")
                .arg(&self.membership_key)
                .query_async(&mut con),
        )
        .await?;
        raw.map(|raw| {
            decode_view(&raw).map_err(|source| StoreError::Corrupt {
                key: self.membership_key.clone(),
                source,
            })
        })
        .transpose()
    }

    /// Stores `view` unless Redis already holds its epoch or a later one.
    pub async fn save_view(&self, view: &View) -> Result<SaveOutcome, StoreError> {
        let json = encode_view(view);
        let mut con = self.con.clone();
        let (written, stored): (i64, i64) = bounded(
            "save view",
            OP_TIMEOUT,
            self.save_view
                .key(&self.membership_key)
                .arg(view.epoch)
                .arg(json)
                .invoke_async(&mut con),
        )
        .await?;
        if written == 1 {
            Ok(SaveOutcome::Written)
        } else {
            Ok(SaveOutcome::AlreadyAtOrPast {
                stored_epoch: u64::try_from(stored).unwrap_or(0),
            })
        }
    }

    /// The key that signs the members' proofs of membership: made once
    /// (random, `SET NX`), then read by every coordinator, so a proof
    /// holds across coordinator restarts and failovers.
    pub async fn member_key(&self) -> Result<[u8; 32], StoreError> {
        let fresh: [u8; 32] = rand::random();
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let mut con = self.con.clone();
        // SET NX, then GET (SET NX GET needs Redis 7).
        let _: Option<String> = bounded(
            "member key",
            OP_TIMEOUT,
            redis::cmd("SET")
                .arg(&self.member_key_key)
                .arg(&hex)
                .arg("NX")
                .query_async(&mut con),
        )
        .await?;
        let stored: String = bounded(
            "member key",
            OP_TIMEOUT,
            redis::cmd("GET")
                .arg(&self.member_key_key)
                .query_async::<Option<String>>(&mut con),
        )
        .await?
        .unwrap_or(hex);
        let bytes: Vec<u8> = (0..stored.len())
            .step_by(2)
            .filter_map(|i| stored.get(i..i + 2))
            .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
            .collect();
        bytes.try_into().map_err(|_| StoreError::BadMemberKey {
            key: self.member_key_key.clone(),
        })
    }

    /// Takes the coordinator lock if free, renews it if ours.
    pub async fn claim_owner(&self, ttl: Duration) -> Result<Ownership, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut con = self.con.clone();
        let (ours, holder): (i64, String) = bounded(
            "claim coordinator lock",
            OP_TIMEOUT,
            self.claim_owner
                .key(&self.owner_key)
                .arg(&self.instance_id)
                .arg(ttl_ms)
                .invoke_async(&mut con),
        )
        .await?;
        if ours == 1 {
            Ok(Ownership::Ours)
        } else {
            Ok(Ownership::HeldBy(holder))
        }
    }

    /// Deletes the coordinator lock if ours. Returns whether it was.
    pub async fn release_owner(&self) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let deleted: i64 = bounded(
            "release coordinator lock",
            OP_TIMEOUT,
            self.release_owner
                .key(&self.owner_key)
                .arg(&self.instance_id)
                .invoke_async(&mut con),
        )
        .await?;
        Ok(deleted == 1)
    }
}

async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!("redis", op);
    let result =
        match tracing::Instrument::instrument(tokio::time::timeout(timeout, fut), span).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(StoreError::Redis { op, source }),
            Err(_) => Err(StoreError::Timeout { op, timeout }),
        };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::telemetry::metrics().store_duration.record(
        ringway_telemetry::seconds(started),
        &[
            opentelemetry::KeyValue::new("op", op),
            opentelemetry::KeyValue::new("outcome", outcome),
        ],
    );
    result
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredView {
    version: u32,
    epoch: u64,
    members: Vec<StoredMember>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredMember {
    node_id: String,
    grpc_addr: String,
    http_addr: String,
    state: StoredState,
    joined_epoch: u64,
    #[serde(with = "u64_string")]
    incarnation: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredState {
    Unspecified,
    Active,
    Draining,
}

impl From<i32> for StoredState {
    fn from(state: i32) -> Self {
        match MemberState::try_from(state) {
            Ok(MemberState::Active) => StoredState::Active,
            Ok(MemberState::Draining) => StoredState::Draining,
            Ok(MemberState::Unspecified) | Err(_) => StoredState::Unspecified,
        }
    }
}

impl From<StoredState> for MemberState {
    fn from(state: StoredState) -> Self {
        match state {
            StoredState::Unspecified => MemberState::Unspecified,
            StoredState::Active => MemberState::Active,
            StoredState::Draining => MemberState::Draining,
        }
    }
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The JSON stored in `{prefix}:membership`.
pub fn encode_view(view: &View) -> String {
    let stored = StoredView {
        version: FORMAT_VERSION,
        epoch: view.epoch,
        members: view
            .members
            .iter()
            .map(|m| StoredMember {
                node_id: m.node_id.clone(),
                grpc_addr: m.grpc_addr.clone(),
                http_addr: m.http_addr.clone(),
                state: StoredState::from(m.state),
                joined_epoch: m.joined_epoch,
                incarnation: m.incarnation,
            })
            .collect(),
    };
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// Reads what [`encode_view`] wrote.
pub fn decode_view(raw: &str) -> Result<View, ViewFormatError> {
    let stored: StoredView = serde_json::from_str(raw)?;
    if stored.version != FORMAT_VERSION {
        return Err(ViewFormatError::Version {
            found: stored.version,
        });
    }
    Ok(View {
        epoch: stored.epoch,
        members: stored
            .members
            .into_iter()
            .map(|m| Member {
                node_id: m.node_id,
                grpc_addr: m.grpc_addr,
                http_addr: m.http_addr,
                state: MemberState::from(m.state) as i32,
                joined_epoch: m.joined_epoch,
                incarnation: m.incarnation,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_round_trip_through_json() {
        let view = View {
            epoch: 42,
            members: vec![
                Member {
                    node_id: "gw-0".into(),
                    grpc_addr: "10.0.0.1:7001".into(),
                    http_addr: "10.0.0.1:3000".into(),
                    state: MemberState::Active as i32,
                    joined_epoch: 3,
                    incarnation: u64::MAX,
                },
                Member {
                    node_id: "gw-1".into(),
                    grpc_addr: "10.0.0.2:7001".into(),
                    http_addr: "10.0.0.2:3000".into(),
                    state: MemberState::Draining as i32,
                    joined_epoch: 40,
                    incarnation: 7,
                },
            ],
        };
        let json = encode_view(&view);
        assert!(json.contains(r#""epoch":42"#), "{json}");
        assert!(
            json.contains(r#""incarnation":"18446744073709551615""#),
            "{json}"
        );
        assert!(json.contains(r#""state":"draining""#), "{json}");
        assert_eq!(decode_view(&json).ok(), Some(view));
    }

    #[test]
    fn bad_stored_views_are_refused() {
        assert!(decode_view("").is_err());
        assert!(decode_view("{}").is_err());
        assert!(matches!(
            decode_view(r#"{"version":2,"epoch":1,"members":[]}"#),
            Err(ViewFormatError::Version { found: 2 })
        ));
        assert!(decode_view(
            r#"{"version":1,"epoch":1,"members":[{"node_id":"a","grpc_addr":"x","http_addr":"y","state":"gone","joined_epoch":1,"incarnation":"1"}]}"#
        )
        .is_err());
        assert_eq!(
            decode_view(r#"{"version":1,"epoch":7,"members":[]}"#).ok(),
            Some(View {
                epoch: 7,
                members: vec![]
            })
        );
    }
}

//! The registry in Redis: one key per session,
//! `{prefix}:sid:{sid}` = `"<epoch> <owner>"`, with a long TTL that the
//! owner refreshes rarely while the session lives (so a dead node's
//! entries go away by themselves), and one heartbeat key per node,
//! `{prefix}:alive:{node}`, written every second, that tells the node when
//! Redis lost its data.

use std::time::Duration;

use redis::Script;
use ringway_redis::{RedisConfig, RedisConn};

use super::{bounded, connect_redis, Entry, Registry, StoreError, UserPresence, CALL_TIMEOUT};
use ringway_engineio::{BoxFuture, Sid};

/// Keys refreshed per pipeline.
const REFRESH_BATCH: usize = 1000;

/// Writes the entry unless the stored epoch is the same or later.
const PUT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local e = tonumber(string.match(cur, '^(%d+) '))
  if e and e >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1
";

/// Deletes the key only if it still holds exactly this entry.
const REMOVE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Writes the heartbeat key; 1 if the previous one was still there.
const HEARTBEAT: &str = r"
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
if old then return 1 end
return 0
";

pub struct RedisRegistry {
    conn: RedisConn,
    prefix: String,
    ttl: Duration,
    put: Script,
    remove: Script,
    heartbeat: Script,
}

impl RedisRegistry {
    /// Connects (failing fast if Redis does not answer).
    pub async fn connect(
        redis: &RedisConfig,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Self, StoreError> {
        let conn = connect_redis(redis, CALL_TIMEOUT).await?;
        let registry = RedisRegistry {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            put: Script::new(PUT),
            remove: Script::new(REMOVE),
            heartbeat: Script::new(HEARTBEAT),
        };
        registry.ping().await?;
        Ok(registry)
    }

    fn key(&self, sid: Sid) -> String {
        format!("{}:sid:{}", self.prefix, sid)
    }

    /// `{prefix}:user:<namespace length>:<namespace>:<user>`: a hash of
    /// node -> 1 (the length keeps namespaces and users apart whatever
    /// they contain).
    fn user_key(&self, namespace: &str, user: &str) -> String {
        format!(
            "{}:user:{}:{}:{}",
            self.prefix,
            namespace.len(),
            namespace,
            user
        )
    }

    /// The commands that write one presence: the field, and the key's life.
    fn presence_commands(&self, change: &UserPresence) -> Vec<(String, redis::Cmd)> {
        let key = self.user_key(&change.namespace, &change.user);
        if !change.present {
            let mut del = redis::cmd("HDEL");
            del.arg(&key).arg(&change.node);
            return vec![(key, del)];
        }
        let mut set = redis::cmd("HSET");
        set.arg(&key).arg(&change.node).arg(1);
        let mut life = redis::cmd("PEXPIRE");
        life.arg(&key).arg(self.ttl.as_millis() as u64);
        vec![(key.clone(), set), (key, life)]
    }
}

impl Registry for RedisRegistry {
    fn put(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = self.key(sid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.put.key(key);
            call.arg(entry.epoch)
                .arg(&entry.owner)
                .arg(self.ttl.as_millis() as u64);
            let written: i64 = bounded("put", call.invoke_async(&mut conn)).await?;
            Ok(written == 1)
        })
    }

    fn get(&self, sid: Sid) -> BoxFuture<'_, Result<Option<Entry>, StoreError>> {
        let key = self.key(sid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let raw: Option<String> =
                bounded("get", redis::cmd("GET").arg(&key).query_async(&mut conn)).await?;
            match raw {
                None => Ok(None),
                Some(raw) => Entry::decode(&raw)
                    .map(Some)
                    .ok_or(StoreError::Corrupt(key)),
            }
        })
    }

    fn remove(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key(sid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.remove.key(key);
            call.arg(entry.encode());
            let _: i64 = bounded("remove", call.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn refresh(&self, entries: Vec<(Sid, Entry)>) -> BoxFuture<'_, Result<usize, StoreError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let ttl = self.ttl.as_millis() as u64;
            let mut rewritten = 0;
            for chunk in entries.chunks(REFRESH_BATCH) {
                let commands = chunk
                    .iter()
                    .map(|(sid, _)| {
                        let key = self.key(*sid);
                        let mut cmd = redis::cmd("PEXPIRE");
                        cmd.arg(&key).arg(ttl);
                        (key, cmd)
                    })
                    .collect();
                let replies = bounded("refresh", conn.query_keyed(commands)).await?;
                // PEXPIRE answers 0 for a key that is not there.
                for ((sid, entry), reply) in chunk.iter().zip(replies) {
                    if matches!(reply, redis::Value::Int(0))
                        && self.put(*sid, entry.clone()).await?
                    {
                        rewritten += 1;
                    }
                }
            }
            Ok(rewritten)
        })
    }

    fn user_presence(&self, changes: Vec<UserPresence>) -> BoxFuture<'_, Result<(), StoreError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            // One key stays in one slot: the order of its writes holds.
            let commands: Vec<(String, redis::Cmd)> = changes
                .iter()
                .flat_map(|c| self.presence_commands(c))
                .collect();
            if commands.is_empty() {
                return Ok(());
            }
            bounded("user_presence", conn.query_keyed(commands)).await?;
            Ok(())
        })
    }

    fn user_nodes(
        &self,
        namespace: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let key = self.user_key(namespace, user);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            bounded(
                "user_nodes",
                redis::cmd("HKEYS").arg(&key).query_async(&mut conn),
            )
            .await
        })
    }

    fn refresh_users(
        &self,
        present: Vec<UserPresence>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let mut lost = 0;
            for chunk in present.chunks(REFRESH_BATCH) {
                // HSET answers how many fields were new: 1 for one the
                // store had lost.
                let commands: Vec<(String, redis::Cmd)> = chunk
                    .iter()
                    .flat_map(|c| self.presence_commands(c))
                    .collect();
                let replies = bounded("user_refresh", conn.query_keyed(commands)).await?;
                lost += replies
                    .iter()
                    .step_by(2)
                    .filter(|r| matches!(r, redis::Value::Int(1)))
                    .count();
            }
            Ok(lost)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let _: String = bounded("ping", redis::cmd("PING").query_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn heartbeat(&self, node_id: &str, started_ms: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = super::alive_key(&self.prefix, node_id);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.heartbeat.key(key);
            let now = ringway_socketio::store::now_ms();
            call.arg(self.ttl.as_millis() as u64)
                .arg(format!("{started_ms} {now}"));
            let kept: i64 = bounded("heartbeat", call.invoke_async(&mut conn)).await?;
            Ok(kept == 1)
        })
    }

    fn sid_key(&self) -> BoxFuture<'_, Result<[u8; 32], StoreError>> {
        let key = format!("{}:sid-key", self.prefix);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let fresh: [u8; 32] = rand::random();
            let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
            // The first node makes it; every node reads the same one.
            let _: Option<String> = bounded(
                "sid key",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&hex)
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
            let stored: Option<String> = bounded(
                "sid key",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
            let stored = stored.unwrap_or(hex);
            let bytes: Vec<u8> = (0..stored.len())
                .step_by(2)
                .filter_map(|i| stored.get(i..i + 2))
                .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
                .collect();
            bytes.try_into().map_err(|_| StoreError::BadKey(key))
        })
    }
}

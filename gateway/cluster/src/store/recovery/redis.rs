//! The recovery store in Redis.
//!
//! - `<prefix>:{log}` (the braces a Redis Cluster hash tag: the log's keys
//!   share one slot): a stream, one entry per recoverable emit (field `d`,
//!   the encoded entry), ids assigned by Redis: they are the offsets.
//!   Appended with `XADD ... MAXLEN ~ N` (pipelined, one round trip per
//!   batch), trimmed by time with `XTRIM MINID ~`. Every node tails it
//!   with `XREAD BLOCK` on a connection of its own.
//! - `<prefix>:{log}:gen` and `<prefix>:{log}:since`: a random generation of
//!   the log and the offset after which it is complete. A Redis that lost
//!   its data (a restart without persistence) has neither; the first node
//!   to notice writes a new generation with `since` = Redis' clock now, so
//!   offsets from before the loss are no longer covered (those clients get
//!   a fresh session instead of an incomplete replay).
//! - `<prefix>:rec:{pid}`: a hash (`g` generation, `s` state) with a TTL.

use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value};
use ringway_redis::{RedisConfig, RedisConn};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Appended, NodeSeen, Offset, Range, Record, RecoveryStore, StateWrite,
    StoreError as RecoveryError, StoredState, Tail, TAIL_BATCHES,
};
use crate::store::{bounded, connect_redis, StoreError, CALL_TIMEOUT};
use ringway_engineio::BoxFuture;

/// How long one tail read blocks waiting for entries.
const TAIL_BLOCK_MS: u64 = 1000;
/// Entries per tail read.
const TAIL_COUNT: usize = 512;
/// State writes per pipeline.
const STATE_BATCH: usize = 500;
/// Longest an append waits for its replicas (`--redis-wait-replicas`).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(200);

/// Makes sure the log has a generation; a missing one means the log is
/// new or lost: `since` becomes the millisecond before Redis' clock now.
/// Returns {generation, since}.
const ENSURE_GEN: &str = r"
local gen = redis.call('GET', KEYS[1])
if not gen then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  gen = ARGV[1]
  redis.call('SET', KEYS[1], gen)
  redis.call('SET', KEYS[2], string.format('%d-18446744073709551615', ms - 1))
end
return {gen, redis.call('GET', KEYS[2]) or '0-0'}
";

/// Whether the log lost entries this node had read: its last id (what
/// Redis will append after) is below ARGV[1], the last id this node read
/// (a failover to a replica that had not received them, or a restart).
/// Then a new generation starts (ARGV[2]), complete only from Redis' clock
/// now: offsets from before are not honoured (their clients get fresh
/// sockets), never answered with entries that took the lost ids.
/// Returns {1, since, last id} when it started one, else {0}.
const LOST_CHECK: &str = r"
local function id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms or 0), tonumber(seq or 0)
end
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local lms, lseq = id(last)
local rms, rseq = id(ARGV[1])
if lms > rms or (lms == rms and lseq >= rseq) then return {0} end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = string.format('%d-18446744073709551615', ms - 1)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], since)
return {1, since, last}
";

/// How often the tail checks that the log did not lose what it read.
const LOST_CHECK_EVERY: Duration = Duration::from_secs(2);

/// {since, max deleted id or false, last id or false, first id or false,
/// entries after ARGV[1] up to ARGV[2], at most ARGV[3]}.
const RANGE: &str = r"
local since = redis.call('GET', KEYS[2])
if not since then return {false, false, false, false, {}} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {since, false, false, false, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local maxdel, last, first = false, false, false
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'max-deleted-entry-id' then maxdel = info[i + 1]
  elseif k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1]
  end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])
return {since, maxdel, last, first, entries}
";

const PUT_UPDATE: &str = r"
local g = redis.call('HGET', KEYS[1], 'g')
if g and tonumber(g) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

const PUT_TAKEOVER: &str = r"
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

const EXPIRE: &str = r"
if redis.call('HGET', KEYS[1], 'g') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const DELETE: &str = r"
if redis.call('HGET', KEYS[1], 'g') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisRecoveryStore {
    /// Where the tail's own connection goes.
    redis: RedisConfig,
    conn: RedisConn,
    log_key: String,
    gen_key: String,
    since_key: String,
    state_prefix: String,
    /// The key prefix, for the nodes' heartbeat keys.
    prefix: String,
    max_len: usize,
    max_bytes: u64,
    /// Replicas an append waits for (`WAIT`), 0: none.
    wait_replicas: u32,
    /// The appends' connection: its own when they wait (a `WAIT` holds
    /// back every later command of its connection until it returns), else
    /// the shared one.
    append_conn: RedisConn,
    ensure_gen: Script,
    range: Script,
    put_update: Script,
    put_takeover: Script,
    expire: Script,
    delete: Script,
}

/// The log's generation and `since`, written if missing.
async fn ensure_generation(
    conn: &mut RedisConn,
    script: &Script,
    gen_key: &str,
    since_key: &str,
) -> Result<(String, Offset), StoreError> {
    let fresh = format!("{:016x}", rand::random::<u64>());
    let mut call = script.key(gen_key);
    call.key(since_key).arg(fresh);
    let (gen, since): (String, String) = bounded("log_gen", call.invoke_async(conn)).await?;
    let since = Offset::parse(&since).ok_or_else(|| StoreError::Corrupt(since_key.to_owned()))?;
    Ok((gen, since))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn offset(v: &Value) -> Option<Offset> {
    text(v).and_then(|s| Offset::parse(&s))
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) as records: the
/// value of field `d`. Entries without one are skipped.
fn records(v: &Value) -> Vec<Record> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = offset(parts.first()?)?;
            let fields = match parts.get(1)? {
                Value::Array(f) => f.clone(),
                Value::Map(m) => m.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
                _ => return None,
            };
            let data = fields.chunks(2).find_map(|kv| match kv {
                [k, Value::BulkString(d)] if text(k).as_deref() == Some("d") => {
                    Some(Bytes::copy_from_slice(d))
                }
                _ => None,
            })?;
            Some(Record { offset: id, data })
        })
        .collect()
}

/// The entries of an `XREAD` reply for one stream (nil: none).
fn xread_records(v: &Value) -> Vec<Record> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => records(&kv[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| records(e)).collect(),
        _ => Vec::new(),
    }
}

impl RedisRecoveryStore {
    /// Connects (failing fast if Redis does not answer). `max_len` bounds
    /// the log (approximately, as `MAXLEN ~` does); `max_bytes` bounds the
    /// memory it takes in Redis, checked at each trim. With
    /// `wait_replicas`, every append waits (up to [`WAIT_TIMEOUT`]) for
    /// that many replicas to have it.
    pub async fn connect(
        redis: &RedisConfig,
        prefix: &str,
        max_len: usize,
        max_bytes: u64,
        wait_replicas: u32,
    ) -> Result<Self, StoreError> {
        let conn = connect_redis(redis, CALL_TIMEOUT).await?;
        let append_conn = if wait_replicas > 0 {
            connect_redis(redis, CALL_TIMEOUT).await?
        } else {
            conn.clone()
        };
        // The log's keys share one hash slot (its scripts read several).
        let log = format!("{prefix}:{{log}}");
        Ok(RedisRecoveryStore {
            redis: redis.clone(),
            conn,
            gen_key: format!("{log}:gen"),
            since_key: format!("{log}:since"),
            log_key: log,
            state_prefix: format!("{prefix}:rec:"),
            prefix: prefix.to_owned(),
            max_len: max_len.max(1),
            max_bytes: max_bytes.max(1),
            wait_replicas,
            append_conn,
            ensure_gen: Script::new(ENSURE_GEN),
            range: Script::new(RANGE),
            put_update: Script::new(PUT_UPDATE),
            put_takeover: Script::new(PUT_TAKEOVER),
            expire: Script::new(EXPIRE),
            delete: Script::new(DELETE),
        })
    }

    fn state_key(&self, pid: &str) -> String {
        format!("{}{}", self.state_prefix, pid)
    }

    /// The last id the log gave (`0-0` for a log never written).
    async fn last_id(&self, conn: &mut RedisConn) -> Result<Offset, StoreError> {
        let reply: Value = bounded(
            "log_last",
            redis::cmd("XREVRANGE")
                .arg(&self.log_key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(conn),
        )
        .await?;
        Ok(records(&reply).first().map_or(Offset::ZERO, |r| r.offset))
    }
}

impl RecoveryStore for RedisRecoveryStore {
    fn node_seen(&self, node: &str) -> BoxFuture<'_, Result<Option<NodeSeen>, RecoveryError>> {
        let key = crate::store::alive_key(&self.prefix, node);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let raw: Option<String> = bounded(
                "node_seen",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
            Ok(raw.as_deref().and_then(NodeSeen::parse))
        })
    }

    fn append(&self, entries: Vec<Bytes>) -> BoxFuture<'_, Result<Appended, RecoveryError>> {
        let mut conn = self.append_conn.clone();
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(Appended::Durable);
            }
            let mut pipe = redis::pipe();
            for data in &entries {
                pipe.cmd("XADD")
                    .arg(&self.log_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.max_len)
                    .arg("*")
                    .arg("d")
                    .arg(data.as_ref())
                    .ignore();
            }
            if self.wait_replicas == 0 {
                let () = bounded("log_append", pipe.query_async(&mut conn)).await?;
                return Ok(Appended::Durable);
            }
            // In the same pipeline, so on the same connection (and, on a
            // Redis Cluster, the same master): the batch's writes on that
            // many replicas, or the count that confirmed in time.
            pipe.cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(WAIT_TIMEOUT.as_millis() as u64);
            let (acked,): (u64,) = bounded("log_append", pipe.query_async(&mut conn)).await?;
            Ok(if acked >= u64::from(self.wait_replicas) {
                Appended::Durable
            } else {
                Appended::Unreplicated
            })
        })
    }

    fn tail(&self) -> BoxFuture<'_, Result<Tail, RecoveryError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (mut gen, since) =
                ensure_generation(&mut conn, &self.ensure_gen, &self.gen_key, &self.since_key)
                    .await?;
            let start = self.last_id(&mut conn).await?.max(since);
            // The blocking reads get a connection of their own, with room
            // for the block in its response timeout.
            let block = Duration::from_millis(TAIL_BLOCK_MS);
            let mut reader = connect_redis(&self.redis, block + CALL_TIMEOUT * 2).await?;
            let (tx, batches) = mpsc::channel(TAIL_BATCHES);
            let key = self.log_key.clone();
            let gen_key = self.gen_key.clone();
            let since_key = self.since_key.clone();
            let script = self.ensure_gen.clone();
            let lost_check = Script::new(LOST_CHECK);
            tokio::spawn(async move {
                let mut last = start;
                let mut failing = false;
                let mut checked = tokio::time::Instant::now();
                loop {
                    if checked.elapsed() >= LOST_CHECK_EVERY && !failing {
                        checked = tokio::time::Instant::now();
                        let fresh = format!("{:016x}", rand::random::<u64>());
                        let mut call = lost_check.key(&key);
                        call.key(&gen_key)
                            .key(&since_key)
                            .arg(last.to_string())
                            .arg(&fresh);
                        let lost: redis::RedisResult<Vec<String>> =
                            call.invoke_async(&mut conn).await;
                        if let Ok(lost) = lost {
                            if lost.first().map(String::as_str) == Some("1") {
                                let now_last = lost
                                    .get(2)
                                    .and_then(|l| Offset::parse(l))
                                    .unwrap_or(Offset::ZERO);
                                warn!(read = %last, log_last = %now_last, "recovery log: entries this node read were lost by Redis (a failover to a replica that lacked them, or a restart): a new log generation starts; clients with older offsets get fresh sockets");
                                gen = fresh;
                                last = now_last;
                            }
                        }
                    }
                    let mut pipe = redis::pipe();
                    pipe.cmd("GET").arg(&gen_key);
                    pipe.cmd("XREAD")
                        .arg("COUNT")
                        .arg(TAIL_COUNT)
                        .arg("BLOCK")
                        .arg(TAIL_BLOCK_MS)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(last.to_string());
                    let reply: redis::RedisResult<(Option<String>, Value)> =
                        pipe.query_async(&mut reader).await;
                    let (stored_gen, entries) = match reply {
                        Ok(reply) => reply,
                        Err(err) => {
                            if !failing {
                                warn!(%err, "recovery log tail: read failed, retrying");
                                failing = true;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                    };
                    if failing {
                        info!("recovery log tail: reading again");
                        failing = false;
                    }
                    if stored_gen.as_deref() != Some(gen.as_str()) {
                        // Lost or new: mark where the log is complete again.
                        let ensured =
                            ensure_generation(&mut conn, &script, &gen_key, &since_key).await;
                        if let Ok((new_gen, since)) = ensured {
                            warn!(%since, "recovery log lost by the store: a new log starts");
                            gen = new_gen;
                        }
                    }
                    let records = xread_records(&entries);
                    if let Some(r) = records.last() {
                        last = r.offset;
                    }
                    if !records.is_empty() && tx.send(records).await.is_err() {
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            });
            Ok(Tail { start, batches })
        })
    }

    fn range(
        &self,
        after: Offset,
        until: Offset,
        max: usize,
    ) -> BoxFuture<'_, Result<Range, RecoveryError>> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.range.key(&self.log_key);
            call.key(&self.since_key)
                .arg(after.to_string())
                .arg(until.to_string())
                .arg(max + 1);
            let reply: Value = bounded("log_range", call.invoke_async(&mut conn)).await?;
            let Value::Array(parts) = reply else {
                return Err(StoreError::Corrupt(self.log_key.clone()).into());
            };
            let get = |i: usize| parts.get(i).and_then(offset);
            let since = get(0);
            let max_deleted = get(1);
            let last = get(2).unwrap_or(Offset::ZERO);
            let first = get(3);
            let mut records = parts.get(4).map(records).unwrap_or_default();
            let complete = records.len() <= max;
            records.truncate(max);
            // Complete after `after` if the log started at or before it
            // and nothing after it was trimmed (Redis 7 tells the largest
            // id it deleted; older ones only the first id left).
            let trimmed_ok = match (max_deleted, first) {
                (Some(deleted), _) => deleted <= after,
                (None, Some(first)) => first <= after || last <= after,
                (None, None) => true,
            };
            let covered = since.is_some_and(|s| s <= after) && trimmed_ok;
            Ok(Range {
                records,
                covered,
                complete,
                last,
            })
        })
    }

    fn trim(&self, window: Duration) -> BoxFuture<'_, Result<(), RecoveryError>> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let oldest = super::now_ms().saturating_sub(window.as_millis() as u64);
            let _: Value = bounded(
                "log_trim",
                redis::cmd("XTRIM")
                    .arg(&self.log_key)
                    .arg("MINID")
                    .arg("~")
                    .arg(Offset::at_ms(oldest).to_string())
                    .query_async(&mut conn),
            )
            .await?;
            // Then by memory: Redis streams trim by count, so the count
            // that fits is estimated from the memory the log takes now
            // (sampled) and its length, with a tenth to spare.
            let (used, len): (Option<u64>, u64) = bounded(
                "log_size",
                redis::pipe()
                    .cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&self.log_key)
                    .cmd("XLEN")
                    .arg(&self.log_key)
                    .query_async(&mut conn),
            )
            .await?;
            if let Some(used) = used.filter(|used| *used > self.max_bytes && len > 1) {
                let keep = ((len as f64) * (self.max_bytes as f64 / used as f64) * 0.9) as u64;
                ringway_engineio::metrics::metrics()
                    .limit_refusals
                    .add(1, &ringway_telemetry::attr("limit", "recovery_log_bytes"));
                let _: Value = bounded(
                    "log_trim",
                    redis::cmd("XTRIM")
                        .arg(&self.log_key)
                        .arg("MAXLEN")
                        .arg(keep.max(1))
                        .query_async(&mut conn),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn put_state(
        &self,
        pid: &str,
        generation: u64,
        data: Bytes,
        ttl: Duration,
        mode: StateWrite,
    ) -> BoxFuture<'_, Result<bool, RecoveryError>> {
        let key = self.state_key(pid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let script = match mode {
                StateWrite::Update => &self.put_update,
                StateWrite::TakeOver { .. } => &self.put_takeover,
            };
            let mut call = script.key(key);
            call.arg(generation)
                .arg(data.as_ref())
                .arg(ttl.as_millis() as u64);
            if let StateWrite::TakeOver { from } = mode {
                call.arg(from);
            }
            let written: i64 = bounded("state_put", call.invoke_async(&mut conn)).await?;
            Ok(written == 1)
        })
    }

    fn get_state(&self, pid: &str) -> BoxFuture<'_, Result<Option<StoredState>, RecoveryError>> {
        let key = self.state_key(pid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let (generation, data): (Option<u64>, Option<Vec<u8>>) = bounded(
                "state_get",
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("g")
                    .arg("s")
                    .query_async(&mut conn),
            )
            .await?;
            Ok(match (generation, data) {
                (Some(generation), Some(data)) => Some(StoredState {
                    generation,
                    data: Bytes::from(data),
                }),
                _ => None,
            })
        })
    }

    fn expire_state(
        &self,
        pid: &str,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RecoveryError>> {
        let key = self.state_key(pid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.expire.key(key);
            call.arg(generation).arg(ttl.as_millis().max(1) as u64);
            let _: i64 = bounded("state_expire", call.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn delete_state(&self, pid: &str, generation: u64) -> BoxFuture<'_, Result<(), RecoveryError>> {
        let key = self.state_key(pid);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut call = self.delete.key(key);
            call.arg(generation);
            let _: i64 = bounded("state_delete", call.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn refresh_states(
        &self,
        pids: Vec<String>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, RecoveryError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let ttl = ttl.as_millis() as u64;
            let mut missing = Vec::new();
            for chunk in pids.chunks(STATE_BATCH) {
                let commands = chunk
                    .iter()
                    .map(|pid| {
                        let key = self.state_key(pid);
                        let mut cmd = redis::cmd("PEXPIRE");
                        cmd.arg(&key).arg(ttl);
                        (key, cmd)
                    })
                    .collect();
                let found = bounded("state_refresh", conn.query_keyed(commands)).await?;
                // PEXPIRE answers 0 for a key that is not there.
                missing.extend(
                    chunk
                        .iter()
                        .zip(found)
                        .filter(|(_, n)| matches!(n, Value::Int(0)))
                        .map(|(pid, _)| pid.clone()),
                );
            }
            Ok(missing)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_parse_and_skip_what_is_not_an_entry() {
        let entries = Value::Array(vec![
            Value::Array(vec![
                bulk("5-1"),
                Value::Array(vec![bulk("d"), bulk("one")]),
            ]),
            Value::Array(vec![bulk("garbage")]),
            Value::Array(vec![bulk("6-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
            Value::Array(vec![
                bulk("7-0"),
                Value::Array(vec![bulk("d"), bulk("two")]),
            ]),
        ]);
        let got = records(&entries);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].offset, Offset::new(5, 1));
        assert_eq!(got[1].data, Bytes::from_static(b"two"));
        let xread = Value::Array(vec![Value::Array(vec![bulk("k"), entries])]);
        assert_eq!(xread_records(&xread).len(), 2);
        assert!(xread_records(&Value::Nil).is_empty());
    }
}

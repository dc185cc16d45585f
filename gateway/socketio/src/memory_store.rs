//! The recovery store of a node alone: the log and the states in memory.
//! Recovery then works while the process lives (a client that lost its
//! transport, not its node), as in the reference server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::store::{
    now_ms, Appended, Offset, Range, Record, RecoveryStore, StateWrite, StoreError, StoredState,
    Tail, TAIL_BATCHES,
};
use ringway_engineio::BoxFuture;

struct Log {
    entries: VecDeque<Record>,
    /// Bytes of the entries' data.
    bytes: u64,
    /// The last offset given.
    last: Offset,
    /// The largest offset trimmed away.
    trimmed: Offset,
}

/// Entries per batch the tail hands on.
const TAIL_COUNT: usize = 512;

struct State {
    generation: u64,
    data: Bytes,
    expires: Instant,
}

pub struct MemoryRecoveryStore {
    max_len: usize,
    max_bytes: u64,
    /// Shared with the tail's task, which reads the log itself when told
    /// of new entries: nothing is buffered outside the bounded log.
    log: Arc<Mutex<Log>>,
    appended: Arc<Notify>,
    states: Mutex<HashMap<String, State>>,
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl MemoryRecoveryStore {
    /// A log of at most `max_len` entries and `max_bytes` bytes of data.
    pub fn new(max_len: usize, max_bytes: u64) -> MemoryRecoveryStore {
        MemoryRecoveryStore {
            max_len: max_len.max(1),
            max_bytes: max_bytes.max(1),
            log: Arc::new(Mutex::new(Log {
                entries: VecDeque::new(),
                bytes: 0,
                last: Offset::ZERO,
                trimmed: Offset::ZERO,
            })),
            appended: Arc::new(Notify::new()),
            states: Mutex::new(HashMap::new()),
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn states(&self) -> MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in the log now.
    pub fn len(&self) -> usize {
        self.log().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// States held now (expired ones included until the next trim).
    pub fn state_count(&self) -> usize {
        self.states().len()
    }
}

impl Log {
    /// The next offset: the current millisecond, or the last one's next
    /// sequence if the clock has not moved past it (as Redis does).
    fn next_offset(&mut self) -> Offset {
        let ms = now_ms();
        let next = if ms > self.last.ms {
            Offset::at_ms(ms)
        } else {
            Offset::new(self.last.ms, self.last.seq + 1)
        };
        self.last = next;
        next
    }

    fn drop_front(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.bytes -= old.data.len() as u64;
            self.trimmed = self.trimmed.max(old.offset);
        }
    }
}

impl RecoveryStore for MemoryRecoveryStore {
    fn append(&self, entries: Vec<Bytes>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        {
            let mut log = self.log();
            for data in entries {
                let offset = log.next_offset();
                log.bytes += data.len() as u64;
                log.entries.push_back(Record { offset, data });
                while log.entries.len() > self.max_len
                    || (log.bytes > self.max_bytes && log.entries.len() > 1)
                {
                    log.drop_front();
                }
            }
        }
        self.appended.notify_one();
        ready(Ok(Appended::Durable))
    }

    fn tail(&self) -> BoxFuture<'_, Result<Tail, StoreError>> {
        let start = self.log().last;
        let (out, batches) = mpsc::channel(TAIL_BATCHES);
        let (log, appended) = (self.log.clone(), self.appended.clone());
        tokio::spawn(async move {
            let mut last = start;
            loop {
                // Registered before looking, so an append in between wakes
                // us (a permit is kept).
                let notified = appended.notified();
                let batch: Vec<Record> = {
                    let log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let from = log.entries.partition_point(|r| r.offset <= last);
                    log.entries
                        .range(from..)
                        .take(TAIL_COUNT)
                        .cloned()
                        .collect()
                };
                match batch.last() {
                    Some(r) => last = r.offset,
                    None => {
                        notified.await;
                        continue;
                    }
                }
                if out.send(batch).await.is_err() {
                    return;
                }
            }
        });
        ready(Ok(Tail { start, batches }))
    }

    fn range(
        &self,
        after: Offset,
        until: Offset,
        max: usize,
    ) -> BoxFuture<'_, Result<Range, StoreError>> {
        let log = self.log();
        let start = log.entries.partition_point(|r| r.offset <= after);
        let mut records = Vec::new();
        let mut complete = true;
        for record in log.entries.range(start..) {
            if record.offset > until {
                break;
            }
            if records.len() == max {
                complete = false;
                break;
            }
            records.push(record.clone());
        }
        ready(Ok(Range {
            records,
            covered: log.trimmed <= after,
            complete,
            last: log.last,
        }))
    }

    fn trim(&self, window: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let oldest = Offset::at_ms(now_ms().saturating_sub(window.as_millis() as u64));
        {
            let mut log = self.log();
            while log.entries.front().is_some_and(|r| r.offset < oldest) {
                log.drop_front();
            }
        }
        let now = Instant::now();
        self.states().retain(|_, s| s.expires > now);
        ready(Ok(()))
    }

    fn put_state(
        &self,
        pid: &str,
        generation: u64,
        data: Bytes,
        ttl: Duration,
        mode: StateWrite,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut states = self.states();
        let current = states
            .get(pid)
            .filter(|s| s.expires > now)
            .map(|s| s.generation);
        let allowed = match mode {
            StateWrite::Update => current.is_none_or(|g| g <= generation),
            StateWrite::TakeOver { from } => current == Some(from),
        };
        if allowed {
            states.insert(
                pid.to_owned(),
                State {
                    generation,
                    data,
                    expires: now + ttl,
                },
            );
        }
        ready(Ok(allowed))
    }

    fn get_state(&self, pid: &str) -> BoxFuture<'_, Result<Option<StoredState>, StoreError>> {
        let now = Instant::now();
        let state = self
            .states()
            .get(pid)
            .filter(|s| s.expires > now)
            .map(|s| StoredState {
                generation: s.generation,
                data: s.data.clone(),
            });
        ready(Ok(state))
    }

    fn expire_state(
        &self,
        pid: &str,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        if let Some(state) = self.states().get_mut(pid) {
            if state.generation == generation {
                state.expires = Instant::now() + ttl;
            }
        }
        ready(Ok(()))
    }

    fn delete_state(&self, pid: &str, generation: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut states = self.states();
        if states.get(pid).is_some_and(|s| s.generation == generation) {
            states.remove(pid);
        }
        ready(Ok(()))
    }

    fn refresh_states(
        &self,
        pids: Vec<String>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let now = Instant::now();
        let mut states = self.states();
        let mut missing = Vec::new();
        for pid in pids {
            match states.get_mut(&pid) {
                Some(state) => state.expires = now + ttl,
                None => missing.push(pid),
            }
        }
        ready(Ok(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn the_tail_hands_on_every_entry_in_order() {
        let store = MemoryRecoveryStore::new(100, u64::MAX);
        let mut tail = store.tail().await.unwrap();
        assert_eq!(tail.start, Offset::ZERO);
        for i in 0..20 {
            store.append(vec![data(&format!("{i}"))]).await.unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 20 {
            seen.extend(tail.batches.recv().await.unwrap());
        }
        let got: Vec<Bytes> = seen.iter().map(|r| r.data.clone()).collect();
        let want: Vec<Bytes> = (0..20).map(|i| data(&format!("{i}"))).collect();
        assert_eq!(got, want);
        let offsets: Vec<Offset> = seen.iter().map(|r| r.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    #[tokio::test]
    async fn log_orders_bounds_and_covers() {
        let store = MemoryRecoveryStore::new(3, u64::MAX);
        let end = Offset::new(u64::MAX, 0);
        let mut offsets = Vec::new();
        for d in ["a", "b", "c", "d"] {
            store.append(vec![data(d)]).await.unwrap();
            let all = store.range(Offset::ZERO, end, 10).await.unwrap();
            offsets.push(all.last);
        }
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        // Bounded at 3: "a" is gone, so nothing before "b" is covered.
        assert_eq!(store.len(), 3);
        let all = store.range(Offset::ZERO, offsets[3], 10).await.unwrap();
        assert!(!all.covered);
        let from_a = store.range(offsets[0], offsets[3], 10).await.unwrap();
        assert!(from_a.covered && from_a.complete);
        assert_eq!(from_a.records.len(), 3);
        assert_eq!(from_a.records[0].data, data("b"));
        assert_eq!(from_a.last, offsets[3]);
        // Up to `until` only, and cut at `max`.
        let upto = store.range(offsets[0], offsets[1], 10).await.unwrap();
        assert_eq!(upto.records.len(), 1);
        let cut = store.range(offsets[0], offsets[3], 2).await.unwrap();
        assert_eq!(cut.records.len(), 2);
        assert!(!cut.complete);
    }

    #[tokio::test]
    async fn states_follow_generations_and_expire() {
        let store = MemoryRecoveryStore::new(10, u64::MAX);
        let ttl = Duration::from_secs(60);
        assert!(store
            .put_state("p", 1, data("v1"), ttl, StateWrite::Update)
            .await
            .unwrap());
        // A takeover from the wrong generation loses; from the right one wins.
        let take = |from| StateWrite::TakeOver { from };
        assert!(!store
            .put_state("p", 2, data("x"), ttl, take(0))
            .await
            .unwrap());
        assert!(store
            .put_state("p", 2, data("v2"), ttl, take(1))
            .await
            .unwrap());
        // The old holder can no longer write, expire or delete it.
        assert!(!store
            .put_state("p", 1, data("old"), ttl, StateWrite::Update)
            .await
            .unwrap());
        store.delete_state("p", 1).await.unwrap();
        let got = store.get_state("p").await.unwrap().unwrap();
        assert_eq!((got.generation, got.data), (2, data("v2")));
        // Expired: gone.
        store.expire_state("p", 2, Duration::ZERO).await.unwrap();
        assert!(store.get_state("p").await.unwrap().is_none());
        store.trim(ttl).await.unwrap();
        assert_eq!(store.state_count(), 0);
        assert_eq!(
            store.refresh_states(vec!["p".into()], ttl).await.unwrap(),
            vec!["p".to_owned()]
        );
    }

    #[tokio::test]
    async fn the_log_keeps_to_its_bytes() {
        let store = MemoryRecoveryStore::new(1000, 100);
        store
            .append((0..10).map(|_| Bytes::from(vec![0u8; 30])).collect())
            .await
            .expect("append");
        // 3 entries of 30 bytes fit in 100.
        assert_eq!(store.len(), 3);
        // One larger than the bound stays alone (the newest is kept).
        store
            .append(vec![Bytes::from(vec![0u8; 500])])
            .await
            .expect("append");
        assert_eq!(store.len(), 1);
    }
}

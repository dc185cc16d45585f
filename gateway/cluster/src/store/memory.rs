//! The registry of a node alone: a map in memory.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Entry, Registry, StoreError};
use ringway_engineio::{BoxFuture, Sid};

#[derive(Default)]
pub struct MemoryRegistry {
    entries: Mutex<HashMap<Sid, Entry>>,
}

impl MemoryRegistry {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Registry for MemoryRegistry {
    fn put(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut entries = self.entries();
        let newer = entries.get(&sid).is_none_or(|cur| cur.epoch < entry.epoch);
        if newer {
            entries.insert(sid, entry);
        }
        ready(Ok(newer))
    }

    fn get(&self, sid: Sid) -> BoxFuture<'_, Result<Option<Entry>, StoreError>> {
        ready(Ok(self.entries().get(&sid).cloned()))
    }

    fn remove(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut entries = self.entries();
        if entries.get(&sid) == Some(&entry) {
            entries.remove(&sid);
        }
        ready(Ok(()))
    }

    fn refresh(&self, _entries: Vec<(Sid, Entry)>) -> BoxFuture<'_, Result<usize, StoreError>> {
        ready(Ok(0))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: &str, epoch: u64) -> Entry {
        Entry {
            owner: owner.into(),
            epoch,
        }
    }

    #[tokio::test]
    async fn later_epochs_win_and_removal_is_conditional() {
        let reg = MemoryRegistry::default();
        let sid = Sid::random();
        assert!(reg.put(sid, entry("a", 1)).await.unwrap());
        assert!(!reg.put(sid, entry("c", 1)).await.unwrap());
        assert!(reg.put(sid, entry("b", 2)).await.unwrap());
        // The old owner's removal does not touch the new owner's entry.
        reg.remove(sid, entry("a", 1)).await.unwrap();
        assert_eq!(reg.get(sid).await.unwrap(), Some(entry("b", 2)));
        reg.remove(sid, entry("b", 2)).await.unwrap();
        assert_eq!(reg.get(sid).await.unwrap(), None);
        assert!(reg.is_empty());
    }
}

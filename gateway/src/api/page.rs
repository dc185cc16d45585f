//! Pages of a listing without building the listing: the `k` smallest keys
//! after a page token, kept while the items stream by (a bounded ordered
//! set), so a page costs memory for the page only and never a sort of
//! everything.

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// The first `limit` items, by key, of those whose key is after `after`.
pub struct FirstAfter<'a, K: Ord, V> {
    after: Option<&'a K>,
    limit: usize,
    kept: BTreeMap<K, V>,
}

impl<'a, K: Ord, V> FirstAfter<'a, K, V> {
    /// `after`: the page token (the last key of the previous page; none
    /// for the first page).
    pub fn new(after: Option<&'a K>, limit: usize) -> Self {
        FirstAfter {
            after,
            limit,
            kept: BTreeMap::new(),
        }
    }

    /// Whether an item with this key would be kept now (call before
    /// building the item, or its key).
    pub fn wants<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.after.is_none_or(|after| key > after.borrow())
            && self.limit > 0
            && (self.kept.len() < self.limit
                || self
                    .kept
                    .last_key_value()
                    .is_some_and(|(last, _)| key < last.borrow()))
    }

    /// Offers an item (a key already kept is kept once).
    pub fn offer(&mut self, key: K, value: impl FnOnce() -> V) {
        if !self.wants(&key) || self.kept.contains_key(&key) {
            return;
        }
        self.kept.insert(key, value());
        if self.kept.len() > self.limit {
            self.kept.pop_last();
        }
    }

    /// The kept items, in key order.
    pub fn into_sorted(self) -> Vec<(K, V)> {
        self.kept.into_iter().collect()
    }
}

/// Cuts a sorted page of up to `page + 1` items to `page`, with the token
/// of the next page (the last key), or none when nothing follows.
pub fn cut<T>(mut items: Vec<T>, page: usize, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
    let more = items.len() > page;
    items.truncate(page);
    let token = if more {
        items.last().map(key).unwrap_or_default()
    } else {
        String::new()
    };
    (items, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_keys_after_the_token_in_any_arrival_order() {
        let after = 10u32;
        let mut page = FirstAfter::new(Some(&after), 3);
        for k in [50, 5, 12, 40, 11, 10, 13, 12, 99] {
            page.offer(k, || k * 2);
        }
        assert_eq!(page.into_sorted(), vec![(11, 22), (12, 24), (13, 26)]);
        let mut first = FirstAfter::new(None, 2);
        for k in [9, 3, 7] {
            first.offer(k, || ());
        }
        assert_eq!(first.into_sorted(), vec![(3, ()), (7, ())]);
        let mut empty: FirstAfter<'_, u32, ()> = FirstAfter::new(Some(&after), 0);
        empty.offer(20, || ());
        assert!(empty.into_sorted().is_empty());
    }

    #[test]
    fn pages_walk_everything_once() {
        let all: Vec<String> = (0..1000)
            .map(|i| format!("room-{:04}", (i * 7919) % 1000))
            .collect();
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let mut page = FirstAfter::new((!token.is_empty()).then_some(&token), 64);
            for name in &all {
                page.offer(name.clone(), || ());
            }
            let names: Vec<String> = page.into_sorted().into_iter().map(|(k, _)| k).collect();
            // The listing asks for one more than the page to know if more follow.
            let (names, next) = cut(names, 63, |n| n.clone());
            seen.extend(names);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let mut want = all.clone();
        want.sort();
        assert_eq!(seen, want);
    }
}

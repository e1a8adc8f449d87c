//! Values a listing found in this process (totals, where numbered pages
//! start), each kept with the listing version it was true at.

use std::collections::HashMap;
use std::sync::Mutex;

/// What a listing counted or found in this process, each with the
/// organization's listing version it was true at (`listing_versions`, kept
/// by triggers on every change that can move a row into or out of a
/// listing): listing totals, and where numbered pages start. A value is
/// reused only while the version read with the page is the same, so it is
/// exact for every replica; counting 10,000 rows, or skipping them to reach
/// a page, happens once per change, not per page. Bounded: when full, it
/// starts over.
#[derive(Debug)]
pub(in crate::store) struct Remembered<V>(Mutex<HashMap<String, (i64, V)>>);

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

/// Listing totals.
pub(in crate::store) type Totals = Remembered<i64>;
/// The first row (`created_at`, `id`) of numbered pages.
pub(in crate::store) type PageStarts = Remembered<(i64, String)>;

/// Most values kept in each (each key is a statement and its values, under
/// 1 KiB).
const MAX_REMEMBERED: usize = 1024;

impl<V: Clone> Remembered<V> {
    pub(super) fn get(&self, key: &str, version: i64) -> Option<V> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(v, _)| *v == version)
            .map(|(_, value)| value.clone())
    }

    /// The value and the version it was true at.
    pub(super) fn any(&self, key: &str) -> Option<(i64, V)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    pub(super) fn put(&self, key: String, version: i64, value: V) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_REMEMBERED && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (version, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_is_reused_only_at_its_version_and_the_cache_stays_bounded() {
        let totals = Totals::default();
        totals.put("a".into(), 3, 10);
        assert_eq!(totals.get("a", 3), Some(10));
        assert_eq!(totals.get("a", 4), None, "another version is another count");
        assert_eq!(totals.get("b", 3), None);
        for i in 0..MAX_REMEMBERED * 3 {
            totals.put(format!("k{i}"), 1, i as i64);
            assert!(totals.len() <= MAX_REMEMBERED);
        }
    }
}

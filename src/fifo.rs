//! A bounded map of values by key: each value has a weight (rows, bytes),
//! and when the weights pass the budget the oldest value put goes first.
//! The store keeps listing pages in one, the API their rendered items.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Values by key, at most `budget` in weight; a value heavier than the
/// whole budget, or weighing nothing, is not kept.
#[derive(Debug)]
pub struct Fifo<V> {
    budget: usize,
    kept: Mutex<Kept<V>>,
}

#[derive(Debug)]
struct Kept<V> {
    values: HashMap<String, Entry<V>>,
    /// Keys in the order put, each with the number it was put under (a key
    /// put again is only dropped by its last number).
    order: VecDeque<(String, u64)>,
    weight: usize,
    next: u64,
}

#[derive(Debug)]
struct Entry<V> {
    put: u64,
    weight: usize,
    value: V,
}

impl<V: Clone> Fifo<V> {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            kept: Mutex::new(Kept {
                values: HashMap::new(),
                order: VecDeque::new(),
                weight: 0,
                next: 0,
            }),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.values.get(key).map(|e| e.value.clone())
    }

    pub fn put(&self, key: String, value: V, weight: usize) {
        if weight == 0 || weight > self.budget {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let kept = &mut *kept;
        let put = kept.next;
        kept.next += 1;
        kept.weight += weight;
        kept.order.push_back((key.clone(), put));
        if let Some(old) = kept.values.insert(key, Entry { put, weight, value }) {
            kept.weight -= old.weight;
        }
        while kept.weight > self.budget {
            let Some((key, n)) = kept.order.pop_front() else { break };
            if kept.values.get(&key).is_some_and(|e| e.put == n) {
                if let Some(old) = kept.values.remove(&key) {
                    kept.weight -= old.weight;
                }
            }
        }
        // Keys put again leave stale entries behind: keep the queue to a
        // few times the values kept.
        if kept.order.len() > 4 * kept.values.len() + 64 {
            let values = &kept.values;
            kept.order
                .retain(|(key, n)| values.get(key).is_some_and(|e| e.put == *n));
        }
    }

    /// The weight kept.
    pub fn weight(&self) -> usize {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).weight
    }

    #[cfg(test)]
    fn queue_len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_by_key_within_the_budget_oldest_dropped_first() {
        const BUDGET: usize = 4_096;
        let kept = Fifo::new(BUDGET);
        kept.put("a".into(), 1, 50);
        kept.put("a".into(), 2, 50);
        assert_eq!(kept.get("a"), Some(2), "the last put is kept");
        assert_eq!(kept.weight(), 50);
        kept.put("empty".into(), 3, 0);
        assert!(kept.get("empty").is_none(), "a value weighing nothing is not kept");
        kept.put("huge".into(), 4, BUDGET + 1);
        assert!(kept.get("huge").is_none(), "a value above the budget is not kept");
        let n = (BUDGET / 50) * 3;
        for i in 0..n {
            kept.put(format!("k{i}"), i, 50);
            assert!(kept.weight() <= BUDGET);
            assert!(
                kept.queue_len() <= 4 * (BUDGET / 50) + 64 + 1,
                "the queue stays bounded: {}",
                kept.queue_len()
            );
        }
        assert!(kept.get("a").is_none(), "the oldest value went first");
        assert_eq!(
            kept.get(&format!("k{}", n - 1)),
            Some(n - 1),
            "the newest value is kept"
        );
        assert!(kept.get(&format!("k{}", n - BUDGET / 50)).is_some());
        assert!(kept.get(&format!("k{}", n - BUDGET / 50 - 1)).is_none());
        // Putting one key over and over keeps one value and a short queue.
        for v in 0..10_000 {
            kept.put("same".into(), v, 1);
        }
        assert_eq!(kept.get("same"), Some(9_999));
        assert!(kept.queue_len() <= 4 * (BUDGET / 50 + 1) + 64 + 1);
    }
}

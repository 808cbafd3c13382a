//! A string-keyed map that remembers insertion order.
//!
//! Reports list policies and failure details in the order they were first
//! seen, as upstream's Python dicts do, so that the same fetcher answers
//! always give the same report text.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderedMap<V> {
    entries: Vec<(String, V)>,
    index: HashMap<String, usize>,
}

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<V> OrderedMap<V> {
    /// The value under `key`, inserted from `make` (at the end) if absent.
    pub(crate) fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let position = match self.index.get(key) {
            Some(&position) => position,
            None => {
                self.entries.push((key.to_string(), make()));
                self.index.insert(key.to_string(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        &mut self.entries[position].1
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    pub(crate) fn into_entries(self) -> impl Iterator<Item = (String, V)> {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_insertion_order_and_updates_in_place() {
        let mut map = OrderedMap::default();
        *map.get_or_insert_with("b", || 0) += 1;
        *map.get_or_insert_with("a", || 0) += 1;
        *map.get_or_insert_with("b", || 0) += 5;
        let entries: Vec<_> = map.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(entries, [("b".to_string(), 6), ("a".to_string(), 1)]);
    }
}

//! The ledger's flows: records in one vector in the order first seen,
//! found through a hash table of 32-bit positions into it.
//!
//! The records are most of the daemon's memory (one per flow ever seen, a
//! million at full tables). A `HashMap` of the records themselves takes
//! about twice their size (its table stays at most 7/8 full and doubles);
//! an `IndexMap` keeps a 64-bit hash beside every record and 64-bit
//! positions in its table. Here the hash is recomputed from the key when
//! the table grows, and positions are 32 bits: 13 bytes a flow less than
//! an `IndexMap` (`rss_full_mb` in the bench). The hash is seeded per
//! process: flow keys come from the network.

use std::hash::BuildHasher;

use classifier_common::FlowKey;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::drain::FlowRecord;

#[derive(Clone, Default)]
pub struct FlowRecords {
    entries: Vec<(FlowKey, FlowRecord)>,
    /// Positions in `entries`, hashed by their key.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl FlowRecords {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `more` records without growing.
    pub fn reserve(&mut self, more: usize) {
        self.entries.reserve(more);
        let Self {
            entries,
            index,
            hasher,
        } = self;
        index.reserve(more, |&position| {
            hasher.hash_one(entries[position as usize].0)
        });
    }

    pub fn get(&self, key: &FlowKey) -> Option<&FlowRecord> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&position| self.entries[position as usize].0 == *key)
            .map(|&position| &self.entries[position as usize].1)
    }

    /// The record of `key`, made by `new` when there is none.
    pub fn get_or_insert_with(
        &mut self,
        key: &FlowKey,
        new: impl FnOnce() -> FlowRecord,
    ) -> &mut FlowRecord {
        self.position_or_insert_with(key, new).1
    }

    /// [`Self::get_or_insert_with`], with the record's position: its
    /// index in [`Self::iter`] (records are never removed).
    pub fn position_or_insert_with(
        &mut self,
        key: &FlowKey,
        new: impl FnOnce() -> FlowRecord,
    ) -> (usize, &mut FlowRecord) {
        let hash = self.hasher.hash_one(key);
        let Self {
            entries,
            index,
            hasher,
        } = self;
        let position = match index.entry(
            hash,
            |&position| entries[position as usize].0 == *key,
            |&position| hasher.hash_one(entries[position as usize].0),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => *found.get(),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                // A record takes 128 bytes with its key: memory runs out
                // long before 2^32 of them.
                let position = u32::try_from(entries.len()).expect("fewer than 2^32 flows");
                entries.push((*key, new()));
                vacant.insert(position);
                position
            }
        };
        let position = position as usize;
        (position, &mut entries[position].1)
    }

    /// Sets the record of `key`.
    pub fn insert(&mut self, key: FlowKey, record: FlowRecord) {
        *self.get_or_insert_with(&key, || record) = record;
    }

    /// Records in the order their flows were first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowRecord)> {
        self.entries.iter().map(|(key, record)| (key, record))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FlowKey, &mut FlowRecord)> {
        self.entries.iter_mut().map(|(key, record)| (&*key, record))
    }

    pub fn values(&self) -> impl Iterator<Item = &FlowRecord> {
        self.entries.iter().map(|(_, record)| record)
    }
}

impl std::ops::Index<&FlowKey> for FlowRecords {
    type Output = FlowRecord;

    /// Panics when there is no record of `key` (as a map's index does).
    fn index(&self, key: &FlowKey) -> &FlowRecord {
        self.get(key).expect("no record of this flow")
    }
}

impl<'a> IntoIterator for &'a FlowRecords {
    type Item = (&'a FlowKey, &'a FlowRecord);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (FlowKey, FlowRecord)>,
        fn(&'a (FlowKey, FlowRecord)) -> (&'a FlowKey, &'a FlowRecord),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(key, record)| (key, record))
    }
}

impl FromIterator<(FlowKey, FlowRecord)> for FlowRecords {
    fn from_iter<I: IntoIterator<Item = (FlowKey, FlowRecord)>>(records: I) -> Self {
        let mut flows = Self::default();
        for (key, record) in records {
            flows.insert(key, record);
        }
        flows
    }
}

/// Equal when they hold the same records, whatever their order.
impl PartialEq for FlowRecords {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, record)| other.get(key) == Some(record))
    }
}

impl std::fmt::Debug for FlowRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::port_key as key;

    #[test]
    fn records_are_found_by_key_in_first_seen_order_across_growth() {
        let mut flows = FlowRecords::default();
        for port in 0..10_000u16 {
            let record = flows.get_or_insert_with(&key(port), FlowRecord::default);
            record.packets += u64::from(port);
        }
        flows.reserve(50_000);
        for port in (0..10_000u16).step_by(7) {
            flows
                .get_or_insert_with(&key(port), || unreachable!("recorded"))
                .packets += 1;
        }
        assert_eq!(flows.len(), 10_000);
        assert_eq!(flows[&key(7)].packets, 8);
        assert_eq!(flows[&key(8)].packets, 8);
        assert!(flows.get(&key(10_000)).is_none());
        let ports: Vec<u16> = flows.iter().map(|(key, _)| key.port).collect();
        assert_eq!(ports, (0..10_000).collect::<Vec<_>>());
        let mut reversed: Vec<(FlowKey, FlowRecord)> =
            flows.iter().map(|(key, record)| (*key, *record)).collect();
        reversed.reverse();
        let reversed: FlowRecords = reversed.into_iter().collect();
        assert_eq!(reversed, flows);
        reversed_differs(&reversed);
    }

    fn reversed_differs(flows: &FlowRecords) {
        let mut other = flows.clone();
        other
            .get_or_insert_with(&key(3), FlowRecord::default)
            .packets += 1;
        assert_ne!(&other, flows);
    }
}

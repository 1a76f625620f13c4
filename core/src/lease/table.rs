//! The live-lease table, keyed by the 128 bits a lease id spells rather than by its text.
//!
//! A keepalive renews thousands of leases per message, and each renewal is a table lookup. With
//! text keys every lookup also read the key's string from its own allocation to compare it, one
//! more cache miss per lease; a `u128` key compares inside the table's own slot. The id's text
//! stays in the record for answers, events and logs.

use std::collections::HashMap;
use std::sync::Arc;

use super::state::LeaseRec;

/// A lease id as the table keys it: the value of its 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct LeaseKey(pub(super) u128);

impl LeaseKey {
    /// A fresh random key (a version-4 UUID) and the id text clients see.
    pub fn mint() -> (Self, Arc<str>) {
        let uuid = uuid::Uuid::new_v4();
        (Self(uuid.as_u128()), Arc::from(uuid.simple().to_string()))
    }

    /// The key of `id`; `None` for text no lease id ever has (only the exact 32-lowercase-hex
    /// form names a lease, so one lease has exactly one id).
    pub fn parse(id: &str) -> Option<Self> {
        let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if id.len() != 32 || !id.as_bytes().iter().all(hex) {
            return None;
        }
        u128::from_str_radix(id, 16).ok().map(Self)
    }
}

/// The live leases.
#[derive(Default)]
pub(super) struct Leases {
    map: HashMap<LeaseKey, LeaseRec>,
}

impl Leases {
    pub fn get(&self, id: &str) -> Option<&LeaseRec> {
        self.map.get(&LeaseKey::parse(id)?)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut LeaseRec> {
        self.map.get_mut(&LeaseKey::parse(id)?)
    }

    pub fn by_key(&self, key: LeaseKey) -> Option<&LeaseRec> {
        self.map.get(&key)
    }

    pub fn insert(&mut self, key: LeaseKey, rec: LeaseRec) {
        self.map.insert(key, rec);
    }

    pub fn remove(&mut self, id: &str) -> Option<LeaseRec> {
        self.map.remove(&LeaseKey::parse(id)?)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (LeaseKey, &LeaseRec)> {
        self.map.iter().map(|(k, rec)| (*k, rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_id_parses_back_to_its_key_and_nothing_else_does() {
        let (key, id) = LeaseKey::mint();
        assert_eq!(id.len(), 32);
        assert_eq!(LeaseKey::parse(&id), Some(key));
        let upper = id.to_uppercase();
        let hyphenated = uuid::Uuid::from_u128(key.0).hyphenated().to_string();
        let plus = format!("+{}", &id[1..]);
        for other in [&upper, &hyphenated, &plus, "", "l1", &id[..31]] {
            if other != &*id {
                assert_eq!(LeaseKey::parse(other), None, "{other:?}");
            }
        }
        assert_eq!(
            LeaseKey::parse("0000000000000000000000000000000a"),
            Some(LeaseKey(10))
        );
    }
}

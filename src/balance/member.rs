//! Pool members as the hashing core sees them: a name (the identity that is
//! hashed) and a weight. Addresses are deliberately absent: moving a backend
//! to a new address must not move its keys.

use std::collections::HashSet;

/// The largest weight a backend may have (HAProxy allows 256, we allow more
/// for operators porting nginx configs with large weights).
pub const MAX_WEIGHT: u32 = 1000;

/// The largest pool: table entries are `u16` backend indices, and
/// `u16::MAX` is reserved.
pub const MAX_BACKENDS: usize = u16::MAX as usize - 1;

/// One backend of the pool, by identity and weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// Unique name; the only input of the backend's position in tables and rings.
    pub name: String,
    /// Relative share of the key space, `1..=MAX_WEIGHT`.
    pub weight: u32,
}

impl Member {
    /// A member with this name and weight.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Member {
            name: name.into(),
            weight,
        }
    }
}

/// Why a list of members cannot form a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// No backends at all.
    #[error("the pool has no backends")]
    Empty,
    /// More backends than table indices can name.
    #[error("the pool has {0} backends; at most {MAX_BACKENDS} are supported")]
    TooMany(usize),
    /// A backend with an empty name.
    #[error("backend #{0} has an empty name")]
    EmptyName(usize),
    /// Two backends share a name (names are identities).
    #[error("backend name {0:?} is used more than once; names must be unique")]
    DuplicateName(String),
    /// A weight outside `1..=MAX_WEIGHT`.
    #[error("backend {name:?} has weight {weight}; weights must be between 1 and {MAX_WEIGHT}")]
    BadWeight {
        /// The backend.
        name: String,
        /// Its weight.
        weight: u32,
    },
}

/// Checks what every selector relies on: a non-empty pool of uniquely named
/// members with weights in range.
pub fn validate(members: &[Member]) -> Result<(), MemberError> {
    if members.is_empty() {
        return Err(MemberError::Empty);
    }
    if members.len() > MAX_BACKENDS {
        return Err(MemberError::TooMany(members.len()));
    }
    let mut seen = HashSet::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if m.name.is_empty() {
            return Err(MemberError::EmptyName(i));
        }
        if !(1..=MAX_WEIGHT).contains(&m.weight) {
            return Err(MemberError::BadWeight {
                name: m.name.clone(),
                weight: m.weight,
            });
        }
        if !seen.insert(m.name.as_str()) {
            return Err(MemberError::DuplicateName(m.name.clone()));
        }
    }
    Ok(())
}

/// Total weight of the members.
pub fn total_weight(members: &[Member]) -> u64 {
    members.iter().map(|m| u64::from(m.weight)).sum()
}

/// Splits `total` units among `weights` in proportion, exactly (Hamilton's
/// largest-remainder method): every share is `floor(total·w/Σw)` or one more,
/// the shares sum to `total`, and leftover units go to the largest remainders,
/// ties to the earlier position. Deterministic for a given order.
pub fn apportion(total: u64, weights: &[u32]) -> Vec<u64> {
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(w);
        let share = (exact / u128::from(sum)) as u64;
        remainders.push((exact % u128::from(sum), i));
        shares.push(share);
        given += share;
    }
    // Largest remainder first; on equal remainders the earlier position wins.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((total - given) as usize) {
        shares[i] += 1;
    }
    shares
}

/// A set of backends (caller indices), one bit each: what a fallback walk
/// has yielded so far, so that it yields each backend once in O(1) per step
/// instead of scanning a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendSet {
    words: Vec<u64>,
}

impl BackendSet {
    /// An empty set sized for backends `0..backends` (it grows past that if
    /// it must).
    pub fn with_capacity(backends: usize) -> BackendSet {
        BackendSet {
            words: vec![0; backends.div_ceil(64)],
        }
    }

    /// Adds `backend`; whether it was not in the set before.
    pub fn insert(&mut self, backend: usize) -> bool {
        let (word, bit) = (backend / 64, 1u64 << (backend % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_set_admits_each_backend_once_and_grows_past_its_capacity() {
        let mut set = BackendSet::with_capacity(70);
        for b in [0, 63, 64, 69] {
            assert!(set.insert(b), "{b}");
            assert!(!set.insert(b), "{b}");
        }
        assert!(set.insert(1000));
        assert!(!set.insert(1000));
        assert!(set.insert(1));
        let mut empty = BackendSet::default();
        assert!(empty.insert(5));
        assert!(!empty.insert(5));
    }

    #[test]
    fn a_valid_pool_passes() {
        assert_eq!(
            validate(&[Member::new("a", 1), Member::new("b", 5)]),
            Ok(())
        );
    }

    #[test]
    fn an_empty_pool_is_rejected() {
        assert_eq!(validate(&[]), Err(MemberError::Empty));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = validate(&[Member::new("a", 1), Member::new("a", 2)]).unwrap_err();
        assert_eq!(err, MemberError::DuplicateName("a".into()));
    }

    #[test]
    fn weights_outside_the_range_are_rejected() {
        for w in [0, MAX_WEIGHT + 1] {
            assert!(matches!(
                validate(&[Member::new("a", w)]),
                Err(MemberError::BadWeight { .. })
            ));
        }
    }

    #[test]
    fn apportion_is_exact_and_proportional() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(apportion(7, &[5, 1, 1]), vec![5, 1, 1]);
        assert_eq!(apportion(65537, &[1; 2]), vec![32769, 32768]);
        assert_eq!(apportion(5, &[]), Vec::<u64>::new());
        let shares = apportion(65537, &[3, 7, 10, 1]);
        assert_eq!(shares.iter().sum::<u64>(), 65537);
        for (s, w) in shares.iter().zip([3u64, 7, 10, 1]) {
            let exact = 65537.0 * w as f64 / 21.0;
            assert!((*s as f64 - exact).abs() < 1.0);
        }
    }

    #[test]
    fn empty_names_are_rejected() {
        assert_eq!(
            validate(&[Member::new("a", 1), Member::new("", 1)]),
            Err(MemberError::EmptyName(1))
        );
    }
}

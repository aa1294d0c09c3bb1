//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! The director's XDP program hashes a new connection's 5-tuple to a slot of a
//! lookup table of prime size `M` and forwards to the real server that owns the
//! slot. This crate builds that table in userspace; the BPF side only looks up.
//!
//! Each real server `i` has a preference list, a permutation of `0..M` given by
//! `offset_i + j * skip_i (mod M)` where both come from hashing the server's
//! identity. Servers take turns claiming their next preferred free slot until
//! the table is full. Weights are honoured the way Katran's second Maglev
//! variant does it: on each turn a server accrues its weight and claims one slot
//! per `max_weight` accrued, so slot counts are proportional to weights and a
//! weight-0 (quiesced) server owns no slot.
//!
//! The table depends only on the set of (identity, weight) pairs, never on
//! the order they are given in: servers are visited in identity order.

#![forbid(unsafe_code)]

/// The table size used unless told otherwise: a prime, ~65 slots per server at 1,000 servers.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Largest table size accepted (the BPF ring map is sized by the caller; this bounds memory).
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// Marks a slot with no owner, only in a table built from no usable server.
pub const EMPTY_SLOT: u32 = u32::MAX;

/// One real server as Maglev sees it: a stable identity and a weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Stable identity bytes (e.g. address and port): the preference list derives from it.
    pub id: Vec<u8>,
    pub weight: u32,
}

impl Endpoint {
    pub fn new(id: impl Into<Vec<u8>>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("maglev table size {size} is not a prime")]
    SizeNotPrime { size: u32 },
    #[error("maglev table size {size} is out of range 3..={MAX_TABLE_SIZE}")]
    SizeOutOfRange { size: u32 },
    #[error("maglev table size {size} is smaller than the {endpoints} real servers")]
    TooManyEndpoints { size: u32, endpoints: usize },
    #[error("real servers #{first} and #{second} have the same maglev identity")]
    DuplicateEndpoint { first: usize, second: usize },
}

/// A built lookup table: `slots[h % M]` is the index (into the caller's endpoint
/// slice) of the real server owning hash `h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// True when no real server has weight: every slot is [`EMPTY_SLOT`].
    pub fn is_empty(&self) -> bool {
        self.slots.first().is_none_or(|s| *s == EMPTY_SLOT)
    }

    /// The owner of hash `h`, or `None` in an empty table.
    pub fn lookup(&self, h: u32) -> Option<u32> {
        let s = self.slots[(h % self.size()) as usize];
        (s != EMPTY_SLOT).then_some(s)
    }

    /// Number of slots each of `n` endpoints owns.
    pub fn counts(&self, n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &s in &self.slots {
            if let Some(x) = c.get_mut(s as usize) {
                *x += 1;
            }
        }
        c
    }
}

/// Builds the table of size `size` (a prime) for `endpoints`.
pub fn build(endpoints: &[Endpoint], size: u32) -> Result<Table, MaglevError> {
    if !(3..=MAX_TABLE_SIZE).contains(&size) {
        return Err(MaglevError::SizeOutOfRange { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    if endpoints.len() > size as usize {
        return Err(MaglevError::TooManyEndpoints {
            size,
            endpoints: endpoints.len(),
        });
    }
    let mut order: Vec<usize> = (0..endpoints.len()).collect();
    order.sort_by(|&a, &b| endpoints[a].id.cmp(&endpoints[b].id));
    for w in order.windows(2) {
        if endpoints[w[0]].id == endpoints[w[1]].id {
            return Err(MaglevError::DuplicateEndpoint {
                first: w[0].min(w[1]),
                second: w[0].max(w[1]),
            });
        }
    }
    order.retain(|&i| endpoints[i].weight > 0);

    let m = u64::from(size);
    let mut slots = vec![EMPTY_SLOT; size as usize];
    if order.is_empty() {
        return Ok(Table { slots });
    }

    // Per server: current position in its permutation, its skip, accrued weight.
    struct State {
        index: u32,
        pos: u64,
        skip: u64,
        weight: u64,
        accrued: u64,
    }
    let mut states: Vec<State> = order
        .iter()
        .map(|&i| {
            let id = &endpoints[i].id;
            State {
                index: i as u32,
                pos: hash64(id, SEED_OFFSET) % m,
                skip: hash64(id, SEED_SKIP) % (m - 1) + 1,
                weight: u64::from(endpoints[i].weight),
                accrued: 0,
            }
        })
        .collect();
    let max_weight = states.iter().map(|s| s.weight).max().unwrap_or(1);

    let mut filled = 0usize;
    'fill: loop {
        for st in states.iter_mut() {
            st.accrued += st.weight;
            while st.accrued >= max_weight {
                st.accrued -= max_weight;
                // Next free slot in this server's preference list. It always
                // exists while the table is not full: the list is a permutation.
                while slots[st.pos as usize] != EMPTY_SLOT {
                    st.pos += st.skip;
                    if st.pos >= m {
                        st.pos -= m;
                    }
                }
                slots[st.pos as usize] = st.index;
                filled += 1;
                if filled == slots.len() {
                    break 'fill;
                }
            }
        }
    }
    Ok(Table { slots })
}

/// Share of slots that changed owner between two tables of the same size, counting
/// only slots that `old` gave to a server still present: `still_there(old_index)`
/// maps an old endpoint index to its index in the new build, or `None` if removed.
pub fn moved_share(old: &Table, new: &Table, still_there: impl Fn(u32) -> Option<u32>) -> f64 {
    let mut considered = 0u64;
    let mut moved = 0u64;
    for (&o, &n) in old.slots.iter().zip(&new.slots) {
        if o == EMPTY_SLOT {
            continue;
        }
        if let Some(mapped) = still_there(o) {
            considered += 1;
            if mapped != n {
                moved += 1;
            }
        }
    }
    if considered == 0 {
        0.0
    } else {
        moved as f64 / considered as f64
    }
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// FNV-1a over the bytes, seeded, then the murmur3 64-bit finaliser so that
/// identities differing in one byte land far apart. Stable forever: tables
/// built by two versions of the agent must agree.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                // 198.51.100.0/24 and onward, port 80: like an address+port identity.
                let addr = [198u8, 51, (100 + i / 250) as u8, (i % 250) as u8 + 1];
                let mut id = addr.to_vec();
                id.extend_from_slice(&80u16.to_be_bytes());
                Endpoint::new(id, 1)
            })
            .collect()
    }

    fn max_over_mean(t: &Table, n: usize) -> f64 {
        let c = t.counts(n);
        let max = *c.iter().max().unwrap() as f64;
        let mean = f64::from(t.size()) / n as f64;
        max / mean
    }

    #[test]
    fn rejects_bad_sizes_and_duplicates() {
        assert_eq!(
            build(&servers(2), 65_536),
            Err(MaglevError::SizeNotPrime { size: 65_536 })
        );
        assert_eq!(
            build(&servers(2), 1),
            Err(MaglevError::SizeOutOfRange { size: 1 })
        );
        assert_eq!(
            build(&servers(10), 7),
            Err(MaglevError::TooManyEndpoints {
                size: 7,
                endpoints: 10
            })
        );
        let mut s = servers(3);
        s.push(s[1].clone());
        assert_eq!(
            build(&s, 13),
            Err(MaglevError::DuplicateEndpoint {
                first: 1,
                second: 3
            })
        );
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let s = servers(37);
        let a = build(&s, DEFAULT_TABLE_SIZE).unwrap();
        let b = build(&s, DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(a, b);
        let mut rev = s.clone();
        rev.reverse();
        let c = build(&rev, DEFAULT_TABLE_SIZE).unwrap();
        let n = s.len() as u32;
        // Same owner for every slot, after mapping reversed indices back.
        assert!(a
            .slots()
            .iter()
            .zip(c.slots())
            .all(|(&x, &y)| x == n - 1 - y));
    }

    #[test]
    fn every_slot_filled_and_every_server_used() {
        for n in [1, 2, 3, 10, 100, 1000] {
            let t = build(&servers(n), DEFAULT_TABLE_SIZE).unwrap();
            assert!(t.slots().iter().all(|&s| (s as usize) < n), "n={n}");
            assert!(t.counts(n).iter().all(|&c| c > 0), "n={n}");
        }
    }

    #[test]
    fn empty_when_no_server_has_weight() {
        let mut s = servers(3);
        for e in &mut s {
            e.weight = 0;
        }
        let t = build(&s, 13).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.lookup(5), None);
        assert!(build(&[], 13).unwrap().is_empty());
    }

    #[test]
    fn balanced_up_to_650_servers() {
        for n in [2, 3, 7, 50, 100, 333, 650] {
            let t = build(&servers(n), DEFAULT_TABLE_SIZE).unwrap();
            let r = max_over_mean(&t, n);
            assert!(r <= 1.01, "n={n}: max/mean {r}");
        }
    }

    #[test]
    fn removing_one_server_moves_about_one_nth() {
        for n in [10, 100, 1000] {
            let s = servers(n);
            let old = build(&s, DEFAULT_TABLE_SIZE).unwrap();
            let removed = (n / 2) as u32;
            let mut s2 = s.clone();
            s2.remove(removed as usize);
            let new = build(&s2, DEFAULT_TABLE_SIZE).unwrap();
            // Slots of the removed server all move; how many of the others?
            let other = moved_share(&old, &new, |i| match i.cmp(&removed) {
                std::cmp::Ordering::Less => Some(i),
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(i - 1),
            });
            assert!(other < 0.01, "n={n}: {other} of other slots moved");
            // Total disruption is close to 1/n.
            let total = old
                .slots()
                .iter()
                .zip(new.slots())
                .filter(|(&o, &nw)| o == removed || (if o > removed { o - 1 } else { o }) != nw)
                .count() as f64
                / f64::from(old.size());
            let ideal = 1.0 / n as f64;
            assert!(
                total >= ideal * 0.9 && total <= ideal + 0.01,
                "n={n}: total moved {total}, ideal {ideal}"
            );
        }
    }

    #[test]
    fn weights_honoured() {
        let mut s = servers(4);
        s[0].weight = 1;
        s[1].weight = 2;
        s[2].weight = 3;
        s[3].weight = 0;
        let t = build(&s, DEFAULT_TABLE_SIZE).unwrap();
        let c = t.counts(4);
        assert_eq!(c[3], 0, "weight 0 is quiesced");
        let unit = f64::from(t.size()) / 6.0;
        for (i, w) in [(0usize, 1.0), (1, 2.0), (2, 3.0)] {
            let share = f64::from(c[i]) / (unit * w);
            assert!((0.99..=1.01).contains(&share), "server {i}: {c:?}");
        }
        // Large, uneven weights (like 100 vs 150).
        let mut s = servers(3);
        s[0].weight = 100;
        s[1].weight = 150;
        s[2].weight = 250;
        let c = build(&s, DEFAULT_TABLE_SIZE).unwrap().counts(3);
        let total = f64::from(DEFAULT_TABLE_SIZE);
        for (i, w) in [(0usize, 0.2), (1, 0.3), (2, 0.5)] {
            let share = f64::from(c[i]) / total;
            assert!((share - w).abs() < 0.002, "server {i}: {c:?}");
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned values: a change here reshuffles every deployed ring.
        assert_eq!(hash64(b"", 0), fmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(
            hash64(b"\xc6\x33\x64\x01\x00\x50", SEED_OFFSET),
            0x80e8_1948_8288_72b6
        );
        assert_ne!(hash64(b"a", SEED_OFFSET), hash64(b"a", SEED_SKIP));
        assert_ne!(hash64(b"a", 0), hash64(b"b", 0));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(2));
        assert!(!is_prime(65_535));
        assert!(!is_prime(1));
        assert!(is_prime(251));
    }
}

//! Addresses, prefixes and address intervals.
//!
//! Everything that needs to reason about address space (merging member lists, splitting
//! overlapping destinations, deciding whether a prefix covers an address) goes through
//! [`Range`], a closed interval of one address family stored as `u128`.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// `4` or `6`, for names.
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
}

/// A canonical prefix: the network address with host bits cleared. Serialised as text, a
/// full-length prefix (`/32`, `/128`) as the bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// A prefix from a network, clearing host bits.
    pub fn new(net: IpNet) -> Cidr {
        Cidr(net.trunc())
    }

    /// The single address `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr(IpNet::from(addr))
    }

    /// The inner network.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Address family.
    pub fn family(&self) -> Family {
        Family::of(&self.0.addr())
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.0.contains(addr)
    }

    /// The closed interval this prefix covers.
    pub fn range(&self) -> Range {
        let fam = self.family();
        let lo = addr_to_u128(&self.0.network());
        let host_bits = fam.bits() - u32::from(self.0.prefix_len());
        let span = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Range {
            family: fam,
            lo,
            hi: lo | span,
        }
    }

    /// Parse strictly: the text must already be canonical (host bits clear).
    pub fn parse_canonical(s: &str) -> Result<Cidr, CidrError> {
        let c: Cidr = s.parse()?;
        if c.to_string() != s {
            return Err(CidrError::NotCanonical {
                text: s.to_string(),
                canonical: c,
            });
        }
        Ok(c)
    }
}

/// Text that is not an address or prefix reyes accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Neither an address nor a prefix.
    #[error("{0:?} is not an IP address or CIDR prefix")]
    Invalid(String),
    /// A prefix with host bits set.
    #[error("{text:?} has host bits set; did you mean {network}?")]
    HostBits {
        /// The text.
        text: String,
        /// The prefix without them.
        network: IpNet,
    },
    /// Valid, but not written the one canonical way.
    #[error("{text:?} is not in canonical form (expected {canonical})")]
    NotCanonical {
        /// The text.
        text: String,
        /// How it is written canonically.
        canonical: Cidr,
    },
}

impl FromStr for Cidr {
    type Err = CidrError;
    /// Accepts `ADDR` or `ADDR/LEN`; host bits must be clear (`10.0.0.1/8` is refused, since it
    /// is more often a typo than an intent).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Cidr::host(addr));
        }
        let net: IpNet = s.parse().map_err(|_| CidrError::Invalid(s.to_string()))?;
        if net.trunc() != net {
            return Err(CidrError::HostBits {
                text: s.to_string(),
                network: net.trunc(),
            });
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Ord for Cidr {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.range(), other.range());
        (a.family, a.lo, a.hi).cmp(&(b.family, b.lo, b.hi))
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A closed interval `[lo, hi]` of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// Address family of both ends.
    pub family: Family,
    /// First address.
    pub lo: u128,
    /// Last address (inclusive).
    pub hi: u128,
}

impl Range {
    /// The interval holding exactly `addr`.
    pub fn single(addr: &IpAddr) -> Range {
        let v = addr_to_u128(addr);
        Range {
            family: Family::of(addr),
            lo: v,
            hi: v,
        }
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        Family::of(addr) == self.family && {
            let v = addr_to_u128(addr);
            self.lo <= v && v <= self.hi
        }
    }

    /// The whole address space of a family (`0.0.0.0/0`, `::/0`).
    pub fn all(family: Family) -> Range {
        Range {
            family,
            lo: 0,
            hi: family.max(),
        }
    }

    /// If the interval is exactly one prefix, its length.
    pub fn prefix_len(&self) -> Option<u8> {
        let size = self.hi.wrapping_sub(self.lo).wrapping_add(1);
        let bits = self.family.bits();
        if self.lo == 0 && self.hi == self.family.max() {
            return Some(0);
        }
        if size == 0 || !size.is_power_of_two() || self.lo & (size - 1) != 0 {
            return None;
        }
        Some((bits - size.trailing_zeros()) as u8)
    }

    /// First address as an [`IpAddr`].
    pub fn lo_addr(&self) -> IpAddr {
        u128_to_addr(self.family, self.lo)
    }

    /// Last address as an [`IpAddr`].
    pub fn hi_addr(&self) -> IpAddr {
        u128_to_addr(self.family, self.hi)
    }

    /// Split into the minimal list of prefixes covering exactly this interval.
    pub fn to_prefixes(&self) -> Vec<Cidr> {
        let bits = self.family.bits();
        let mut out = Vec::new();
        let mut lo = self.lo;
        loop {
            // Largest aligned block starting at lo that does not pass hi.
            let mut size_bits = if lo == 0 {
                bits
            } else {
                lo.trailing_zeros().min(bits)
            };
            loop {
                let last = if size_bits >= 128 {
                    u128::MAX
                } else {
                    lo + ((1u128 << size_bits) - 1)
                };
                if last <= self.hi {
                    break;
                }
                size_bits -= 1;
            }
            let len = (bits - size_bits) as u8;
            let net = match self.family {
                Family::V4 => {
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(lo as u32), len).unwrap_or_default())
                }
                Family::V6 => IpNet::V6(Ipv6Net::new(Ipv6Addr::from(lo), len).unwrap_or_default()),
            };
            out.push(Cidr(net));
            let last = if size_bits >= 128 {
                u128::MAX
            } else {
                lo + ((1u128 << size_bits) - 1)
            };
            if last >= self.hi {
                break;
            }
            lo = last + 1;
        }
        out
    }
}

impl Serialize for Range {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// nft's own notation for an interval element: `ADDR`, `ADDR/LEN` or `LO-HI`, exactly as
/// `nft list` prints it.
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            return write!(f, "{}", self.lo_addr());
        }
        match self.prefix_len() {
            Some(len) => write!(f, "{}/{}", self.lo_addr(), len),
            None => write!(f, "{}-{}", self.lo_addr(), self.hi_addr()),
        }
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn addr_to_u128(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn u128_to_addr(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// Sort, then merge overlapping and adjacent intervals of the same family. The result is the
/// minimal disjoint list covering the same addresses, ordered by family then address: the form
/// nftables interval sets require (they refuse overlapping elements) and print.
pub fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            if last.family == r.family
                && (r.lo <= last.hi
                    || r.lo == last.hi.wrapping_add(1) && last.hi != last.family.max())
            {
                if r.hi > last.hi {
                    last.hi = r.hi;
                }
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Partition labelled intervals into disjoint pieces, each with the sorted, de-duplicated
/// labels of every input interval covering it; neighbouring pieces with equal labels are joined.
/// Used to give every destination address exactly one dispatch entry even when members overlap
/// (a host inside a dynamic subnet of another group).
pub fn partition<L: Ord + Clone>(items: &[(Range, L)]) -> Vec<(Range, Vec<L>)> {
    let mut out = Vec::new();
    partition_each(items, |r, labels| {
        out.push((r, labels.iter().map(|l| (*l).clone()).collect()))
    });
    out
}

/// [`partition`] without collecting: `f` gets each piece in order (IPv4 first, ascending) with
/// its labels. Besides the input it needs one index per item and the intervals active at a
/// point, so a 100k-member estate is partitioned in a few MB.
pub fn partition_each<L: Ord>(items: &[(Range, L)], mut f: impl FnMut(Range, &[&L])) {
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};
    for fam in Family::BOTH {
        let mut order: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].0.family == fam)
            .collect();
        order.sort_by_key(|&i| items[i].0.lo);
        let Some(&first) = order.first() else {
            continue;
        };
        // Intervals covering the current point, by last address; how many cover each label.
        let mut ends: BinaryHeap<Reverse<(u128, usize)>> = BinaryHeap::new();
        let mut active: BTreeMap<&L, usize> = BTreeMap::new();
        // The piece not yet handed out (it may still grow), and a buffer for the next one.
        let mut pending: Option<(Range, Vec<&L>)> = None;
        let mut labels: Vec<&L> = Vec::new();
        let mut next = 0;
        let mut point = items[first].0.lo;
        loop {
            while let Some(&i) = order.get(next) {
                if items[i].0.lo != point {
                    break;
                }
                ends.push(Reverse((items[i].0.hi, i)));
                *active.entry(&items[i].1).or_insert(0) += 1;
                next += 1;
            }
            let next_start = order.get(next).map(|&i| items[i].0.lo);
            let first_end = ends.peek().map(|Reverse((hi, _))| *hi);
            // Every interval starting at `point` is active, so a next start lies beyond it.
            let end = match (next_start, first_end) {
                (Some(s), Some(h)) => h.min(s - 1),
                (None, Some(h)) => h,
                (Some(s), None) => {
                    point = s;
                    continue;
                }
                (None, None) => break,
            };
            labels.clear();
            labels.extend(active.keys().copied());
            let piece = Range {
                family: fam,
                lo: point,
                hi: end,
            };
            match &mut pending {
                Some((last, last_labels)) if last.hi + 1 == point && *last_labels == labels => {
                    last.hi = end;
                }
                _ => {
                    let fresh = std::mem::take(&mut labels);
                    if let Some((r, mut l)) = pending.replace((piece, fresh)) {
                        f(r, &l);
                        l.clear();
                        labels = l;
                    }
                }
            }
            while let Some(&Reverse((hi, i))) = ends.peek() {
                if hi != end {
                    break;
                }
                ends.pop();
                if let Some(n) = active.get_mut(&items[i].1) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&items[i].1);
                    }
                }
            }
            if end == fam.max() {
                break;
            }
            point = end + 1;
        }
        if let Some((r, l)) = pending {
            f(r, &l);
        }
    }
}

/// This host's addresses, read from its interfaces (getifaddrs), loopback excluded.
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a valid node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.retain(|a| !a.is_loopback());
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r4(a: &str, b: &str) -> Range {
        Range {
            family: Family::V4,
            lo: addr_to_u128(&a.parse().unwrap()),
            hi: addr_to_u128(&b.parse().unwrap()),
        }
    }

    #[test]
    fn display_matches_nft_notation() {
        assert_eq!(r4("10.0.0.1", "10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(r4("10.0.0.0", "10.0.0.255").to_string(), "10.0.0.0/24");
        assert_eq!(r4("10.0.1.0", "10.0.1.5").to_string(), "10.0.1.0-10.0.1.5");
        assert_eq!(Range::all(Family::V4).to_string(), "0.0.0.0/0");
        assert_eq!(Range::all(Family::V6).to_string(), "::/0");
        let c: Cidr = "fd00:1::/64".parse().unwrap();
        assert_eq!(c.range().to_string(), "fd00:1::/64");
    }

    #[test]
    fn cidr_parsing_is_strict() {
        assert!("10.0.0.1/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().to_string(), "10.0.0.1");
        assert_eq!(
            "10.0.0.1/32".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1"
        );
        assert!(Cidr::parse_canonical("10.0.0.1/32").is_err());
    }

    #[test]
    fn merge_joins_overlap_and_adjacency() {
        let m = merge(vec![
            r4("10.0.0.128", "10.0.0.255"),
            r4("10.0.0.0", "10.0.0.127"),
            r4("10.0.0.5", "10.0.0.5"),
            r4("10.0.2.0", "10.0.2.0"),
        ]);
        assert_eq!(
            m,
            vec![r4("10.0.0.0", "10.0.0.255"), r4("10.0.2.0", "10.0.2.0")]
        );
    }

    #[test]
    fn partition_splits_overlap() {
        let p = partition(&[
            (r4("10.0.0.0", "10.0.0.255"), "a"),
            (r4("10.0.0.5", "10.0.0.5"), "b"),
        ]);
        assert_eq!(
            p,
            vec![
                (r4("10.0.0.0", "10.0.0.4"), vec!["a"]),
                (r4("10.0.0.5", "10.0.0.5"), vec!["a", "b"]),
                (r4("10.0.0.6", "10.0.0.255"), vec!["a"]),
            ]
        );
    }

    #[test]
    fn partition_reaches_the_end_of_each_family() {
        let all6 = Range {
            family: Family::V6,
            lo: 0,
            hi: u128::MAX,
        };
        let top6 = Range {
            family: Family::V6,
            lo: u128::MAX - 1,
            hi: u128::MAX,
        };
        let top4 = r4("255.255.255.0", "255.255.255.255");
        let p = partition(&[(all6, "a"), (top6, "b"), (top4, "c")]);
        assert_eq!(
            p,
            vec![
                (top4, vec!["c"]),
                (
                    Range {
                        family: Family::V6,
                        lo: 0,
                        hi: u128::MAX - 2
                    },
                    vec!["a"]
                ),
                (top6, vec!["a", "b"]),
            ]
        );
    }

    proptest! {
        #[test]
        fn prefixes_cover_range_exactly(lo in 0u32..5000, len in 0u32..5000) {
            let r = Range { family: Family::V4, lo: lo as u128, hi: (lo + len) as u128 };
            let ps = r.to_prefixes();
            let mut next = r.lo;
            for p in &ps {
                let pr = p.range();
                prop_assert_eq!(pr.lo, next);
                next = pr.hi + 1;
            }
            prop_assert_eq!(next, r.hi + 1);
        }

        #[test]
        fn partition_is_disjoint_and_labels_correct(items in proptest::collection::vec((0u32..64, 0u32..16, 0u8..4), 1..16), probe in 0u32..80) {
            let items: Vec<(Range, u8)> = items.iter().map(|(lo, len, l)| (Range { family: Family::V4, lo: *lo as u128, hi: (*lo + *len) as u128 }, *l)).collect();
            let parts = partition(&items);
            for w in parts.windows(2) {
                prop_assert!(w[0].0.hi < w[1].0.lo);
                prop_assert!(w[0].0.hi + 1 < w[1].0.lo || w[0].1 != w[1].1, "equal neighbours not joined: {:?}", w);
            }
            let mut expect: Vec<u8> = items.iter().filter(|(r, _)| r.lo <= probe as u128 && probe as u128 <= r.hi).map(|(_, l)| *l).collect();
            expect.sort();
            expect.dedup();
            let got: Vec<u8> = parts.iter().find(|(r, _)| r.lo <= probe as u128 && probe as u128 <= r.hi).map(|(_, l)| l.clone()).unwrap_or_default();
            prop_assert_eq!(got, expect);
        }
    }
}

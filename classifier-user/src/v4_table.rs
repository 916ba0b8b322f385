//! The IPv4 table the XDP program classifies with (layout in
//! classifier-common): one lookup per address answers "watched?" and "which
//! service's endpoint?". Built here from the watched set and the endpoint
//! feed; `lookup` walks it exactly as the kernel does, and
//! `longest_prefix_match` is the plain reference both are checked against.

use classifier_common::{
    V4_ENTRY_INDEX_MASK, V4_ENTRY_KIND_SHIFT, V4_ENTRY_LEAF, V4_ENTRY_NODE, V4_ENTRY_VALUE,
    V4_LOWER_DECLARED_SIZE, V4_LOWER_GLOBALS, V4_NODE_WIDTH, V4_RUNS_PER_ELEMENT, V4_TOP_NODES,
    V4_VALUE_WATCHED, V4Leaf, V4Node, V4Runs, V4Top, rank_upto,
};
use ipnet::Ipv4Net;

/// Addresses under one first-level entry (32 − 18 bits).
const TOP_BLOCK: u64 = 1 << 14;
/// Addresses under one second-level entry: a /24.
const LEAF_BLOCK: u64 = 1 << 8;
const ADDRESS_SPACE: u64 = 1 << 32;

/// The filled arrays, ready to be copied into the maps.
#[derive(Debug, Clone)]
pub struct V4Table {
    /// The first level (1 MiB, on the heap).
    pub top: Box<V4Top>,
    /// The second-level nodes.
    pub nodes: Vec<V4Node>,
    pub leaves: Vec<V4Leaf>,
    pub runs: Vec<V4Runs>,
}

/// The most bytes the levels below the first may take: the verifier refuses
/// a read at a variable offset of 2^29 bytes or more into a map value.
pub const V4_LOWER_MAX_BYTES: usize = 1 << 29;

/// The levels below the first as `classifier_common::MAP_V4_LOWER`'s one
/// value, and the program's globals that describe it.
#[derive(Debug, Clone)]
pub struct V4Lower<'a> {
    /// The value's bytes: the nodes, leaves and runs one after the other
    /// (borrowed from the table, not copied).
    pub parts: [&'a [u8]; 3],
    /// The parts' length, or the declared size when that is more (a value
    /// is never empty).
    pub value_size: u32,
    /// In the order of [`V4_LOWER_GLOBALS`].
    pub globals: [(&'static str, u32); 5],
}

/// A maximal range of addresses with one value: from `start` up to the next
/// run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u64,
    value: u16,
}

impl V4Table {
    /// `endpoints` pairs each prefix with its service id (1..2^15). Prefixes
    /// are unique within each list; nested ones resolve by longest prefix.
    pub fn build(watched: &[Ipv4Net], endpoints: &[(Ipv4Net, u16)]) -> Self {
        let watched_runs = runs(watched.iter().map(|net| (*net, V4_VALUE_WATCHED)));
        let endpoint_runs = runs(endpoints.iter().copied());
        let runs = merge(&watched_runs, &endpoint_runs);
        Builder::default().build(&runs)
    }

    /// The value of `address` (host order), walking the table as the kernel
    /// does.
    pub fn lookup(&self, address: u32) -> u16 {
        let top = address >> 14;
        let mut entry = self.top.nodes[(top >> 6) as usize].entries[(top & 63) as usize];
        if entry >> V4_ENTRY_KIND_SHIFT == V4_ENTRY_NODE {
            let node = &self.nodes[(entry & V4_ENTRY_INDEX_MASK) as usize];
            entry = node.entries[((address >> 8) & 63) as usize];
        }
        if entry >> V4_ENTRY_KIND_SHIFT == V4_ENTRY_LEAF {
            let leaf = &self.leaves[(entry & V4_ENTRY_INDEX_MASK) as usize];
            let offset = address & 0xff;
            let word = (offset >> 6) as usize;
            let run = (leaf.active[word] + rank_upto(leaf.starts[word], offset & 63)) as usize;
            return self.runs[run / V4_RUNS_PER_ELEMENT].values[run % V4_RUNS_PER_ELEMENT];
        }
        entry as u16
    }

    /// The nodes, leaves and runs as one value; `None` when they take
    /// more than [`V4_LOWER_MAX_BYTES`].
    pub fn lower(&self) -> Option<V4Lower<'_>> {
        let nodes: &[u8] = bytemuck::cast_slice(&self.nodes);
        let leaves: &[u8] = bytemuck::cast_slice(&self.leaves);
        let runs: &[u8] = bytemuck::cast_slice(&self.runs);
        let len = nodes.len() + leaves.len() + runs.len();
        if len > V4_LOWER_MAX_BYTES {
            return None;
        }
        // Every number below is at most `len`, below 2^29.
        let values = [
            self.nodes.len(),
            self.leaves.len(),
            nodes.len(),
            self.runs.len(),
            nodes.len() + leaves.len(),
        ]
        .map(|number| number as u32);
        Some(V4Lower {
            parts: [nodes, leaves, runs],
            value_size: len.max(V4_LOWER_DECLARED_SIZE) as u32,
            globals: std::array::from_fn(|i| (V4_LOWER_GLOBALS[i], values[i])),
        })
    }

    /// Bytes the first level and the levels below take in the kernel.
    pub fn kernel_bytes(&self) -> usize {
        size_of::<V4Top>()
            + self.nodes.len() * size_of::<V4Node>()
            + self.leaves.len() * size_of::<V4Leaf>()
            + self.runs.len() * size_of::<V4Runs>()
    }
}

/// The reference: the value of `address` by a plain longest-prefix match over
/// each list. Slow; for tests.
pub fn longest_prefix_match(
    watched: &[Ipv4Net],
    endpoints: &[(Ipv4Net, u16)],
    address: u32,
) -> u16 {
    let address = std::net::Ipv4Addr::from(address);
    let is_watched = watched.iter().any(|net| net.contains(&address));
    let service = endpoints
        .iter()
        .filter(|(net, _)| net.contains(&address))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(0, |(_, service)| *service);
    service | if is_watched { V4_VALUE_WATCHED } else { 0 }
}

/// The runs of a set of prefixes, longest prefix winning, 0 where none
/// covers an address. Starts at address 0.
fn runs(prefixes: impl Iterator<Item = (Ipv4Net, u16)>) -> Vec<Run> {
    // (first address, last address, value), outer prefixes before the ones
    // nested in them.
    let mut ranges: Vec<(u64, u64, u16)> = prefixes
        .map(|(net, value)| {
            (
                u64::from(u32::from(net.network())),
                u64::from(u32::from(net.broadcast())),
                value,
            )
        })
        .collect();
    ranges.sort_unstable_by_key(|&(first, last, _)| (first, std::cmp::Reverse(last)));

    let mut out = vec![Run { start: 0, value: 0 }];
    // Enclosing ranges still open: (last address, value).
    let mut open: Vec<(u64, u16)> = Vec::new();
    let close_until = |open: &mut Vec<(u64, u16)>, out: &mut Vec<Run>, before: u64| {
        while let Some(&(last, _)) = open.last() {
            if last >= before {
                break;
            }
            open.pop();
            let value = open.last().map_or(0, |&(_, value)| value);
            push_run(out, last + 1, value);
        }
    };
    for (first, last, value) in ranges {
        close_until(&mut open, &mut out, first);
        push_run(&mut out, first, value);
        open.push((last, value));
    }
    close_until(&mut open, &mut out, ADDRESS_SPACE);
    out
}

/// Appends a run, replacing one that starts at the same address and
/// dropping it when it continues the previous run's value.
fn push_run(out: &mut Vec<Run>, start: u64, value: u16) {
    if start >= ADDRESS_SPACE {
        return;
    }
    if out.last().is_some_and(|run| run.start == start) {
        out.pop();
    }
    if out.last().is_some_and(|run| run.value == value) {
        return;
    }
    out.push(Run { start, value });
}

/// Runs of `a | b` from the runs of `a` and of `b`.
fn merge(a: &[Run], b: &[Run]) -> Vec<Run> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next_a = a.get(i).map_or(ADDRESS_SPACE, |run| run.start);
        let next_b = b.get(j).map_or(ADDRESS_SPACE, |run| run.start);
        let start = next_a.min(next_b);
        if next_a == start {
            i += 1;
        }
        if next_b == start {
            j += 1;
        }
        // i and j are now one past the runs in effect at `start`.
        let value = a[i - 1].value | b[j - 1].value;
        push_run(&mut out, start, value);
    }
    out
}

#[derive(Default)]
struct Builder {
    second_level: Vec<V4Node>,
    leaves: Vec<V4Leaf>,
    run_values: Vec<u16>,
}

impl Builder {
    fn build(mut self, runs: &[Run]) -> V4Table {
        let mut top: Box<V4Top> = bytemuck::zeroed_box();
        // `r` is the run in effect at the block being built.
        let mut r = 0;
        for block in 0..(V4_TOP_NODES as usize * V4_NODE_WIDTH) {
            let start = block as u64 * TOP_BLOCK;
            top.nodes[block / V4_NODE_WIDTH].entries[block % V4_NODE_WIDTH] =
                self.top_entry(runs, &mut r, start);
        }
        let runs = self
            .run_values
            .chunks(V4_RUNS_PER_ELEMENT)
            .map(|chunk| {
                let mut values = [0; V4_RUNS_PER_ELEMENT];
                values[..chunk.len()].copy_from_slice(chunk);
                V4Runs { values }
            })
            .collect();
        V4Table {
            top,
            nodes: self.second_level,
            leaves: self.leaves,
            runs,
        }
    }

    fn top_entry(&mut self, runs: &[Run], r: &mut usize, start: u64) -> u32 {
        if let Some(value) = uniform(runs, r, start, TOP_BLOCK) {
            return entry(V4_ENTRY_VALUE, u32::from(value));
        }
        let mut node = V4Node {
            entries: [0; V4_NODE_WIDTH],
        };
        for (slot, entry_slot) in node.entries.iter_mut().enumerate() {
            let start = start + slot as u64 * LEAF_BLOCK;
            *entry_slot = match uniform(runs, r, start, LEAF_BLOCK) {
                Some(value) => entry(V4_ENTRY_VALUE, u32::from(value)),
                None => self.leaf(runs, r, start),
            };
        }
        let index = self.second_level.len();
        self.second_level.push(node);
        entry(V4_ENTRY_NODE, index as u32)
    }

    fn leaf(&mut self, runs: &[Run], r: &mut usize, start: u64) -> u32 {
        let first_run = self.run_values.len() as u32;
        self.run_values.push(runs[*r].value);
        let mut leaf = V4Leaf {
            starts: [0; 4],
            active: [first_run; 4],
        };
        let mut later = *r + 1;
        while let Some(run) = runs.get(later).filter(|run| run.start < start + LEAF_BLOCK) {
            let offset = (run.start - start) as usize;
            leaf.starts[offset / 64] |= 1 << (offset % 64);
            self.run_values.push(run.value);
            later += 1;
        }
        for word in 1..4 {
            leaf.active[word] = leaf.active[word - 1] + leaf.starts[word - 1].count_ones();
        }
        let index = self.leaves.len() as u32;
        self.leaves.push(leaf);
        entry(V4_ENTRY_LEAF, index)
    }
}

/// The value of the block `[start, start + size)` when one run covers it.
/// Moves `r` to the run in effect at `start`.
fn uniform(runs: &[Run], r: &mut usize, start: u64, size: u64) -> Option<u16> {
    while runs.get(*r + 1).is_some_and(|run| run.start <= start) {
        *r += 1;
    }
    let next_start = runs.get(*r + 1).map_or(ADDRESS_SPACE, |run| run.start);
    (next_start >= start + size).then_some(runs[*r].value)
}

fn entry(kind: u32, index: u32) -> u32 {
    debug_assert!(index <= V4_ENTRY_INDEX_MASK);
    (kind << V4_ENTRY_KIND_SHIFT) | index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> u32 {
        u32::from(text.parse::<std::net::Ipv4Addr>().unwrap())
    }

    /// Every prefix's edges and their neighbours, plus `extra` addresses.
    fn edge_addresses(nets: &[Ipv4Net]) -> Vec<u32> {
        let mut addresses = Vec::new();
        for net in nets {
            let first = u32::from(net.network());
            let last = u32::from(net.broadcast());
            addresses.extend([
                first,
                last,
                first.wrapping_sub(1),
                last.wrapping_add(1),
                first.wrapping_add(1),
                last.wrapping_sub(1),
            ]);
        }
        addresses
    }

    fn check(watched: &[Ipv4Net], endpoints: &[(Ipv4Net, u16)], extra: &[u32]) {
        let table = V4Table::build(watched, endpoints);
        let mut nets: Vec<Ipv4Net> = watched.to_vec();
        nets.extend(endpoints.iter().map(|(net, _)| *net));
        let mut addresses = edge_addresses(&nets);
        addresses.extend_from_slice(extra);
        for address in addresses {
            assert_eq!(
                table.lookup(address),
                longest_prefix_match(watched, endpoints, address),
                "{}",
                std::net::Ipv4Addr::from(address)
            );
        }
    }

    #[test]
    fn nested_prefixes_of_different_services_resolve_by_longest_prefix() {
        let endpoints = [
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), 2),
            (net("10.1.2.0/24"), 3),
            (net("10.1.2.128/25"), 1),
            (net("10.1.2.130/32"), 4),
            (net("10.1.2.64/26"), 5),
            (net("0.0.0.0/0"), 6),
            (net("255.255.255.255/32"), 7),
        ];
        let watched = [net("10.1.2.0/30"), net("175.45.176.0/22")];
        check(&watched, &endpoints, &[0, u32::MAX, addr("10.1.2.131")]);
        let table = V4Table::build(&watched, &endpoints);
        assert_eq!(table.lookup(addr("10.1.2.130")), 4);
        assert_eq!(table.lookup(addr("10.1.2.1")), 3 | V4_VALUE_WATCHED);
        assert_eq!(table.lookup(addr("175.45.179.255")), 6 | V4_VALUE_WATCHED);
        assert_eq!(table.lookup(addr("11.0.0.0")), 6);
    }

    #[test]
    fn an_empty_table_is_all_zero_and_has_only_the_first_level() {
        let table = V4Table::build(&[], &[]);
        assert_eq!(table.lookup(0), 0);
        assert_eq!(table.lookup(u32::MAX), 0);
        assert!(table.nodes.is_empty());
        assert!(table.leaves.is_empty());
        let lower = table.lower().expect("fits");
        assert_eq!(lower.value_size as usize, V4_LOWER_DECLARED_SIZE);
        assert!(lower.globals.iter().all(|(_, value)| *value == 0));
    }

    #[test]
    fn the_lower_levels_lie_one_after_the_other_where_the_globals_say() {
        // A /20 (a second-level node), a /25 (a leaf) and a /32 beside it.
        let endpoints = [
            (net("198.51.96.0/20"), 1),
            (net("203.0.113.0/25"), 2),
            (net("203.0.113.200/32"), 3),
        ];
        let table = V4Table::build(&[], &endpoints);
        let lower = table.lower().expect("fits");
        let (nodes, leaves, runs) = (table.nodes.len(), table.leaves.len(), table.runs.len());
        assert!(nodes > 0 && leaves > 0 && runs > 0);
        let leaves_at = nodes * size_of::<V4Node>();
        let runs_at = leaves_at + leaves * size_of::<V4Leaf>();
        let expected = [nodes, leaves, leaves_at, runs, runs_at].map(|n| n as u32);
        assert_eq!(lower.globals.map(|(_, value)| value), expected);
        assert_eq!(
            lower.globals.map(|(name, _)| name),
            classifier_common::V4_LOWER_GLOBALS
        );
        let lengths = lower.parts.map(<[u8]>::len);
        assert_eq!(
            lengths,
            [leaves_at, runs_at - leaves_at, runs * size_of::<V4Runs>()]
        );
        assert_eq!(lower.value_size as usize, lengths.iter().sum::<usize>());
        assert_eq!(
            lower.parts[1],
            bytemuck::cast_slice::<V4Leaf, u8>(&table.leaves)
        );
    }

    #[test]
    fn lower_levels_past_the_verifiers_reach_are_refused_and_up_to_it_are_not() {
        // Tables as large as a feed of millions of partial /24s builds,
        // without the feed: zeroed vectors the allocator hands over as
        // untouched pages, which `lower` only measures.
        let table_of = |leaves: usize| V4Table {
            top: bytemuck::zeroed_box(),
            nodes: Vec::new(),
            leaves: bytemuck::zeroed_vec(leaves),
            runs: Vec::new(),
        };
        let most_leaves = V4_LOWER_MAX_BYTES / size_of::<V4Leaf>();
        let at_the_limit = table_of(most_leaves);
        let lower = at_the_limit.lower().expect("up to the limit fits");
        assert_eq!(lower.value_size as usize, most_leaves * size_of::<V4Leaf>());
        assert!(table_of(most_leaves + 1).lower().is_none());
    }

    #[test]
    fn random_nested_feeds_match_the_reference() {
        let mut next = crate::test_support::xorshift(0x1234_5678_9abc_def0);
        for _ in 0..20 {
            let mut endpoints: Vec<(Ipv4Net, u16)> = Vec::new();
            // Clustered under 10.0.0.0/12 so prefixes nest often.
            for _ in 0..60 {
                let length = 12 + (next() % 21) as u8;
                let address = 0x0a00_0000 | (next() as u32 & 0x000f_ffff);
                let prefix = Ipv4Net::new(address.into(), length).unwrap().trunc();
                if endpoints.iter().all(|(net, _)| *net != prefix) {
                    endpoints.push((prefix, 1 + (next() % 5) as u16));
                }
            }
            let watched = [
                Ipv4Net::new((0x0a00_0000 | (next() as u32 & 0x000f_ff00)).into(), 26)
                    .unwrap()
                    .trunc(),
            ];
            let extra: Vec<u32> = (0..2000)
                .map(|_| 0x0a00_0000 | (next() as u32 & 0x000f_ffff))
                .collect();
            check(&watched, &endpoints, &extra);
        }
    }
}

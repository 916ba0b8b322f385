//! Issue 6's recipes (`classifier_user::recipe`), hand-written in raw BPF:
//! what a path costs at the least on this machine, measured against the
//! empty program and against ours, so each target can be read against it.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result, ensure};
use aya::maps::{Map, MapData, PerCpuArray};
use classifier_user::recipe::{
    MATCH_RECIPE_BUCKET_SLOTS, MATCH_RECIPE_BUCKETS, MatchRecipe, load_match_recipe_xdp,
    load_parse_and_count_xdp,
};

use crate::{
    Measurement, Options, measure, stream,
    workload::{
        ENDPOINT_V4, MATCH_CASE, NON_ENDPOINT_CASE, NON_WATCHED_CASE, WATCHED_V4, case_frame,
    },
};

/// The name `--only` picks the non-watched recipe's measurement by.
pub const RECIPE_CASE: &str = "a non-watched: the recipe";
/// The name `--only` picks the match recipe's measurements by.
pub const MATCH_RECIPE_CASE: &str = "c watched -> endpoint: the recipe";

/// A recipe against the empty program, and ours against the recipe.
pub struct RecipeCost {
    pub recipe: Measurement,
    pub ours: Measurement,
}

/// The watched prefix of the bench's frames.
fn watched_prefix() -> ipnet::Ipv4Net {
    WATCHED_V4.parse().expect("a prefix")
}

/// Runs of the program measured as `ours` by [`measure`]: the warm-up and
/// two per round.
fn runs_as_ours(options: &Options) -> u64 {
    1000 + 2 * options.rounds() as u64 * u64::from(options.repeat())
}

/// Runs of a program [`measure`]d as `ours` and then as the floor.
fn runs_as_both(options: &Options) -> u64 {
    runs_as_ours(options) + 2 * options.rounds() as u64 * u64::from(options.repeat())
}

/// Issue 6's recipe for the non-watched path ("parsing plus one per-CPU
/// array update"), measured on the 64-byte non-watched frame against the
/// empty program and against ours: what the non-watched path costs at the
/// least on this machine, so the 1.10 target can be read against it.
/// Checks that the recipe counted every packet it ran on, with its bytes.
pub fn recipe_floor(
    floor: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    both_addresses: bool,
    options: &Options,
) -> Result<RecipeCost> {
    let frame = case_frame(64, NON_WATCHED_CASE)?;
    let (recipe, counters) = load_parse_and_count_xdp(watched_prefix(), both_addresses)
        .context("load the recipe program")?;
    let recipe_vs_empty = measure(floor, recipe.as_fd(), &frame, options)?;
    let ours_vs_recipe = measure(recipe.as_fd(), ours, &frame, options)?;
    let [packets, bytes] = per_cpu_sum::<2>(counters, 0)?;
    let runs = runs_as_both(options);
    ensure!(
        packets == runs && bytes == runs * frame.len() as u64,
        "the recipe program ran {runs} times on a {}-byte frame but counted {packets} packets and {bytes} bytes",
        frame.len()
    );
    Ok(RecipeCost {
        recipe: recipe_vs_empty,
        ours: ours_vs_recipe,
    })
}

/// The match recipe's measurements.
pub struct MatchRecipeCost {
    /// A known flow's packet: the recipe against the empty program, and
    /// ours against the recipe.
    pub known: RecipeCost,
    /// Every packet a new flow: the recipe against the empty program.
    pub new_flow: Measurement,
    /// A watched source's packet to a non-endpoint (the recipe's table
    /// has no entry for its /18): the recipe against the empty program,
    /// and ours against the recipe.
    pub non_endpoint: RecipeCost,
}

/// The service id the match recipe's table gives the bench's endpoint.
const RECIPE_SERVICE: u16 = 1;

/// Issue 6's design for the match path (`recipe::load_match_recipe_xdp`:
/// an array bitmap and a direct-mapped per-CPU flow cache), measured on the
/// 64-byte match frame against the empty program and against ours, a known
/// flow's packet and then every packet a new flow; and on the 64-byte
/// watched → non-endpoint frame, which it counts in its totals and then
/// finds no entry for. Checks that the recipe counted every packet it ran
/// on in its totals, and every match in its service and its flow (one
/// flow), or claimed a slot for each (new flows).
pub fn match_recipe_floor(
    floor: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    options: &Options,
) -> Result<MatchRecipeCost> {
    let matched = case_frame(64, MATCH_CASE)?;
    let non_endpoint = case_frame(64, NON_ENDPOINT_CASE)?;
    let endpoint = ENDPOINT_V4.parse().expect("an address");
    let load = |new_flow_every_packet| {
        load_match_recipe_xdp(
            watched_prefix(),
            endpoint,
            RECIPE_SERVICE,
            new_flow_every_packet,
        )
        .context("load the match recipe program")
    };
    let both = |recipe: &MatchRecipe, frame: &[u8]| -> Result<RecipeCost> {
        Ok(RecipeCost {
            recipe: measure(floor, recipe.program.as_fd(), frame, options)?,
            ours: measure(recipe.program.as_fd(), ours, frame, options)?,
        })
    };

    let recipe = load(false)?;
    let known = both(&recipe, &matched)?;
    let runs = runs_as_both(options);
    let counts = Expected {
        runs,
        bytes: matched.len(),
        matched: runs,
        claims: 1,
        in_flows: Some(runs),
    };
    check_match_counts(recipe, counts)?;

    let recipe = load(true)?;
    let new_flow = measure(floor, recipe.program.as_fd(), &matched, options)?;
    let runs = runs_as_ours(options);
    let counts = Expected {
        runs,
        bytes: matched.len(),
        matched: runs,
        claims: runs,
        // Each claim starts its slot at one packet and later claims
        // overwrite earlier ones, so the slots hold fewer.
        in_flows: None,
    };
    check_match_counts(recipe, counts)?;

    let recipe = load(false)?;
    let non_endpoint_cost = both(&recipe, &non_endpoint)?;
    let counts = Expected {
        runs: runs_as_both(options),
        bytes: non_endpoint.len(),
        matched: 0,
        claims: 0,
        in_flows: Some(0),
    };
    check_match_counts(recipe, counts)?;
    Ok(MatchRecipeCost {
        known,
        new_flow,
        non_endpoint: non_endpoint_cost,
    })
}

/// What a stream-mode case's frames ask of the match recipe.
#[derive(Clone, Copy, PartialEq)]
pub enum StreamFlows {
    /// Every frame a flow of its own.
    New,
    /// The same flow's frame in every run.
    Known,
}

/// The match recipe on a stream-mode case's frames (each run one frame),
/// against the empty program: what those frames cost at the least when
/// each run finds the program's code and data cold. The recipe is attached
/// to `if_index` while it runs (as ours is to the sensor's veth). Between
/// rounds of new flows it gets what ours gets: a pause, its flow cache read
/// from userspace (as the drain reads ours), then `ours_drain` (the same
/// work on the machine's caches as ours sees). Checks that it counted every
/// frame in its totals and its service, and claimed a slot for every new
/// flow (one for a known flow).
pub fn stream_recipe_floor(
    floor: BorrowedFd<'_>,
    streams: &[Vec<Vec<u8>>],
    flows: StreamFlows,
    if_index: u32,
    mut ours_drain: impl FnMut() -> Result<()>,
) -> Result<Measurement> {
    let recipe = load_match_recipe_xdp(
        watched_prefix(),
        ENDPOINT_V4.parse().expect("an address"),
        RECIPE_SERVICE,
        false,
    )
    .context("load the match recipe program")?;
    let _attached = classifier_user::testrun::attach_xdp_link(recipe.program.as_fd(), if_index)
        .context("attach the match recipe program")?;
    let cache: PerCpuArray<MapData, [u64; BUCKET_WORDS]> = PerCpuArray::try_from(
        Map::PerCpuArray(MapData::from_fd(recipe.flows.try_clone()?)?),
    )?;
    let cost = stream::compare_stream_with(floor, recipe.program.as_fd(), streams, || {
        if flows == StreamFlows::Known {
            return Ok(());
        }
        std::thread::sleep(crate::DRAIN_PAUSE);
        for bucket in 0..MATCH_RECIPE_BUCKETS {
            cache.get(&bucket, 0)?;
        }
        ours_drain()
    })?;
    let frames: Vec<&Vec<u8>> = streams.iter().flatten().collect();
    let runs = frames.len() as u64;
    let bytes = frames.first().map_or(0, |frame| frame.len());
    ensure!(
        frames.iter().all(|frame| frame.len() == bytes),
        "a stream's frames differ in length"
    );
    let expected = match flows {
        StreamFlows::New => Expected {
            runs,
            bytes,
            matched: runs,
            claims: runs,
            in_flows: None,
        },
        StreamFlows::Known => Expected {
            runs,
            bytes,
            matched: runs,
            claims: 1,
            in_flows: Some(runs),
        },
    };
    check_match_counts(recipe, expected)?;
    Ok(cost)
}

/// What a match recipe should have counted.
#[derive(Debug)]
struct Expected {
    /// Runs, each one frame of `bytes`.
    runs: u64,
    bytes: usize,
    /// Runs on a frame to the recipe's endpoint.
    matched: u64,
    /// Flow-cache slots claimed (one for a known flow: the bench runs
    /// on one CPU, `pin_to_cpu`, so the flow has one slot).
    claims: u64,
    /// Packets in the flow cache's slots, when known.
    in_flows: Option<u64>,
}

/// That the match recipe counted what `expected` says.
fn check_match_counts(recipe: MatchRecipe, expected: Expected) -> Result<()> {
    let [packets, bytes, claims] = per_cpu_sum::<3>(recipe.totals, 0)?;
    let [matched, matched_bytes] =
        per_cpu_sum::<2>(recipe.service_counters, RECIPE_SERVICE.into())?;
    let flows: PerCpuArray<MapData, [u64; BUCKET_WORDS]> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_fd(recipe.flows)?))?;
    let mut in_flows = 0;
    for bucket in 0..MATCH_RECIPE_BUCKETS {
        for values in flows.get(&bucket, 0)?.iter() {
            // A slot's third word is its packets.
            in_flows += values.chunks(SLOT_WORDS).map(|slot| slot[2]).sum::<u64>();
        }
    }
    ensure!(
        packets == expected.runs
            && bytes == expected.runs * expected.bytes as u64
            && matched == expected.matched
            && matched_bytes == expected.matched * expected.bytes as u64
            && claims == expected.claims
            && expected.in_flows.is_none_or(|wanted| in_flows == wanted),
        "the match recipe counted {packets} packets and {bytes} bytes, {matched} packets and {matched_bytes} bytes in its service, {in_flows} in its flow cache and {claims} slots claimed; expected {expected:?}"
    );
    Ok(())
}

/// Words of a flow-cache slot and bucket of the match recipe.
const SLOT_WORDS: usize = 6;
const BUCKET_WORDS: usize = SLOT_WORDS * MATCH_RECIPE_BUCKET_SLOTS as usize;

/// The sum over CPUs of a per-CPU array's value `index`, `N` words.
fn per_cpu_sum<const N: usize>(map: std::os::fd::OwnedFd, index: u32) -> Result<[u64; N]> {
    let map: PerCpuArray<MapData, [u64; N]> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_fd(map)?))?;
    let mut sum = [0u64; N];
    for value in map.get(&index, 0)?.iter() {
        for (total, word) in sum.iter_mut().zip(value) {
            *total += word;
        }
    }
    Ok(sum)
}

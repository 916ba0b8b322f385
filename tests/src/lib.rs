//! Helpers for the root-only integration tests: frames built with
//! etherparse, a privilege gate that fails in CI instead of skipping,
//! network namespaces and veth pairs owned by guards that remove them on
//! drop, and an AF_PACKET sender that writes frames from inside a namespace.

pub mod daemon;
pub mod frames;
pub mod netns;
pub mod oracle;
pub mod protocols;

use std::path::PathBuf;

/// True when the tests may load BPF. Without root they skip with a note,
/// except under `CI=true`, where a privileged test that cannot run fails.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test loads BPF programs and needs root; in CI it must not be skipped"
    );
    eprintln!("skipped: needs root (it loads BPF programs)");
    false
}

/// The release `classifier` binary that `cargo xtask test` built.
pub fn classifier_binary() -> PathBuf {
    let path = std::env::var_os("CLASSIFIER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/classifier"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no classifier binary at {} (run the tests with `cargo xtask test`)",
        path.display()
    );
    path
}

/// A path as the `&str` a command-line argument needs.
pub fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `classifier ARGS…` run to completion (no namespace).
pub fn run_classifier(args: &[&str]) -> std::process::Output {
    std::process::Command::new(classifier_binary())
        .args(args)
        .output()
        .expect("run classifier")
}

/// `classifier pcap --format json ARGS…`, which must succeed: its report.
pub fn pcap_report(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["pcap", "--format", "json"];
    all.extend_from_slice(args);
    let output = run_classifier(&all);
    assert!(
        output.status.success(),
        "classifier pcap: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pcap report JSON")
}

/// The endpoint feed the tests load: nested prefixes of different services
/// in both families, so longest-prefix matching is exercised.
pub const TEST_FEED: &str = "\
cidr,service,note
198.51.100.0/24,alpha,outer
198.51.100.128/25,beta,nested in alpha
198.51.100.200/32,gamma,host inside beta
203.0.113.0/24,delta,
2001:db8:e0::/48,alpha,
2001:db8:e0:1::/64,beta,nested in alpha
";

/// Watched prefixes the tests use: the default range and one IPv6 range.
pub const TEST_WATCHED: [&str; 2] = ["175.45.176.0/22", "2001:db8:aa::/48"];

/// The program loaded with [`TEST_FEED`], watching `prefixes`.
pub fn load_test_sensor(
    prefixes: &[&str],
    capacities: classifier_user::loader::Capacities,
) -> classifier_user::loader::Sensor {
    use classifier_user::feeds::{EndpointFeed, WatchedSet};
    let watched: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    let watched = WatchedSet::from_arguments(&watched, &[]).expect("valid watched set");
    let feed =
        EndpointFeed::from_sources(&[("test-feed".into(), TEST_FEED.into())]).expect("valid feed");
    classifier_user::loader::Sensor::load(&watched, &feed, capacities).expect("the program loads")
}

/// Pins the calling thread to one CPU, so per-CPU maps see one CPU's view
/// (and measurements one CPU's caches).
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET sets one bit of it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pins this thread with a valid set of the size given.
    let result =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Deterministic pseudo-random numbers (splitmix64), so every run builds the
/// same feeds and frames.
pub struct Random(pub u64);

impl Random {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `bound` (not perfectly uniform; fine for test data).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

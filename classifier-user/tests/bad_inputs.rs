//! The CLI over a table of bad inputs across subcommands: each fails
//! before anything touches the kernel (no root needed), with exit code 1
//! and one line on stderr for bad files and values, or exit code 2 and
//! clap's message for bad usage; the message names the input, nothing
//! panics and nothing reaches stdout.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A case that has not failed by then has got further than it should.
const DEADLINE: Duration = Duration::from_secs(30);

/// One bad input: the arguments, the exit code, the start of the first
/// stderr line, and the input that line must name.
struct Case {
    args: Vec<String>,
    code: i32,
    starts_with: String,
    names: String,
}

/// A folder of input files, one per test, removed at the end.
struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "classifier-bad-inputs-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("a-folder")).expect("create the fixture folder");
        Self { dir }
    }

    fn file(&self, name: &str, contents: &[u8]) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("write a fixture");
        path.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn case(args: &[&str], code: i32, starts_with: &str, names: &str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        code,
        starts_with: starts_with.to_string(),
        names: names.to_string(),
    }
}

/// `classifier run` on loopback with pins in the fixture folder, so a case
/// that got too far could not touch a real sensor's pins.
fn run_case(
    fixtures: &Fixtures,
    extra: &[&str],
    code: i32,
    starts_with: &str,
    names: &str,
) -> Case {
    let pins = fixtures.path("pins");
    let mut args = vec!["run", "--iface", "lo", "--pin-path", &pins];
    args.extend_from_slice(extra);
    case(&args, code, starts_with, names)
}

/// Runs the binary; a run past [`DEADLINE`] is stopped (SIGTERM first, so
/// a `run` that got as far as attaching detaches) and fails the test.
fn classifier(args: &[String]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_classifier"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start classifier");
    let started = Instant::now();
    while child.try_wait().expect("wait for classifier").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            panic!("{args:?}: still running after {DEADLINE:?}; it should fail at once");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the output")
}

fn cases(f: &Fixtures) -> Vec<Case> {
    let header = "cidr,service\n198.51.100.0/24,alpha\n";
    let feed = |name: &str, line: &str| f.file(name, format!("{header}{line}\n").as_bytes());
    let bad_cidr = feed("bad-cidr.csv", "198.51.101.0/2x,alpha");
    let host_bits = feed("host-bits.csv", "198.51.101.7/24,alpha");
    let five_octets = feed("five-octets.csv", "198.51.101.1.5/32,alpha");
    let slash_33 = feed("slash-33.csv", "198.51.101.0/33,alpha");
    let bad_v6 = feed("bad-v6.csv", "2001:db8::zz/64,alpha");
    let v6_too_long = feed("v6-129.csv", "2001:db8::/129,alpha");
    let not_an_address = feed("word.csv", "banana,alpha");
    let no_service_value = feed("no-service-value.csv", "198.51.101.0/24,");
    let bad_service = feed("bad-service.csv", "198.51.101.0/24,Hot Spot");
    let long_service = feed(
        "long-service.csv",
        &format!("198.51.101.0/24,{}", "a".repeat(33)),
    );
    let after_blanks = f.file(
        "after-blanks.csv",
        b"cidr,service\n\n\n# old\n\n198.51.101.7/24,alpha\n",
    );
    let empty = f.file("empty.csv", b"");
    let no_service_column = f.file(
        "no-service-column.csv",
        b"cidr,name\n198.51.100.0/24,alpha\n",
    );
    let no_cidr_column = f.file(
        "no-cidr-column.csv",
        b"address,service\n198.51.100.0/24,alpha\n",
    );
    let binary = f.file(
        "garbage.bin",
        &[0x00, 0xff, 0xfe, 0x80, 0x81, 0xc3, 0x28, 0x0a, 0x9f],
    );
    let watch_33 = f.file(
        "watch.txt",
        b"# watched\n175.45.176.0/22\n175.45.176.0/33\n",
    );
    let plain_list = f.file(
        "plain.txt",
        b"# one service\n203.0.113.0/24\n203.0.113.9/24\n",
    );
    let good_list = f.file("good.txt", b"203.0.113.0/24\n");
    let bad_netmask = f.file(
        "bad-netmask.txt",
        b"# firewall style\n175.45.176.0 255.0.255.0\n",
    );
    let length_after_address = f.file("length.txt", b"175.45.176.0 22\n");
    let bad_exclude = f.file("exclude.csv", b"cidr,name\n104.16.0.1/12,cloudflare\n");
    // A classic pcap header and no frames; the same file by a second path.
    let good_pcap = f.file(
        "one.pcap",
        b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00\0\0\0\0\0\0\0\0\xff\xff\0\0\x01\0\0\0",
    );
    let good_pcap_again = f.path("./one.pcap");
    let good_pcap_hard_link = f.path("hard-link.pcap");
    std::fs::hard_link(&good_pcap, &good_pcap_hard_link).expect("a hard link");
    let watched_endpoint = f.file("inside.csv", b"cidr,service\n175.45.177.0/24,alpha\n");
    let no_prefixes = f.file("emptied.txt", b"# watched ranges\n\n");
    // Classic Mac line breaks (bare CR), as some spreadsheet exports write.
    let mac_lines = f.file(
        "mac.txt",
        b"175.45.176.0/24\r175.45.177.0/24\r175.45.178.7/24\r",
    );
    let hosting = f.file(
        "hosting.csv",
        b"cidr,name\n104.16.0.0/13,CDN\n104.16.0.1/12,CDN\n",
    );
    let short_key = f.file("short.key", b"short");
    let good_key = f.file("good.key", &[7u8; 32]);
    let text = f.file("notes.txt", b"hello, not JSON and not a capture\n");
    let not_a_report = f.file("not-a-report.json", br#"{"not": "a report"}"#);
    let missing = f.path("missing.csv");
    let folder = f.path("a-folder");
    let out_pcap = f.path("out.pcap");
    let state_file = f.path("a-folder/.classifier-state.json");
    let marker_file = f.path("a-folder/.classifier-written");
    let dangling = f.path("dangling");
    let dangling_target = f.path("nowhere");
    std::os::unix::fs::symlink(&dangling_target, &dangling).expect("a dangling link");

    let host_bits_message = format!(
        "classifier: {host_bits}: line 3: host bits set in 198.51.101.7/24 (did you mean 198.51.101.0/24?)"
    );
    vec![
        // Endpoint feeds, as `run` reads them (it checks the interface
        // first: loopback exists everywhere).
        run_case(
            f,
            &["--endpoints", &bad_cidr],
            1,
            &format!("classifier: {bad_cidr}: line 3: bad CIDR \"198.51.101.0/2x\""),
            &bad_cidr,
        ),
        run_case(
            f,
            &["--endpoints", &host_bits],
            1,
            &host_bits_message,
            &host_bits,
        ),
        run_case(
            f,
            &["--endpoints", &five_octets],
            1,
            &format!("classifier: {five_octets}: line 3: bad CIDR \"198.51.101.1.5/32\""),
            &five_octets,
        ),
        run_case(
            f,
            &["--endpoints", &slash_33],
            1,
            &format!("classifier: {slash_33}: line 3: bad CIDR \"198.51.101.0/33\""),
            &slash_33,
        ),
        run_case(
            f,
            &["--endpoints", &bad_v6],
            1,
            &format!("classifier: {bad_v6}: line 3: bad CIDR \"2001:db8::zz/64\""),
            &bad_v6,
        ),
        run_case(
            f,
            &["--endpoints", &v6_too_long],
            1,
            &format!("classifier: {v6_too_long}: line 3: bad CIDR \"2001:db8::/129\""),
            &v6_too_long,
        ),
        run_case(
            f,
            &["--endpoints", &not_an_address],
            1,
            &format!("classifier: {not_an_address}: line 3: unknown address family in \"banana\""),
            &not_an_address,
        ),
        run_case(
            f,
            &["--endpoints", &no_service_value],
            1,
            &format!("classifier: {no_service_value}: line 3: missing service"),
            &no_service_value,
        ),
        run_case(
            f,
            &["--endpoints", &bad_service],
            1,
            &format!("classifier: {bad_service}: line 3: bad service name \"Hot Spot\""),
            &bad_service,
        ),
        run_case(
            f,
            &["--endpoints", &long_service],
            1,
            &format!("classifier: {long_service}: line 3: bad service name"),
            &long_service,
        ),
        run_case(
            f,
            &["--endpoints", &after_blanks],
            1,
            &format!("classifier: {after_blanks}: line 6: host bits set"),
            &after_blanks,
        ),
        run_case(
            f,
            &["--endpoints", &empty],
            1,
            &format!("classifier: {empty}: the header has no \"cidr\" column"),
            &empty,
        ),
        run_case(
            f,
            &["--endpoints", &no_service_column],
            1,
            &format!("classifier: {no_service_column}: the header has no \"service\" column"),
            &no_service_column,
        ),
        run_case(
            f,
            &["--endpoints", &no_cidr_column],
            1,
            &format!("classifier: {no_cidr_column}: the header has no \"cidr\" column"),
            &no_cidr_column,
        ),
        run_case(
            f,
            &["--endpoints", &missing],
            1,
            &format!("classifier: {missing}: cannot read: "),
            &missing,
        ),
        run_case(
            f,
            &["--endpoints", &folder],
            1,
            &format!("classifier: {folder}: cannot read: "),
            &folder,
        ),
        run_case(
            f,
            &["--endpoints", &binary],
            1,
            &format!(
                "classifier: {binary}: line 1: byte 0xFF, the line's byte 2, is not UTF-8 (save the file as UTF-8)"
            ),
            &binary,
        ),
        // Watched prefixes.
        run_case(
            f,
            &["--watch-file", &watch_33],
            1,
            &format!("classifier: {watch_33}: line 3: bad CIDR \"175.45.176.0/33\""),
            &watch_33,
        ),
        run_case(
            f,
            &["--watch-file", &missing],
            1,
            &format!("classifier: {missing}: cannot read: "),
            &missing,
        ),
        run_case(
            f,
            &["--watch-file", &folder],
            1,
            &format!("classifier: {folder}: cannot read: "),
            &folder,
        ),
        run_case(
            f,
            &["--watch", "banana"],
            1,
            "classifier: --watch banana: unknown address family",
            "--watch banana",
        ),
        run_case(
            f,
            &["--watch", "2001:db8::/129"],
            1,
            "classifier: --watch 2001:db8::/129: bad CIDR",
            "--watch 2001:db8::/129",
        ),
        // Flags and values.
        run_case(
            f,
            &["--bogus"],
            2,
            "error: unexpected argument '--bogus' found",
            "--bogus",
        ),
        run_case(
            f,
            &["--interval", "0s"],
            2,
            "error: invalid value '0s' for '--interval <INTERVAL>': must be longer than zero",
            "--interval",
        ),
        run_case(
            f,
            &["--interval", "1ns"],
            2,
            "error: invalid value '1ns' for '--interval <INTERVAL>': must be at least 10ms (a shorter one keeps a CPU busy draining)",
            "--interval",
        ),
        run_case(
            f,
            &["--ipfix-interval", "1ms"],
            2,
            "error: invalid value '1ms' for '--ipfix-interval <D>': must be at least 100ms (a shorter one keeps a CPU busy exporting)",
            "--ipfix-interval",
        ),
        case(
            &["stats", "--watch", "0.000001"],
            2,
            "error: invalid value '0.000001' for '--watch <SECS>': must be at least 0.1 and at most 86400 seconds",
            "--watch",
        ),
        run_case(
            f,
            &["--snapshot-interval", "1.5s"],
            2,
            "error: invalid value '1.5s' for '--snapshot-interval <D>': must be whole seconds",
            "--snapshot-interval",
        ),
        run_case(
            f,
            &["--sensor-name", "edge/1"],
            2,
            "error: invalid value 'edge/1' for '--sensor-name <NAME>': expected 1 to 64 letters",
            "--sensor-name",
        ),
        run_case(
            f,
            &["--metrics-addr", "nowhere"],
            2,
            "error: invalid value 'nowhere' for '--metrics-addr <ADDR|off>'",
            "--metrics-addr",
        ),
        run_case(
            f,
            &["--flow-cache-slots", "0"],
            2,
            "error: invalid value '0' for '--flow-cache-slots <FLOW_CACHE_SLOTS>'",
            "--flow-cache-slots",
        ),
        // Zero where zero would quietly do nothing.
        run_case(
            f,
            &["--flow-capacity", "0"],
            2,
            "error: invalid value '0' for '--flow-capacity <FLOW_CAPACITY>'",
            "--flow-capacity",
        ),
        run_case(
            f,
            &["--learn-ttl", "0s"],
            2,
            "error: invalid value '0s' for '--learn-ttl <DURATION>': must be longer than zero",
            "--learn-ttl",
        ),
        run_case(
            f,
            &["--capture-rate", "0"],
            2,
            "error: invalid value '0' for '--capture-rate <R>'",
            "--capture-rate",
        ),
        run_case(
            f,
            &["--capture-per-flow", "0"],
            2,
            "error: invalid value '0' for '--capture-per-flow <N>'",
            "--capture-per-flow",
        ),
        case(
            &["pcap", "capture.pcap", "--flow-capacity", "0"],
            2,
            "error: invalid value '0' for '--flow-capacity <FLOW_CAPACITY>'",
            "--flow-capacity",
        ),
        run_case(
            f,
            &["--pseudonymize-key", "/dev/urandom"],
            1,
            "classifier: pseudonymize key /dev/urandom: a device or folder, not a key file",
            "/dev/urandom",
        ),
        run_case(
            f,
            &["--watch-file", &bad_netmask],
            1,
            &format!(
                "classifier: {bad_netmask}: line 2: bad netmask 255.0.255.0 after 175.45.176.0"
            ),
            &bad_netmask,
        ),
        run_case(
            f,
            &["--watch-file", &length_after_address],
            1,
            &format!(
                "classifier: {length_after_address}: line 1: \"22\" after 175.45.176.0 is neither a dotted netmask nor a label"
            ),
            &length_after_address,
        ),
        run_case(
            f,
            &["--learn-exclude", &bad_exclude],
            1,
            &format!(
                "classifier: {bad_exclude}: line 2: host bits set in 104.16.0.1/12 (did you mean 104.16.0.0/12?)"
            ),
            &bad_exclude,
        ),
        run_case(
            f,
            &["--watch-file", &no_prefixes],
            1,
            &format!(
                "classifier: {no_prefixes}: no prefixes (only blank lines or comments): nothing would be watched"
            ),
            &no_prefixes,
        ),
        run_case(
            f,
            &["--watch-file", &mac_lines],
            1,
            &format!(
                "classifier: {mac_lines}: line 3: host bits set in 175.45.178.7/24 (did you mean 175.45.178.0/24?)"
            ),
            &mac_lines,
        ),
        run_case(
            f,
            &["--pseudonymize-key", &good_key, "--capture-dir", "/tmp"],
            1,
            "classifier: --capture-dir with --pseudonymize-key: captures hold real addresses",
            "--capture-raw-addresses",
        ),
        run_case(
            f,
            &["--capture-bytes", "300"],
            2,
            "error: invalid value '300' for '--capture-bytes <N>'",
            "--capture-bytes",
        ),
        run_case(
            f,
            &["--pseudonymize-key", &short_key],
            1,
            &format!("classifier: pseudonymize key {short_key}: 5 bytes; use at least 16"),
            &short_key,
        ),
        run_case(
            f,
            &["--pseudonymize-key", &missing],
            1,
            &format!("classifier: pseudonymize key {missing}: "),
            &missing,
        ),
        run_case(
            f,
            &["--pseudonymize-key"],
            2,
            "error: a value is required for '--pseudonymize-key <FILE>'",
            "--pseudonymize-key",
        ),
        // `classifier report`.
        case(
            &["report", &missing],
            1,
            &format!("classifier: {missing}: cannot read: "),
            &missing,
        ),
        case(
            &["report", &text],
            1,
            &format!("classifier: {text}: not a valid report: "),
            &text,
        ),
        case(
            &["report", &not_a_report],
            1,
            &format!("classifier: {not_a_report}: not a valid report: missing field `schema`"),
            &not_a_report,
        ),
        case(
            &["report", &folder],
            1,
            &format!("classifier: no snapshot files (classifier-*.json) found in {folder}"),
            &folder,
        ),
        case(
            &["report", &folder, "-o", &state_file],
            1,
            &format!(
                "classifier: -o {state_file}: .classifier-state.json is the name of a snapshot folder's state file, which the daemon reads; choose another file"
            ),
            &state_file,
        ),
        case(
            &["report", &folder, "-o", &marker_file],
            1,
            &format!(
                "classifier: -o {marker_file}: .classifier-written is the name of a snapshot folder's marker file, which the daemon reads; choose another file"
            ),
            &marker_file,
        ),
        case(
            &["report", &not_a_report, "--from", "yesterday"],
            1,
            "classifier: --from \"yesterday\": expected an RFC 3339 time",
            "--from",
        ),
        // `classifier pcap` opens every file before loading anything.
        case(
            &["pcap", &missing],
            1,
            &format!("classifier: {missing}: cannot read: "),
            &missing,
        ),
        case(
            &["pcap", &text],
            1,
            &format!("classifier: {text}: neither pcap nor pcapng (it starts with 68 65 6c 6c)"),
            &text,
        ),
        case(
            &["pcap", &empty],
            1,
            &format!("classifier: {empty}: neither pcap nor pcapng (the file is empty)"),
            &empty,
        ),
        case(
            &["pcap", &folder],
            1,
            &format!("classifier: {folder}: cannot read: "),
            &folder,
        ),
        case(
            &["pcap", &good_pcap, &good_pcap_again],
            1,
            &format!(
                "classifier: {good_pcap_again}: the same file as {good_pcap}: its frames would be counted twice"
            ),
            &good_pcap_again,
        ),
        case(
            &["pcap", &good_pcap, &good_pcap_hard_link],
            1,
            &format!(
                "classifier: {good_pcap_hard_link}: the same file as {good_pcap}: its frames would be counted twice"
            ),
            &good_pcap_hard_link,
        ),
        case(
            &[
                "pcap",
                &good_pcap,
                "--endpoints",
                &watched_endpoint,
                "--pseudonymize-key",
                &good_key,
            ],
            1,
            &format!(
                "classifier: --pseudonymize-key: {watched_endpoint}: line 2: the endpoint 175.45.177.0/24 (alpha) overlaps the watched 175.45.176.0/22: its addresses would appear as endpoints without pseudonyms"
            ),
            "175.45.177.0/24",
        ),
        case(
            &["pcap", &text, "--watch-file", &no_prefixes],
            1,
            &format!("classifier: {no_prefixes}: no prefixes"),
            &no_prefixes,
        ),
        case(
            &["pcap", &text, "--endpoints", &host_bits],
            1,
            &host_bits_message,
            &host_bits,
        ),
        // A snapshot folder that cannot be made, refused before loading.
        run_case(
            f,
            &["--snapshot-dir", &text],
            1,
            &format!("classifier: snapshot folder {text}: a file, not a folder"),
            &text,
        ),
        case(
            &["pcap", &good_pcap, "--snapshot-dir", &text],
            1,
            &format!("classifier: snapshot folder {text}: a file, not a folder"),
            &text,
        ),
        case(
            &[
                "pcap",
                &good_pcap,
                "--snapshot-dir",
                &format!("{text}/hourly"),
            ],
            1,
            &format!("classifier: snapshot folder {text}/hourly: {text} is a file, not a folder"),
            &text,
        ),
        case(
            &["pcap", &good_pcap, "--snapshot-dir", &dangling],
            1,
            &format!(
                "classifier: snapshot folder {dangling}: a symbolic link to {dangling_target}, which does not exist"
            ),
            &dangling,
        ),
        // `classifier generate` and `classifier stats`.
        case(
            &["generate", "--pcap", &out_pcap, "--endpoints", &host_bits],
            1,
            &host_bits_message,
            &host_bits,
        ),
        case(
            &["generate", "--seed", "1"],
            2,
            "error: the following required arguments were not provided",
            "--iface",
        ),
        case(
            &["stats", "--watch", "0"],
            2,
            "error: invalid value '0' for '--watch <SECS>'",
            "--watch",
        ),
        // `classifier feeds check`: the same refusals as `run`, and its own.
        case(
            &["feeds", "check", &host_bits],
            1,
            &host_bits_message,
            &host_bits,
        ),
        case(
            &["feeds", "check", "--endpoints", &empty],
            1,
            &format!("classifier: {empty}: the header has no \"cidr\" column"),
            &empty,
        ),
        case(
            &[
                "feeds",
                "check",
                "--list",
                &plain_list,
                "--service",
                "alpha",
            ],
            1,
            &format!("classifier: {plain_list}: line 3: host bits set in 203.0.113.9/24"),
            &plain_list,
        ),
        case(
            &[
                "feeds",
                "check",
                "--list",
                &good_list,
                "--service",
                "Hot Spot",
            ],
            1,
            "classifier: --service: bad service name \"Hot Spot\"",
            "--service",
        ),
        case(
            &[
                "feeds",
                "check",
                "--list",
                &good_list,
                "--list",
                &good_list,
                "--service",
                "alpha",
            ],
            1,
            "classifier: --list and --service pair up in order: 2 --list but 1 --service",
            "--list",
        ),
        case(
            &["feeds", "check", "--list", &good_list],
            2,
            "error: the following required arguments were not provided",
            "--service",
        ),
        case(
            &["feeds", "check", "--against", &missing],
            1,
            &format!("classifier: {missing}: cannot read: "),
            &missing,
        ),
        case(
            &["feeds", "check", "--against", &no_service_column],
            1,
            &format!("classifier: {no_service_column}: the header has no \"service\" column"),
            &no_service_column,
        ),
        case(
            &["feeds", "check", "--shared-hosting", &hosting],
            1,
            &format!("classifier: {hosting}: line 3: host bits set in 104.16.0.1/12"),
            &hosting,
        ),
        case(
            &["feeds", "check", "--shared-hosting", &binary],
            1,
            &format!("classifier: {binary}: line 1: byte 0xFF, the line's byte 2, is not UTF-8"),
            &binary,
        ),
        case(
            &["feeds", "check", "--watch-file", &watch_33],
            1,
            &format!("classifier: {watch_33}: line 3: bad CIDR"),
            &watch_33,
        ),
        case(
            &["feeds", "check", "--endpoint-capacity-v4", "100"],
            1,
            "classifier: bundled:data/vpn-endpoints.csv: the endpoint feed has 31691 v4 prefixes but the capacity is 100 (raise --endpoint-capacity-v4)",
            "bundled:data/vpn-endpoints.csv",
        ),
        case(
            &["feeds", "check", &good_list],
            1,
            &format!("classifier: {good_list}: the header has no \"cidr\" column"),
            &good_list,
        ),
        case(
            &["feeds", "check", "--broad-prefix", "33"],
            2,
            "error: invalid value '33' for '--broad-prefix <LEN>'",
            "--broad-prefix",
        ),
        case(
            &["feeds", "check", "--min-kept", "2"],
            2,
            "error: invalid value '2' for '--min-kept <SHARE>': must be more than 0 and at most 1",
            "--min-kept",
        ),
        case(
            &["feeds", "check", "--format", "yaml"],
            2,
            "error: invalid value 'yaml' for '--format <FORMAT>'",
            "--format",
        ),
        case(
            &["feeds", "verify"],
            2,
            "error: unrecognized subcommand 'verify'",
            "verify",
        ),
    ]
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_input() {
    let fixtures = Fixtures::new("table");
    let cases = cases(&fixtures);
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in &cases {
        let output = classifier(&case.args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_line = stderr.lines().next().unwrap_or("");
        // The message: our one line, or clap's lines before its usage.
        let message = stderr.split("\nUsage:").next().unwrap_or("");
        let mut problems = Vec::new();
        if output.status.code() != Some(case.code) {
            problems.push(format!(
                "exit code {:?}, want {}",
                output.status.code(),
                case.code
            ));
        }
        if !first_line.starts_with(&case.starts_with) {
            problems.push(format!("want it to start with {:?}", case.starts_with));
        }
        if !message.contains(&case.names) {
            problems.push(format!("does not name {:?}", case.names));
        }
        // Clap adds its usage lines to a usage error; ours are one line.
        if case.code == 1 && stderr.lines().count() != 1 {
            problems.push("not one line".into());
        }
        if stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        if !output.stdout.is_empty() {
            problems.push("wrote to stdout".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{:?}: {}\n  stderr: {stderr}",
                case.args,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn feeds_check_warnings_fail_only_with_strict() {
    let fixtures = Fixtures::new("strict");
    let feed = fixtures.file(
        "broad.csv",
        b"cidr,service\n10.0.0.0/8,alpha\n198.51.100.0/24,beta\n",
    );
    let output = classifier(&["feeds".into(), "check".into(), feed.clone()]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(
        report.contains("broad-prefix: alpha: 1 prefix shorter than /12 (IPv4) or /32 (IPv6): 10.0.0.0/8 (16,777,216 addresses)"),
        "{report}"
    );

    let output = classifier(&["feeds".into(), "check".into(), "--strict".into(), feed]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "classifier: 1 feed warning(s) and --strict (see the report's warnings)\n"
    );
    assert!(
        !output.stdout.is_empty(),
        "the report is printed before the refusal"
    );
}

#[test]
fn feeds_check_reads_the_bundled_feed_by_default() {
    let output = classifier(&[
        "feeds".into(),
        "check".into(),
        "--format".into(),
        "json".into(),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["schema"], "classifier.feedcheck.v1");
    assert_eq!(
        report["inputs"][0]["name"],
        "bundled:data/vpn-endpoints.csv"
    );
    // The feed's 26, and psiphon, which only the bundled domain feed names
    // (it has no public address list).
    assert_eq!(report["capacity"]["services"], 27);
    assert_eq!(report["capacity"]["domain_only_services"], 1);
    assert_eq!(report["conflicts"].as_array().map(Vec::len), Some(9));
}

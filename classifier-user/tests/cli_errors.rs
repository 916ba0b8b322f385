//! The CLI over a table of bad inputs: each is one clear line on stderr that
//! names the input, exit code 2 for usage errors (clap) and 1 for bad
//! files or interfaces, no panic, nothing on stdout. These fail before
//! anything touches the kernel, so they need no root.

use std::{path::PathBuf, process::Command};

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("classifier-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let bad_feed = temp_file(
        "bad.csv",
        "cidr,service\n198.51.100.0/24,alpha\n198.51.100.7/24,beta\n",
    );
    let no_service = temp_file("noservice.csv", "cidr,name\n198.51.100.0/24,alpha\n");
    let bad_watch = temp_file("watch.txt", "# watched\n175.45.176.0/22\n175.45.176.0/33\n");
    let bad_feed = bad_feed.display().to_string();
    let no_service = no_service.display().to_string();
    let bad_watch = bad_watch.display().to_string();
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["run", "--iface", "lo", "--endpoints", &bad_feed],
            1,
            format!(
                "classifier: {bad_feed}: line 3: host bits set in 198.51.100.7/24 (did you mean 198.51.100.0/24?)"
            ),
        ),
        (
            vec!["run", "--iface", "lo", "--endpoints", &no_service],
            1,
            format!("classifier: {no_service}: the header has no \"service\" column"),
        ),
        (
            vec![
                "run",
                "--iface",
                "lo",
                "--endpoints",
                "/nonexistent/feed.csv",
            ],
            1,
            "classifier: /nonexistent/feed.csv: cannot read: No such file or directory".into(),
        ),
        (
            vec!["run", "--iface", "lo", "--watch-file", &bad_watch],
            1,
            format!("classifier: {bad_watch}: line 3: bad CIDR \"175.45.176.0/33\""),
        ),
        (
            vec!["run", "--iface", "lo", "--watch", "175.45.176.0/33"],
            1,
            "classifier: --watch 175.45.176.0/33: bad CIDR \"175.45.176.0/33\"".into(),
        ),
        (
            vec!["run", "--iface", "nosuchif0"],
            1,
            "classifier: interface nosuchif0: no such interface".into(),
        ),
        (
            vec!["run", "--iface", "lo", "--interval", "soon"],
            2,
            "error: invalid value 'soon' for '--interval <INTERVAL>'".into(),
        ),
        (
            vec!["run", "--iface", "lo", "--xdp-mode", "offload"],
            2,
            "error: invalid value 'offload' for '--xdp-mode <XDP_MODE>'".into(),
        ),
        (
            vec!["run"],
            2,
            "error: the following required arguments were not provided".into(),
        ),
    ];
    for (args, code, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_classifier"))
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run classifier");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&expected),
            "{args:?}:\n got: {stderr}\nwant: {expected}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: stdout not empty");
    }
}

#[test]
fn help_explains_the_run_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_classifier"))
        .args(["run", "--help"])
        .output()
        .expect("run classifier");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--iface",
        "--xdp-mode",
        "--watch",
        "--watch-file",
        "--endpoints",
        "--interval",
        "--report-format",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("175.45.176.0/22"));
}

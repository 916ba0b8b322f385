//! Project tasks: `setup` (toolchain pieces), `build` (eBPF object and the
//! release binary), `lint`, and `test` (everything, unit and root-only
//! integration tests). Every task runs `setup` first and is idempotent.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

mod demo;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, set up and test the classifier")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs: nightly's rust-src and a
    /// bpf-linker built against nightly's own LLVM.
    Setup,
    /// Build the eBPF object and `target/release/classifier` with it embedded.
    Build,
    /// Build, then run `classifier` with the given arguments (as root), e.g.
    /// `cargo xtask run -- run --iface eth1`.
    Run {
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings on every crate.
    Lint,
    /// Measure the program's per-packet cost against an empty XDP program
    /// (needs root); writes BENCHMARKS.md.
    Bench {
        /// A short smoke run (CI): few repeats, one round, small feeds.
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The main job on a built-in default (needs root): two namespaces and
    /// a veth pair, `classifier run` with the bundled feed on one side, a
    /// traffic mix shaped like the 2024 study from the other, live
    /// counters, snapshots into ./demo-out/, and the report, checked
    /// against the mix. Removes everything it created.
    Demo {
        /// How long the traffic runs.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// The generator's seed (the same seed, the same frames).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Differential fuzzing, longer than the integration tests' fixed run
    /// (needs root): random and mutated frames through the XDP program and
    /// an independent etherparse-based oracle (tests/tests/fuzz.rs).
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 2_000_000)]
        frames: u64,
        /// The generator's seed (default: the test's fixed seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run every test: lint, unit tests, then the integration tests that
    /// load the program into the kernel (needs root).
    Test {
        /// Extra arguments for the integration test binary (e.g. a filter).
        #[arg(last = true)]
        filter: Vec<String>,
    },
}

const NIGHTLY: &str = "nightly";
const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup(),
        Task::Build => build().map(|_| ()),
        Task::Run { args } => {
            build()?;
            let binary = workspace_root().join("target/release/classifier");
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Lint => {
            build()?;
            lint()
        }
        Task::Test { filter } => test(&filter),
        Task::Fuzz { frames, seed } => fuzz(frames, seed),
        Task::Bench { quick, json } => bench(quick, json.as_deref()),
        Task::Demo { duration, seed } => {
            build()?;
            ensure!(
                is_root(),
                "the demo creates namespaces and loads BPF: run it as root"
            );
            demo::demo(
                &workspace_root().join("target/release/classifier"),
                duration,
                seed,
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    )
}

/// A command with the outer cargo's toolchain choice removed, so `rustup
/// run nightly` and plain `cargo` pick their own.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for variable in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(variable);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cargo_home().join("bin")];
    paths.extend(env::split_paths(&path));
    command.env(
        "PATH",
        env::join_paths(paths).expect("PATH entries are valid"),
    );
    command
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---- setup -----------------------------------------------------------------

fn setup() -> Result<()> {
    let toolchains = output(command("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        run(command("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))?;
    }
    // rust-src to build `core` for the BPF target; clippy and rustfmt for
    // `lint` on both toolchains.
    for (toolchain, wanted) in [
        (NIGHTLY, &["rust-src", "clippy"][..]),
        ("stable", &["clippy", "rustfmt"][..]),
    ] {
        let installed = output(command("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))?;
        for component in wanted {
            if !installed.lines().any(|line| line.starts_with(component)) {
                run(command("rustup").args([
                    "component",
                    "add",
                    component,
                    "--toolchain",
                    toolchain,
                ]))?;
            }
        }
    }
    ensure_bpf_linker()
}

/// bpf-linker must use the LLVM of the nightly rustc that emits the bitcode.
/// It is built against that toolchain's own libLLVM (no system LLVM needed)
/// and remembered in a stamp file naming the toolchain it was built for.
fn ensure_bpf_linker() -> Result<()> {
    let version = output(command("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV prints no LLVM version")?
        .to_string();
    let sysroot = output(command("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());

    let prefix = cargo_home().join("classifier-llvm");
    let stamp = prefix.join("bpf-linker.stamp");
    let wanted = format!(
        "llvm-{llvm_major} {}",
        version.lines().next().unwrap_or_default()
    );
    let linker = cargo_home().join("bin").join("bpf-linker");
    if linker.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }

    // The versioned libLLVM of the toolchain, e.g. libLLVM.so.22.1-rust-1.97.0-nightly.
    let lib_dir = sysroot.join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM.so.{llvm_major}* in {}", lib_dir.display()))?;
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(libllvm.file_name().expect("a file")),
    ] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    run(command("cargo")
        .args(["install", "bpf-linker", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .arg("--root")
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, wanted)?;
    Ok(())
}

// ---- build -------------------------------------------------------------------

/// Builds the eBPF object (copied to `target/ebpf/` only when its bytes
/// change, so cargo never embeds a stale one) and the release binary.
fn build() -> Result<PathBuf> {
    setup()?;
    let root = workspace_root();
    // BTF with function info for every function, the standard library's
    // included, so the program can also load as an extension of libxdp's
    // dispatcher (docs/xdp-dispatcher.md).
    run(command("rustup")
        .args(["run", NIGHTLY, "cargo", "build", "--release"])
        .args(["--package", "classifier-ebpf", "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core"])
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C link-arg=--btf",
        )
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .current_dir(&root))?;
    let built = root
        .join("target")
        .join(EBPF_TARGET)
        .join("release/classifier-ebpf");
    let object = root.join("target/ebpf/classifier-ebpf.o");
    let bytes =
        fs::read(&built).with_context(|| format!("no eBPF object at {}", built.display()))?;
    if fs::read(&object).ok().as_deref() != Some(bytes.as_slice()) {
        fs::create_dir_all(object.parent().expect("has a parent"))?;
        fs::write(&object, &bytes)?;
    }
    run(command("cargo")
        .args(["build", "--release", "--package", "classifier-user"])
        .env("CLASSIFIER_EBPF_OBJECT", &object)
        .current_dir(&root))?;
    Ok(object)
}

// ---- lint and test ---------------------------------------------------------------

fn lint() -> Result<()> {
    let root = workspace_root();
    run(command("cargo")
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(&root))?;
    run(command("cargo")
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "classifier-ebpf",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"])
        .current_dir(&root))?;
    run(command("rustup")
        .args(["run", NIGHTLY, "cargo", "clippy", "--release"])
        .args(["--package", "classifier-ebpf", "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir(&root))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` is a file in one of PATH's folders.
fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Makes sure `program` is on PATH, installing the Debian `package` that
/// provides it if not (needs root). Refreshes the package lists only if the
/// first install fails.
fn ensure_tool(program: &str, package: &str) -> Result<()> {
    if on_path(program) {
        return Ok(());
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install()
        .or_else(|_| run(Command::new("apt-get").arg("update")).and_then(|()| install()))
        .with_context(|| {
            format!("{program} is missing and installing Debian's {package} package failed")
        })?;
    ensure!(
        on_path(program),
        "installed Debian's {package} package, but {program} is still not on PATH"
    );
    Ok(())
}

fn test(filter: &[String]) -> Result<()> {
    let object = build()?;
    lint()?;
    if is_root() {
        // promtool checks the metrics exposition, in a unit test and in
        // the integration tests; installing it needs root.
        ensure_tool("promtool", "prometheus")?;
        // Headless Chromium renders the HTML report in its test.
        ensure_tool("chromium", "chromium")?;
        // nfcapd and nfdump read the IPFIX export back in its test.
        ensure_tool("nfcapd", "nfdump")?;
        // tshark reads the evidence captures back in their test.
        ensure_tool("tshark", "tshark")?;
        // xdp-filter shares an interface with us, and is refused, in the
        // attach and dispatcher tests.
        ensure_tool("xdp-filter", "xdp-tools")?;
        // bpftool dumps the dispatcher object's BTF in the dispatcher test.
        ensure_tool("bpftool", "bpftool")?;
    }
    let root = workspace_root();
    run(command("cargo")
        .args([
            "test",
            "--workspace",
            "--exclude",
            "classifier-ebpf",
            "--exclude",
            "classifier-tests",
        ])
        .env("CLASSIFIER_EBPF_OBJECT", &object)
        .current_dir(&root))?;

    if !is_root() {
        if env::var("CI").is_ok_and(|v| v == "true") {
            bail!(
                "the integration tests load BPF programs and need root; CI must run them as root"
            );
        }
        eprintln!(
            "xtask: not root: the integration tests (they load BPF) are left out; run as root"
        );
        return Ok(());
    }
    // The benchmark is never a timed test; CI only checks that it runs and
    // that its figures are sane numbers.
    bench(true, None)?;
    let binary = root.join("target/release/classifier");
    run(command("cargo")
        .args(["test", "--package", "classifier-tests", "--tests", "--"])
        .args(["--test-threads=1"])
        .args(filter)
        .env("CLASSIFIER_EBPF_OBJECT", &object)
        .env("CLASSIFIER_BIN", &binary)
        .current_dir(&root))?;
    if filter.is_empty() {
        demo_check(&binary)?;
    }
    Ok(())
}

/// The fuzz test of the integration tests with `frames` frames (and
/// `seed`, if given) instead of its fixed run.
fn fuzz(frames: u64, seed: Option<u64>) -> Result<()> {
    let object = build()?;
    ensure!(is_root(), "fuzzing loads BPF programs and needs root");
    let root = workspace_root();
    let mut cargo = command("cargo");
    cargo
        .args(["test", "--package", "classifier-tests", "--test", "fuzz"])
        .args(["--", "--nocapture"])
        .env("CLASSIFIER_EBPF_OBJECT", &object)
        .env("CLASSIFIER_BIN", root.join("target/release/classifier"))
        .env("FUZZ_FRAMES", frames.to_string())
        .current_dir(&root);
    if let Some(seed) = seed {
        cargo.env("FUZZ_SEED", seed.to_string());
    }
    run(&mut cargo)
}

/// The demo as a test: short, non-interactive, its report checked against
/// the generated mix (by the demo itself), and nothing left behind.
fn demo_check(binary: &Path) -> Result<()> {
    let dir = env::temp_dir().join(format!("classifier-demo-check-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let previous = env::current_dir()?;
    env::set_current_dir(&dir)?;
    let result = demo::demo(binary, std::time::Duration::from_secs(8), 7);
    env::set_current_dir(previous)?;
    result.context("cargo xtask demo --duration 8s")?;
    ensure!(
        dir.join("demo-out").read_dir()?.count() > 1,
        "the demo wrote no snapshots"
    );
    let namespaces = output(command("ip").args(["netns", "list"]))?;
    ensure!(
        !namespaces.contains("clsdemo-"),
        "the demo left namespaces behind:\n{namespaces}"
    );
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    ensure!(
        !mounts.contains("classifier-demo-"),
        "the demo left a BPF filesystem mounted"
    );
    fs::remove_dir_all(&dir)?;
    eprintln!("xtask: the demo matched its mix and left nothing behind");
    Ok(())
}

fn bench(quick: bool, json: Option<&Path>) -> Result<()> {
    let object = build()?;
    ensure!(is_root(), "the benchmark loads BPF programs and needs root");
    let root = workspace_root();
    run(command("cargo")
        .args([
            "build",
            "--release",
            "--package",
            "classifier-tests",
            "--bin",
            "classifier-bench",
        ])
        .env("CLASSIFIER_EBPF_OBJECT", &object)
        .current_dir(&root))?;
    let mut bench = command(
        root.join("target/release/classifier-bench")
            .to_str()
            .expect("UTF-8 path"),
    );
    let mut shown = String::from("cargo xtask bench");
    if quick {
        bench.arg("--quick");
        shown.push_str(" --quick");
        // A smoke run must not overwrite the real figures.
        bench.args(["--output", "target/BENCHMARKS-quick.md"]);
    }
    if let Some(json) = json {
        bench.arg("--json").arg(json);
        shown.push_str(" --json FILE");
    }
    run(bench.args(["--command", &shown]).current_dir(&root))
}

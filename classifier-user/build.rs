//! Embeds the XDP object that `cargo xtask build` leaves in
//! `target/ebpf/classifier-ebpf.o` (or `$CLASSIFIER_EBPF_OBJECT`). Without it
//! the crate still builds, with an empty object the loader refuses, so IDEs,
//! `cargo check` and clippy work on any machine.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CLASSIFIER_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("CLASSIFIER_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../target/ebpf/classifier-ebpf.o"));
    println!("cargo:rerun-if-changed={}", object.display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let bytes = fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no XDP object at {}; the binary will refuse to load (run `cargo xtask build`)",
            object.display()
        );
    }
    let destination = out_dir.join("classifier-ebpf.o");
    if fs::read(&destination).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(&destination, &bytes).expect("write the embedded object");
    }
}

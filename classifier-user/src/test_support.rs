//! Helpers for unit tests.

use std::path::PathBuf;

/// A fresh folder under the system temp folder, removed when dropped.
pub struct TempFolder(pub PathBuf);

impl TempFolder {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("classifier-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp folder");
        Self(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A xorshift64 generator: reproducible pseudo-random numbers from `seed`
/// (not zero).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A flow key told apart by its port alone.
pub fn port_key(port: u16) -> classifier_common::FlowKey {
    classifier_common::FlowKey {
        port,
        ..bytemuck::Zeroable::zeroed()
    }
}

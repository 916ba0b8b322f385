//! `classifier report PATH…`: reads snapshot files, keeps those within
//! `--from`/`--to`, drops duplicates and overlaps, merges them into one
//! report, and checks the SHA-256 chain with `--verify`.

use crate::cli::ReportArgs;

/// `classifier report`: prints the merged report (or the chain check).
pub fn report(args: &ReportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = args;
    Err("not yet implemented".into())
}

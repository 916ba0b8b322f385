//! `classifier stats`: live counters of a running sensor, read from the
//! maps `classifier run` pinned, from another process.

use crate::cli::StatsArgs;

pub fn stats(args: &StatsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = args;
    Err("not yet implemented".into())
}

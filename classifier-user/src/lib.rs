//! The classifier's userspace: feeds, loader, drain, report and the
//! commands that wire them together. `main.rs` only parses arguments.

pub mod bpf_sys;
pub mod capture;
pub mod cli;
pub mod dispatcher;
pub mod drain;
pub mod evidence;
pub mod feedcheck;
pub mod feeds;
pub mod flow_clock;
pub mod flow_records;
pub mod generate;
pub mod history;
pub mod html;
pub mod interface_xdp;
pub mod ipfix;
pub mod learn;
pub mod live;
pub mod loader;
pub mod metrics;
pub mod notify;
pub mod object_file;
pub mod pins;
pub mod privileges;
pub mod pseudonym;
pub mod recipe;
pub mod replay;
pub mod report;
pub mod run;
pub mod snapshot;
pub mod stats;
#[cfg(test)]
mod test_support;
pub mod testrun;
pub mod v4_table;

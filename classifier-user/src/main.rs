use std::process::ExitCode;

use clap::Parser;
use classifier_user::{
    cli::{Cli, Command},
    generate, history,
    loader::error_chain,
    replay, run, stats,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Reload(args) => stats::reload(&args),
        Command::Pcap(args) => replay::pcap(&args),
        Command::Generate(args) => generate::generate(&args),
        Command::Report(args) => history::report(&args),
        Command::Feeds(command) => classifier_user::feedcheck::feeds(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("classifier: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

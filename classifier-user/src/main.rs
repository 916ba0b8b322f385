use std::process::ExitCode;

use clap::Parser;
use classifier_user::{
    cli::{Cli, Command},
    loader::error_chain,
    run,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("classifier: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

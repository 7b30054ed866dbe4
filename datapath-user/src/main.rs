//! `datapath`: the agent and its command-line client (the commands are in `cli/`).

use clap::Parser;

mod cli;
mod walkthrough;

fn main() {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("DATAPATH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // Whatever needs a single-threaded process (entering the agent's node
    // namespace) happens before the runtime starts.
    let result = cli.before_runtime().and_then(|()| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(cli.run())
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

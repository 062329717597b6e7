//! `ferry-loadgen`: the load generator as a standalone binary (the same [`LoadgenArgs`] will back
//! `ferry loadgen`). Prints the summary; `--json` and `--plot` write files.

use clap::Parser;
use ferry_loadgen::LoadgenArgs;

#[derive(Parser, Debug)]
#[command(name = "ferry-loadgen", about = "Drive a ferry node over gRPC and report accepted/s, acked/s and latency")]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(ferry_loadgen::run(cli.args)));
    match result {
        Ok(report) => {
            print!("{}", report.summary());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

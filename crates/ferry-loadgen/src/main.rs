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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(ferry_loadgen::run(cli.args))?;
    print!("{}", report.summary());
    Ok(())
}

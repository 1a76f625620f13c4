//! `fencepost-bench`: runs the workloads of BENCH.md against fencepost and its peers (lock files,
//! etcd) and prints one JSON object per line and workload on stdout; progress and errors go to
//! stderr.

mod check;
mod cli;
mod history;
mod report;
mod systems;
mod workloads;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::cli::{Opts, SystemChoice};
use crate::report::{Line, ratio_lines};
use crate::workloads::Ctx;

// The clients share the two cores with the server under test; glibc's malloc costs them CPU
// the server could use (the server uses mimalloc too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let opts = Opts::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fencepost-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if runtime.block_on(run(opts)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every chosen system's workloads, one system at a time; true if all ran and were safe.
async fn run(opts: Opts) -> bool {
    let run_id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let mut all: Vec<Line> = Vec::new();
    let mut ok = true;
    for choice in opts.system.systems() {
        let sys = match systems::start(choice, &opts, &run_id).await {
            Ok(sys) => sys,
            Err(e) => {
                eprintln!("fencepost-bench: {choice:?}: {e:#}");
                ok = false;
                continue;
            }
        };
        let ctx = Ctx {
            sys,
            opts: opts.clone(),
            run_id: run_id.clone(),
        };
        for workload in opts.workloads() {
            eprintln!("fencepost-bench: {workload} on {}", ctx.sys.name());
            match workloads::run(&ctx, workload).await {
                Ok(lines) => {
                    for line in lines {
                        println!("{}", line.to_json());
                        ok &= line.safety == "ok" || line.safety == "n/a";
                        ok &= line.extra("errors").is_none();
                        all.push(line);
                    }
                }
                Err(e) => {
                    eprintln!("fencepost-bench: {workload} on {}: {e:#}", ctx.sys.name());
                    ok = false;
                }
            }
        }
    }
    if opts.system == SystemChoice::All {
        for ratio in ratio_lines(&all) {
            println!(
                "{}",
                serde_json::to_string(&ratio).expect("a ratio line always serializes")
            );
        }
    }
    ok
}

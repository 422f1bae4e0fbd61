//! `./build.sh demo`: replays the postmortem's surge without and with surgeguard, prints the
//! table and writes `dist/demo/summary.json` and `dist/demo/report.html`. `--live` and
//! `--fleet` are the other two demos (`dist/demo/live/`, `dist/demo/fleet/`).

use std::path::PathBuf;
use surgeguard_demo::cli::{self, Command, USAGE};
use surgeguard_demo::demo::{self, INTERRUPTED};
use surgeguard_demo::summary::Claim;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match cli::parse(&args, std::env::var("DATABASE_URL").ok()) {
        Ok(Command::Run(o)) => o,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let stopping = if options.fleet {
        "the Envoys, the storefront, Redis and the rate limit service"
    } else {
        "Envoy and the storefront"
    };
    let cancel = match surgeguard_demo::interrupt::install(stopping) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(1);
        }
    };
    if options.live {
        live(&options, &cancel);
        return;
    }
    if options.fleet {
        match surgeguard_demo::fleet::run(&options, &cancel) {
            Ok(d) => print_outcome(&d.table, &d.claims, &d.written),
            Err(e) => exit_with(&e),
        }
        return;
    }
    match demo::run(&options, &cancel) {
        Ok(d) => print_outcome(&d.table, &d.claims, &d.written),
        Err(e) => exit_with(&e),
    }
}

/// `--live`: one run over ECDS with a limit changed mid-run.
fn live(options: &cli::Options, cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    match surgeguard_demo::live::run(options, cancel) {
        Ok(d) => {
            let c = &d.change;
            println!();
            println!(
                "live change: {} at {} s (helper started at {:.2} s); Envoy {} it over ECDS: update_success {} -> {}, no restart (pid {})",
                c.what(),
                c.applied_s.map_or("-".into(), |t| format!("{t:.2}")),
                c.started_s,
                if c.accepted() { "accepted" } else { "did NOT accept" },
                c.update_success_before,
                c.update_success_after,
                d.envoy_pid,
            );
            if let Some(l) = &c.filter_log {
                println!("the filter logged: {l}");
            }
            print_outcome(&d.table, &d.claims, &d.written);
        }
        Err(e) => exit_with(&e),
    }
}

/// The table, each claim marked as holding or not, and the files written.
fn print_outcome(table: &str, claims: &[Claim], written: &[PathBuf]) {
    println!();
    print!("{table}");
    println!();
    for c in claims {
        let mark = if c.holds { "ok " } else { "NOT" };
        println!("[{mark}] {}: {}", c.claim, c.evidence);
    }
    println!();
    for p in written {
        println!("wrote {}", p.display());
    }
}

fn exit_with(e: &str) -> ! {
    if e == INTERRUPTED {
        eprintln!("demo: interrupted; every process the demo started is stopped");
        std::process::exit(130);
    }
    eprintln!("demo: {e}");
    std::process::exit(1);
}

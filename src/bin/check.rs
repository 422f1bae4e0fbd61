//! `surgeguard-check FILE`: validates a plugin configuration offline, with the same code and the
//! same messages as the module in Envoy. Exit 0 if valid, 1 if not, 2 on a usage error.
//!
//! FILE is the plugin JSON as Envoy receives it (`configuration` or Istio `pluginConfig`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--reference") {
        print!("{}", surgeguard::config::reference_markdown());
        return ExitCode::SUCCESS;
    }
    let [path] = args.as_slice() else {
        eprintln!("usage: surgeguard-check FILE | --reference");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{path}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    match surgeguard::config::parse(&bytes) {
        Ok(policy) => {
            println!(
                "{path}: valid ({} classes, {} rules, {} limits, mode {:?})",
                policy.classes.len(),
                policy.rules.len(),
                policy.limits.len(),
                policy.mode
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{path}: refused: {} problem(s)", errors.len());
            ExitCode::from(1)
        }
    }
}

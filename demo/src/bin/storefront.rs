//! The demo's storefront on its own, for trying surgeguard by hand:
//!   cargo run --release -p surgeguard-demo --bin storefront -- --port 8080
//!   $(./build.sh envoy) -c envoy/demo.yaml --concurrency 2
//! then send traffic to :10000 and watch `curl -s 127.0.0.1:8080/_db`.

use std::sync::atomic::Ordering;
use std::time::Duration;
use surgeguard_demo::storefront::{BackendSpec, Storefront, StorefrontConfig};

const USAGE: &str = "usage: storefront [--port 8080] [--pool 40] [--pool-wait-ms 1000] [--database-url URL]
(DATABASE_URL in the environment also selects a real PostgreSQL)";

fn parse(args: &[String]) -> Result<StorefrontConfig, String> {
    let mut c = StorefrontConfig { port: 8080, ..StorefrontConfig::default() };
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            c.backend = BackendSpec::Postgres(url);
        }
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--port" => c.port = num(value()?)? as u16,
            "--pool" => c.pool_size = num(value()?)?.clamp(1, 1000) as u32,
            "--pool-wait-ms" => c.pool_wait = Duration::from_millis(num(value()?)?.max(1)),
            "--database-url" => c.backend = BackendSpec::Postgres(value()?),
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(c)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("storefront: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let cancel = match surgeguard_demo::interrupt::install("the storefront") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("storefront: {e}");
            std::process::exit(1);
        }
    };
    let storefront = match Storefront::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("storefront: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "storefront on 127.0.0.1:{} (database: {}, pool of {}); GET /_db for connections in use; Ctrl-C stops",
        storefront.port,
        storefront.db.backend_name(),
        config.pool_size
    );
    while !cancel.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(storefront);
}

//! The demo's command line. Every option has a default that gives the postmortem replay in
//! about a minute; `DATABASE_URL` in the environment is the default of `--database-url`.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: ./build.sh demo [OPTIONS]

Replays the postmortem's traffic surge against a storefront whose database tier has a fixed
connection pool (and, halfway through the surge, a database that itself gets 3x slower), through
a real Envoy: without surgeguard, with it (envoy/demo.yaml), and with its in-flight limit
adaptive (no number sized from the database). Prints tables per traffic kind and writes
dist/demo/summary.json and dist/demo/report.html.

options:
  --duration SECONDS   traffic per run: a quarter calm, half surge, a quarter recovery [24]
  --surge FACTOR       the surge's rate as a multiple of the calm rate [5]
  --rate PER_S         the calm rate, requests per second [60]
  --pool N             database connection pool size [40]
  --pool-wait-ms MS    how long a request waits for a connection before it fails [1000]
  --seed N             seed of the traffic schedule (every run replays the same one) [1]
  --out DIR            where summary.json and report.html go
                       [dist/demo; dist/demo/live with --live; dist/demo/fleet with --fleet]
  --config FILE        the Envoy config with the filter [envoy/demo.yaml]
  --database-url URL   a real PostgreSQL instead of the embedded database model
                       [$DATABASE_URL]
  --live               instead: one run with surgeguard configured over ECDS (a temporary copy
                       of envoy/ecds/, starting from envoy/storefront.json), and halfway through
                       the surge the `storefront` bucket is changed live with
                       scripts/surgeguard-apply: no restart, no dropped connection
  --live-rate PER_S    with --live: the bucket's new tokens_per_second (and burst) [100]
  --fleet              instead: the storefront scaled out to 3 replicas behind 3 Envoys, one
                       database tier; the surge with per-Envoy limits (--config on every Envoy),
                       then with the same limit fleet-wide (envoy/fleet/: leased from
                       surgeguard-rls over a real Redis)
  --no-progress        no progress line
  -h, --help           this text";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub duration_s: f64,
    pub surge: f64,
    pub calm_rate_per_s: f64,
    pub pool_size: u32,
    pub pool_wait_ms: u64,
    pub seed: u64,
    pub out_dir: PathBuf,
    pub envoy_config: PathBuf,
    pub database_url: Option<String>,
    pub progress: bool,
    /// `--live`: one run over ECDS with a limit changed mid-run ([`crate::live`]).
    pub live: bool,
    /// The `storefront` bucket's new rate (and burst) in `--live` mode.
    pub live_rate_per_s: f64,
    /// `--fleet`: three replicas, per-Envoy against fleet-wide limits ([`crate::fleet`]).
    pub fleet: bool,
}

impl Default for Options {
    fn default() -> Options {
        let root = surgeguard_harness::repo_root();
        Options {
            duration_s: 24.0,
            surge: 5.0,
            calm_rate_per_s: 60.0,
            pool_size: 40,
            pool_wait_ms: 1000,
            seed: 1,
            out_dir: root.join("dist/demo"),
            envoy_config: root.join("envoy/demo.yaml"),
            database_url: None,
            progress: true,
            live: false,
            live_rate_per_s: 100.0,
            fleet: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Options),
    Help,
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: expected a number, got `{v}`"))
}

/// Parses the arguments (without the program name); `database_url_env` is `$DATABASE_URL`.
pub fn parse(args: &[String], database_url_env: Option<String>) -> Result<Command, String> {
    let mut o = Options { database_url: database_url_env.filter(|u| !u.is_empty()), ..Options::default() };
    let mut it = args.iter();
    let mut out_given = false;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{flag} needs a value"));
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--duration" => o.duration_s = number(flag, &value()?)?,
            "--surge" => o.surge = number(flag, &value()?)?,
            "--rate" => o.calm_rate_per_s = number(flag, &value()?)?,
            "--pool" => o.pool_size = number(flag, &value()?)?,
            "--pool-wait-ms" => o.pool_wait_ms = number(flag, &value()?)?,
            "--seed" => o.seed = number(flag, &value()?)?,
            "--out" => {
                o.out_dir = PathBuf::from(value()?);
                out_given = true;
            }
            "--config" => o.envoy_config = PathBuf::from(value()?),
            "--database-url" => o.database_url = Some(value()?),
            "--no-progress" => o.progress = false,
            "--live" => o.live = true,
            "--live-rate" => o.live_rate_per_s = number(flag, &value()?)?,
            "--fleet" => o.fleet = true,
            _ => return Err(format!("unknown option `{arg}` (try --help)")),
        }
    }
    if !(o.duration_s >= 4.0 && o.duration_s <= 3600.0) {
        return Err(format!("--duration: must be 4 to 3600 seconds, got {}", o.duration_s));
    }
    if !(o.surge >= 1.0 && o.surge <= 50.0) {
        return Err(format!("--surge: must be 1 to 50, got {}", o.surge));
    }
    if !(o.calm_rate_per_s > 0.0 && o.calm_rate_per_s <= 2000.0) {
        return Err(format!("--rate: must be > 0 and <= 2000, got {}", o.calm_rate_per_s));
    }
    if o.pool_size == 0 || o.pool_size > 1000 {
        return Err(format!("--pool: must be 1 to 1000, got {}", o.pool_size));
    }
    if !(o.live_rate_per_s >= 1.0 && o.live_rate_per_s <= 100_000.0) {
        return Err(format!("--live-rate: must be 1 to 100000, got {}", o.live_rate_per_s));
    }
    if o.pool_wait_ms == 0 {
        return Err("--pool-wait-ms: must be >= 1".into());
    }
    if o.live && o.fleet {
        return Err("--live and --fleet are two different demos: give one".into());
    }
    // Neither replaces the main demo's dist/demo/summary.json.
    if o.live && !out_given {
        o.out_dir = o.out_dir.join("live");
    }
    if o.fleet && !out_given {
        o.out_dir = o.out_dir.join("fleet");
    }
    Ok(Command::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn no_arguments_give_the_minute_long_replay() {
        let Command::Run(o) = parse(&[], None).unwrap() else { panic!("help") };
        assert_eq!((o.duration_s, o.surge, o.pool_size), (24.0, 5.0, 40));
        assert!(o.out_dir.ends_with("dist/demo"));
        assert_eq!(o.database_url, None);
        assert!(!o.live && !o.fleet, "the default demo is the side-by-side runs");
    }

    #[test]
    fn live_mode_takes_the_new_rate() {
        let Command::Run(o) = parse(&args("--live --live-rate 80"), None).unwrap() else { panic!("help") };
        assert!(o.live);
        assert_eq!(o.live_rate_per_s, 80.0);
        assert!(parse(&args("--live-rate 0"), None).unwrap_err().contains("--live-rate"));
    }

    #[test]
    fn fleet_mode_writes_beside_the_main_demo_and_excludes_live_mode() {
        let Command::Run(o) = parse(&args("--fleet"), None).unwrap() else { panic!("a run") };
        assert!(o.fleet && !o.live);
        assert!(o.out_dir.ends_with("dist/demo/fleet"));
        let Command::Run(o) = parse(&args("--fleet --out /tmp/f"), None).unwrap() else { panic!("a run") };
        assert_eq!(o.out_dir, PathBuf::from("/tmp/f"));
        assert!(parse(&args("--fleet --live"), None).unwrap_err().contains("--live and --fleet"));
    }

    #[test]
    fn options_take_their_value_after_a_space_or_an_equals_sign() {
        let Command::Run(o) = parse(&args("--duration 10 --surge=8 --no-progress --out /tmp/x"), None).unwrap() else {
            panic!("help")
        };
        assert_eq!((o.duration_s, o.surge, o.progress), (10.0, 8.0, false));
        assert_eq!(o.out_dir, PathBuf::from("/tmp/x"));
        let Command::Run(live) = parse(&args("--live"), None).unwrap() else { panic!("a run") };
        assert!(live.out_dir.ends_with("dist/demo/live"), "a live run keeps the two-run summary");
    }

    #[test]
    fn database_url_comes_from_the_environment_unless_given() {
        let env = Some("postgres://a@b/c".to_string());
        let Command::Run(o) = parse(&[], env.clone()).unwrap() else { panic!() };
        assert_eq!(o.database_url, env);
        let Command::Run(o) = parse(&args("--database-url postgres://x@y/z"), env).unwrap() else { panic!() };
        assert_eq!(o.database_url.as_deref(), Some("postgres://x@y/z"));
    }

    #[test]
    fn bad_options_are_errors_that_name_them() {
        assert!(parse(&args("--surge"), None).unwrap_err().contains("--surge needs a value"));
        assert!(parse(&args("--surge lots"), None).unwrap_err().contains("expected a number"));
        assert!(parse(&args("--duration 1"), None).unwrap_err().contains("--duration"));
        assert!(parse(&args("--pool 0"), None).unwrap_err().contains("--pool"));
        assert!(parse(&args("--frobnicate"), None).unwrap_err().contains("unknown option"));
        assert_eq!(parse(&args("--help"), None), Ok(Command::Help));
    }
}

//! Command-line settings of the benchmark. Hand-parsed (a handful of flags), so the bench
//! builds fast from a fresh clone.

pub const USAGE: &str = "\
usage: ./build.sh bench [--rounds N] [--duration SECONDS] [--quick] [OPTIONS]

Six arms (no_filter, native_local_ratelimit, empty_wasm, surgeguard, surgeguard_fleet: its
global limit leased from a Redis and surgeguard-rls started for the run, and surgeguard_native:
the native build), alternating in every round, on a direct_response route and on a route to an upstream. Writes dist/bench/results.json
and dist/bench/report.md.

  --rounds N              interleaved rounds (default 5; at least 1)
  --duration SECONDS      length of each throughput (wrk) and latency (oha) run (default 3)
  --quick                 a smoke run: 2 rounds of 1 s, a 3 s accuracy run, 1 start-up sample
  --connections N         wrk connections for the throughput runs (default 32)
  --accuracy-seconds S    length of the accuracy run (default 10)
  --startup-samples N     Envoy start-ups measured per arm (default 3)
  --out DIR               where to write results.json and report.md (default dist/bench)
  --skip-accuracy         leave out the accuracy run
  --skip-profile          leave out the request-path profile (bench/hostcalls)
  --prices                also price each kind of host call (bench/probe-filter; ~2 min more)
  --only-direct           leave out the upstream variant
  -h, --help              this text
";

/// What one run of the bench does.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rounds: u32,
    pub duration_s: f64,
    pub connections: u32,
    pub accuracy_s: f64,
    pub startup_samples: u32,
    pub out_dir: String,
    pub quick: bool,
    pub skip_accuracy: bool,
    pub skip_profile: bool,
    pub prices: bool,
    pub only_direct: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            rounds: 5,
            duration_s: 3.0,
            connections: 32,
            accuracy_s: 10.0,
            startup_samples: 3,
            out_dir: "dist/bench".into(),
            quick: false,
            skip_accuracy: false,
            skip_profile: false,
            prices: false,
            only_direct: false,
        }
    }
}

/// `Ok(None)`: help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Settings>, String> {
    let mut s = Settings::default();
    // Explicit values win over --quick whatever the order, so remember them.
    let (mut rounds, mut duration, mut accuracy, mut startup) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--quick" => s.quick = true,
            "--skip-accuracy" => s.skip_accuracy = true,
            "--skip-profile" => s.skip_profile = true,
            "--prices" => s.prices = true,
            "--only-direct" => s.only_direct = true,
            "--rounds" => rounds = Some(positive_int(flag, &value(flag)?)?),
            "--duration" => duration = Some(positive_seconds(flag, &value(flag)?)?),
            "--connections" => s.connections = positive_int(flag, &value(flag)?)?,
            "--accuracy-seconds" => accuracy = Some(positive_seconds(flag, &value(flag)?)?),
            "--startup-samples" => startup = Some(positive_int(flag, &value(flag)?)?),
            "--out" => s.out_dir = value(flag)?,
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    if s.quick {
        s.rounds = 2;
        s.duration_s = 1.0;
        s.accuracy_s = 3.0;
        s.startup_samples = 1;
    }
    s.rounds = rounds.unwrap_or(s.rounds);
    s.duration_s = duration.unwrap_or(s.duration_s);
    s.accuracy_s = accuracy.unwrap_or(s.accuracy_s);
    s.startup_samples = startup.unwrap_or(s.startup_samples);
    Ok(Some(s))
}

fn positive_int(flag: &str, v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{flag}: must be a whole number >= 1, got {v}")),
    }
}

fn positive_seconds(flag: &str, v: &str) -> Result<f64, String> {
    let trimmed = v.strip_suffix('s').unwrap_or(v);
    match trimmed.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 3600.0 => Ok(x),
        _ => Err(format!("{flag}: must be seconds in (0, 3600], got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_arguments_give_the_defaults() {
        assert_eq!(parse(&[]), Ok(Some(Settings::default())));
    }

    #[test]
    fn quick_shortens_everything_but_explicit_values_win_in_any_order() {
        let s = parse(&args(&["--rounds", "7", "--quick"])).unwrap().unwrap();
        assert_eq!((s.rounds, s.duration_s, s.accuracy_s), (7, 1.0, 3.0));
        let s = parse(&args(&["--quick", "--duration=2s"])).unwrap().unwrap();
        assert_eq!((s.rounds, s.duration_s), (2, 2.0));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_and_the_value() {
        assert_eq!(parse(&args(&["--rounds", "0"])), Err("--rounds: must be a whole number >= 1, got 0".into()));
        assert!(parse(&args(&["--duration", "fast"])).unwrap_err().starts_with("--duration:"));
        assert!(parse(&args(&["--rounds"])).unwrap_err().contains("needs a value"));
        assert!(parse(&args(&["--frobnicate"])).unwrap_err().starts_with("unknown option --frobnicate"));
    }

    #[test]
    fn help_is_not_an_error() {
        assert_eq!(parse(&args(&["--help"])), Ok(None));
    }
}

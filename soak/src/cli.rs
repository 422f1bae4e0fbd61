//! `./build.sh soak [--minutes N] [--seed S]`.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub duration: Duration,
    pub seed: u64,
}

pub const USAGE: &str = "usage: soak [--minutes N] [--seed S]
  --minutes N   minutes of load (default 10; fractions allowed, at least 0.5)
  --seed S      the load's random seed (default 1)
Writes dist/soak/summary.json and dist/soak/report.md; exit 1 if a check fails.";

pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options { duration: Duration::from_secs(600), seed: 1 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => {
                let v = value()?;
                let m: f64 = v.parse().map_err(|_| format!("--minutes: not a number: {v}"))?;
                if !(0.5..=24.0 * 60.0).contains(&m) {
                    return Err(format!("--minutes: 0.5 to 1440, got {v}"));
                }
                o.duration = Duration::from_secs_f64(m * 60.0);
            }
            "--seed" => {
                let v = value()?;
                o.seed = v.parse().map_err(|_| format!("--seed: not a whole number: {v}"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ten_minutes_by_default_and_minutes_may_be_fractions() {
        assert_eq!(parse(&[]).unwrap().duration, Duration::from_secs(600));
        assert_eq!(parse(&args(&["--minutes", "1.5"])).unwrap().duration, Duration::from_secs(90));
        assert_eq!(parse(&args(&["--seed", "7"])).unwrap().seed, 7);
    }

    #[test]
    fn bad_arguments_are_refused_with_the_value() {
        assert!(parse(&args(&["--minutes", "0.1"])).unwrap_err().contains("got 0.1"));
        assert!(parse(&args(&["--minutes"])).unwrap_err().contains("needs a value"));
        assert!(parse(&args(&["--minutes", "x"])).unwrap_err().contains("not a number: x"));
        assert!(parse(&args(&["--fast"])).unwrap_err().contains("unknown argument --fast"));
    }
}

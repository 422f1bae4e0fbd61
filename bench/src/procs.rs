//! Processes the bench starts (wrk, oha, cargo, wasm-opt), pinned with `taskset`, each waited
//! for with a deadline and killed if it overruns or if the bench is interrupted.
//!
//! Interruption: SIGINT/SIGTERM/SIGHUP only set a flag ([`interrupted`]); every wait here polls
//! it, kills its child and returns an error, so the caller unwinds normally and every RAII guard
//! (Envoy, upstream) stops what it owns.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to the flag instead of killing the bench outright.
pub fn install_signal_flag() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Errors out if the bench was interrupted: call between steps.
pub fn check_interrupted() -> Result<(), String> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking early (with an error) if interrupted.
pub fn sleep(d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Pins the calling thread, and so every thread it starts later, to `cpus` (e.g. `[1]`).
pub fn pin_this_process(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("sched_setaffinity({cpus:?}): {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A command line run under `taskset -c CPUS` (or unpinned when `cpu_list` is empty).
pub struct Pinned {
    pub program: String,
    pub args: Vec<String>,
    pub cpu_list: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Pinned {
    pub fn new(cpu_list: &str, program: &str, args: &[String]) -> Pinned {
        Pinned { program: program.to_string(), args: args.to_vec(), cpu_list: cpu_list.to_string(), env: Vec::new() }
    }

    fn command(&self) -> Command {
        let mut c = if self.cpu_list.is_empty() {
            Command::new(&self.program)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", &self.cpu_list]).arg(&self.program);
            c
        };
        c.args(&self.args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn display(&self) -> String {
        let mut s = String::new();
        if !self.cpu_list.is_empty() {
            s.push_str(&format!("taskset -c {} ", self.cpu_list));
        }
        s.push_str(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Kills the child when dropped (on error, panic or interruption), unless it already ended.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the command to completion within `limit`; returns stdout (stderr appended) if it
/// exited 0, else an error carrying what it printed.
pub fn run_to_completion(p: &Pinned, limit: Duration) -> Result<String, String> {
    check_interrupted()?;
    let child = p
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", p.display()))?;
    let mut guard = ChildGuard(child);
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = guard.0.stdout.take();
    let mut stderr = guard.0.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.0.try_wait().map_err(|e| format!("waiting for `{}`: {e}", p.display()))? {
            break status;
        }
        if interrupted() {
            return Err(format!("interrupted while running `{}`", p.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("`{}` still running after {} s: killed", p.display(), limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(if err.is_empty() { out } else { out + &err })
    } else {
        Err(format!("`{}` failed ({status}):\n{out}{err}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_command_line_reads_like_the_shell() {
        let p = Pinned::new("1", "wrk", &["-t1".to_string(), "http://x/".to_string()]);
        assert_eq!(p.display(), "taskset -c 1 wrk -t1 http://x/");
        assert_eq!(Pinned::new("", "oha", &[]).display(), "oha");
    }

    #[test]
    fn a_command_over_its_limit_is_killed_and_reported() {
        let p = Pinned::new("", "sleep", &["5".to_string()]);
        let t0 = Instant::now();
        let err = run_to_completion(&p, Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_failing_command_reports_its_output() {
        let p = Pinned::new("", "sh", &["-c".into(), "echo oops >&2; exit 3".into()]);
        let err = run_to_completion(&p, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("oops"), "{err}");
    }
}

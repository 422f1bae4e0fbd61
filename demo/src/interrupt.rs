//! Ctrl-C and SIGTERM: the first asks the demo to stop (the run in progress is abandoned and
//! every process and server is stopped by its handle's drop); a second stops at once, killing
//! every child process registered here first.
//!
//! Invariant: a child registered here is killed before the demo exits on a second signal; a
//! child is unregistered (by [`ChildGuard`]'s drop) only after its own handle stopped it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Keeps a child's pid registered while it lives.
pub struct ChildGuard(u32);

impl ChildGuard {
    pub fn register(pid: u32) -> ChildGuard {
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(pid);
        }
        ChildGuard(pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| *p != self.0);
        }
    }
}

pub fn registered() -> Vec<u32> {
    CHILDREN.lock().map(|c| c.clone()).unwrap_or_default()
}

fn kill_children() {
    for pid in registered() {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: kill(2) with a pid we started and SIGKILL has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Installs the handlers; returns the flag the first signal sets. `stopping` says what the
/// first signal stops (printed when it comes).
pub fn install(stopping: &'static str) -> Result<Arc<AtomicBool>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("signal runtime: {e}"))?;
    // Registered before returning, so a signal right after install() is already ours.
    let (mut int, mut term) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
        })
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut seen = 0;
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    seen += 1;
                    if seen == 1 {
                        flag.store(true, Ordering::SeqCst);
                        eprintln!("\ninterrupted: stopping {stopping} (again to force)");
                    } else {
                        kill_children();
                        std::process::exit(130);
                    }
                }
            })
        })
        .map_err(|e| format!("signal thread: {e}"))?;
    Ok(cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_registered_while_its_guard_lives() {
        let g = ChildGuard::register(999_999);
        assert!(registered().contains(&999_999));
        drop(g);
        assert!(!registered().contains(&999_999));
    }
}

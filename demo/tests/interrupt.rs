//! Ctrl-C: the demo stops its run, its Envoy and its storefront, and exits 130; `--fleet` also
//! its three Envoys, Redis and the rate limit service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the process on drop (the demo, and the processes it failed to stop), so a failing test
/// leaves nothing behind.
struct KillOnDrop(Option<Child>, Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in &self.1 {
            if is_running(*pid) {
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Alive and not a zombie.
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn ctrl_c_stops_the_demo_and_its_envoy() {
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "60", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child), Vec::new());
    let stderr = guard.0.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The demo names its Envoy's pid when it starts the first run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut envoy_pid = None;
    while envoy_pid.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            eprintln!("demo: {line}");
            envoy_pid = line
                .split("Envoy pid ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse::<i32>().ok());
        }
    }
    let envoy_pid = envoy_pid.expect("the demo started Envoy");
    guard.1.push(envoy_pid);
    assert!(is_running(envoy_pid));
    std::thread::sleep(Duration::from_secs(2)); // mid-run: requests in flight

    let demo_pid = guard.0.as_ref().unwrap().id() as i32;
    unsafe {
        libc::kill(demo_pid, libc::SIGINT);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.0 = None;
    assert_eq!(status.code(), Some(130));
    assert!(!is_running(envoy_pid), "Envoy {envoy_pid} was left running");
    assert!(!out.path().join("summary.json").exists(), "an interrupted demo writes no results");
}

/// The live child processes of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        if fields.get(1) == Some(&parent.as_str()) && is_running(child) {
            out.push(child);
        }
    }
    out
}

#[test]
fn ctrl_c_stops_the_fleet_demo_its_envoys_redis_and_the_rate_limit_service() {
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_demo"))
        // Short runs: the first (per-Envoy) passes, the second (fleet) is interrupted.
        .args(["--fleet", "--duration", "6", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child), Vec::new());
    let demo_pid = guard.0.as_ref().unwrap().id() as i32;
    let stderr = guard.0.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The fleet run's Envoys are started (after Redis and the service): interrupt it mid-run.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut started = false;
    while !started && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            eprintln!("demo: {line}");
            started = line.contains("fleet-wide limits] 3 Envoys (pids");
        }
    }
    assert!(started, "the demo started the fleet run's Envoys");
    std::thread::sleep(Duration::from_millis(1500));
    let children = children_of(demo_pid);
    guard.1.extend(&children);
    assert_eq!(children.len(), 5, "three Envoys, Redis and the rate limit service: {children:?}");

    unsafe {
        libc::kill(demo_pid, libc::SIGINT);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.0 = None;
    assert_eq!(status.code(), Some(130));
    for pid in &children {
        assert!(!is_running(*pid), "process {pid} was left running");
    }
    assert!(!out.path().join("summary.json").exists(), "an interrupted demo writes no results");
}

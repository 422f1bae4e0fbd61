use super::*;
use crate::classify::Request;
use crate::config::{parse, NS_PER_S};
use crate::decision::{Decision, Verdict};
use crate::ids::ClassId;
use crate::store::tests::BrokenStore;
use crate::store::MemoryStore;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const T0: u64 = 1_750_000_000 * NS_PER_S;
const MS: u64 = 1_000_000;

const ADAPTIVE: &str = r#"{"classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
    "rules": [{"match": {"path_prefix": "/search"}, "class": "sheddable"}], "default_class": "critical",
    "concurrency": {"max_in_flight": 200, "adaptive": {"window_ms": 100}}}"#;

fn admission(json: &str) -> Admission {
    Admission::new(parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e:?}")), "test", 7)
}

fn decide(a: &Admission, path: &str, now: u64, instance: u32, store: &dyn SharedStore) -> Decision {
    let headers: Vec<Option<Vec<u8>>> = vec![None; a.policy.header_names.len()];
    a.decide(&Request::new(b"GET", path.as_bytes(), &headers, b"10.0.0.1"), now, instance, store)
}

/// One worker's window: `n` critical completions of `latency_us`, peak `peak` in flight.
fn samples(n: u64, latency_us: u64, peak: u64) -> WindowStats {
    let mut w = WindowStats::with_classes(2);
    for _ in 0..n {
        w.record_completed(ClassId(0), latency_us);
    }
    w.record_admitted(peak);
    w
}

#[test]
fn two_workers_windows_are_merged_exactly_and_taken_by_one_of_them() {
    let a = admission(ADAPTIVE);
    let store = MemoryStore::default();
    a.create_record(&store).unwrap();
    a.create_window(T0, &store).unwrap();
    let (w1, mut w2) = (samples(10, 5_000, 7), samples(4, 9_000, 3));
    w2.refused = 2;
    w2.errors = 1;
    assert_eq!(a.merge_window(&w1, T0 + 40 * MS, &store), Ok(None), "the window is not over");
    assert_eq!(a.merge_window(&w2, T0 + 60 * MS, &store), Ok(None));
    assert_eq!(a.merge_window(&WindowStats::default(), T0 + 90 * MS, &store), Ok(None), "nothing new: no write");
    let taken = a.merge_window(&WindowStats::default(), T0 + 100 * MS, &store).unwrap();
    let mut expected = w1.clone();
    expected.merge(&w2);
    assert_eq!(taken, Some(expected.clone()));
    assert_eq!((expected.completed(), expected.peak_in_flight, expected.refused, expected.errors), (14, 7, 2, 1));
    assert_eq!(
        a.merge_window(&WindowStats::default(), T0 + 101 * MS, &store),
        Ok(None),
        "the other worker finds a fresh window"
    );
    let (start, fresh) = decode_window(&store.load(&a.window_key()).unwrap().unwrap().0).unwrap();
    assert_eq!((start, fresh.is_empty()), (T0 + 100 * MS, true));
}

#[test]
fn a_window_round_trips_through_its_encoding_and_garbage_is_refused() {
    let mut w = samples(3, 1_234, 5);
    w.errors = 2;
    assert_eq!(decode_window(&encode_window(T0, &w)), Some((T0, w.clone())));
    let mut torn = encode_window(T0, &w);
    torn.truncate(torn.len() - 8);
    assert_eq!(decode_window(&torn), None);
    assert_eq!(decode_window(&[1, 2, 3]), None);
}

#[test]
fn the_controller_state_round_trips_through_its_words() {
    let params = crate::adaptive::AdaptiveParams::with_ceiling(100);
    let mut c = Controller::new(2, 100, &params);
    let mut w = samples(20, 8_000, 150);
    w.refused = 5;
    c.update(&w, &params);
    c.update(&samples(20, 16_000, 150), &params);
    let back = Controller::from_words(&c.to_words()).unwrap();
    assert_eq!(back, c);
    assert_eq!(Controller::from_words(&c.to_words()[..6]), None);
}

/// Runs `windows` windows of two workers, each of `n` completions of `latency_us` seen with
/// `peak` in flight and `refused` refusals; returns L after.
fn run(a: &Admission, store: &MemoryStore, t: &mut u64, windows: u32, latency_us: u64, peak: u64, refused: u64) -> u32 {
    for _ in 0..windows {
        for worker in 0..2 {
            let mut w = samples(20, latency_us, peak);
            w.refused = refused;
            *t += 50 * MS;
            if let Some(window) = a.merge_window(&w, *t + worker, store).unwrap() {
                a.run_window(&window, *t + worker, store).unwrap();
            }
        }
    }
    a.adaptive_limit(store).unwrap()
}

#[test]
fn windows_run_by_either_worker_move_l_in_the_record_and_decisions_follow() {
    let a = admission(ADAPTIVE);
    let store = MemoryStore::default();
    a.create_record(&store).unwrap();
    a.create_window(T0, &store).unwrap();
    let mut t = T0;
    assert_eq!(a.adaptive_limit(&store), Some(200));
    // Calm: 10 in flight at 5 ms; L decays toward twice that and learns the baseline.
    let calm = run(&a, &store, &mut t, 60, 5_000, 10, 0);
    assert!((20..200).contains(&calm), "decayed toward 2 x peak: {calm}");
    // Latency 4x the baseline while binding: L is cut.
    let cut = run(&a, &store, &mut t, 3, 20_000, u64::from(calm), 10);
    assert!(cut <= calm / 2, "cut from {calm} to {cut}");
    // The next decisions compare with the new L: sheddable gets half of it.
    let admitted =
        (0..200).filter(|_| matches!(decide(&a, "/search", t, 1, &store).verdict, Verdict::Admitted { .. })).count();
    assert_eq!(admitted as u32, cut / 2);
}

#[test]
fn the_log_line_fires_when_l_moved_by_a_factor_of_two_since_the_last_one() {
    let a = admission(ADAPTIVE);
    let store = MemoryStore::default();
    a.create_window(T0, &store).unwrap();
    let mut logs = Vec::new();
    let mut t = T0;
    for i in 0..80 {
        let latency = if i < 60 { 5_000 } else { 40_000 };
        let (peak, refused) = if i < 60 { (10, 0) } else { (200, 10) };
        t += 100 * MS;
        let mut w = samples(40, latency, peak);
        w.refused = refused;
        if let Some(window) = a.merge_window(&w, t, &store).unwrap() {
            if let Some(log) = a.run_window(&window, t, &store).unwrap().log {
                logs.push(log);
            }
        }
    }
    assert!(!logs.is_empty());
    assert_eq!(logs[0].0, 200, "the first line compares with the start");
    for pair in logs.windows(2) {
        assert_eq!(pair[1].0, pair[0].1, "each line compares with the last logged value");
    }
    for (from, to) in &logs {
        assert!(*to >= 2 * from || 2 * to <= *from, "{from} -> {to}");
    }
}

#[test]
fn a_changed_configuration_starts_a_fresh_controller_and_a_failing_store_loses_nothing_shared() {
    let store = MemoryStore::default();
    let a = admission(ADAPTIVE);
    a.create_window(T0, &store).unwrap();
    let mut t = T0;
    let learned = run(&a, &store, &mut t, 60, 5_000, 10, 0);
    assert!(learned < 200);
    let b = admission(&ADAPTIVE.replace("200", "300"));
    let window = samples(20, 5_000, 10);
    let change = b.run_window(&window, t, &store).unwrap().change;
    assert_eq!(change.from, 300, "a new ceiling: a fresh controller at it");
    assert_eq!(b.merge_window(&window, t, &BrokenStore), Err(StoreError));
    assert_eq!(b.run_window(&window, t, &BrokenStore), None);
}

#[test]
fn a_static_configuration_has_no_window() {
    let a = admission(&ADAPTIVE.replace(r#", "adaptive": {"window_ms": 100}"#, ""));
    let store = MemoryStore::default();
    assert_eq!(a.adaptive(), None);
    assert_eq!(a.merge_window(&samples(3, 1_000, 2), T0, &store), Ok(None));
    a.create_window(T0, &store).unwrap();
    assert_eq!(store.load(&a.window_key()).unwrap(), None);
    assert_eq!(a.adaptive_limit(&store), None);
}

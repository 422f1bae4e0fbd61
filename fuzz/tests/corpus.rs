//! Replays the checked-in corpus of every target through its check, on stable and without
//! libFuzzer: what fuzzing once found stays found (`./build.sh test` runs this).

use std::path::Path;
use std::time::Instant;

#[test]
fn every_corpus_input_passes_its_targets_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let started = Instant::now();
    let mut replayed = 0;
    for (name, check) in surgeguard_fuzz::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else { continue };
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Ok(data) = std::fs::read(&path) else { panic!("cannot read {}", path.display()) };
            eprintln!("{name}: {}", path.display());
            check(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus under {}", root.display());
    eprintln!("replayed {replayed} inputs in {:?}", started.elapsed());
}

#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in surgeguard_fuzz::TARGETS {
        let n = std::fs::read_dir(root.join(name)).map_or(0, |d| d.count());
        assert!(n > 0, "corpus/{name} is empty");
    }
}

/// The structured targets on short fixed inputs: every check runs on stable, not only on
/// what libFuzzer keeps.
#[test]
fn every_target_accepts_any_short_input() {
    for (_, check) in surgeguard_fuzz::TARGETS {
        for seed in 0u8..=255 {
            let data: Vec<u8> =
                (0..64u8).map(|i| seed.wrapping_mul(31).wrapping_add(i.wrapping_mul(seed | 1))).collect();
            check(&data);
        }
    }
}

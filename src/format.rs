//! The format of surgeguard's shared state, and the version every shared-data key carries.
//!
//! Envoy never evicts shared data and shares it between every module loaded under one `vm_id`:
//! after an upgrade over ECDS (or a rollback) the new module runs beside the values the old one
//! wrote, and for a while both write at once (the old configuration's streams drain, a
//! `FAIL_RELOAD` VM restarts on either).
//!
//! **The version is in the keys, not in the bytes.** Every key starts with
//! [`prefix`]`(FORMAT_VERSION)`, so a module reads only values of its own layout and two module
//! versions never share a value. With the version in the bytes instead, both versions would
//! compare-and-swap the same key during a swap, each reading the other's value as foreign and
//! resetting it: buckets refilled on every alternate write, an in-flight count that loses the
//! other version's streams, without bound for as long as both run. With it in the keys each
//! version keeps its own state: a version switch starts the new format from full buckets (at most
//! one burst more per limit and switch) and an in-flight count of its own streams (the other
//! version's streams drain under its own count), and no request pays for a check. A rollback
//! finds its own old values: buckets refilled by the elapsed time, in-flight entries of its dead
//! VMs ignored after `record::LEASE_NS`.
//!
//! The keys (`<p>` = [`prefix`], `<plugin>` = the plugin's name):
//! - `<p>instances`: the instance counter, one u64 (`instance`);
//! - `<p>seed`: the key-hashing seed, one u64 (`instance`);
//! - `<p><plugin>/record`: the record, 24-byte entries (`record`);
//! - `<p><plugin>/slots/<state id>/<n>`: a keyed limit's slot, `(key fingerprint, arrival time)`
//!   (`decision`);
//! - `<p><plugin>/adaptive/window`, `<p><plugin>/adaptive/state`: the adaptive limit's shared
//!   window and controller state (`control`).
//!
//! Bump [`FORMAT_VERSION`] whenever any of these layouts, or what a value means, changes. Format
//! 1 is the layout from before keys carried a version: its keys start with `surgeguard/`, a
//! prefix no later format's keys share.

/// The shared-state format this module reads and writes.
#[cfg(not(feature = "test-next-format"))]
pub const FORMAT_VERSION: u32 = 2;

/// A test-only build (`--features test-next-format`, built by `./build.sh test` for
/// tests/e2e/tests/upgrade.rs) stands in for the next format: one version up, and a record layout
/// the current format would misread (see `record`). A shipped module never has it.
#[cfg(feature = "test-next-format")]
pub const FORMAT_VERSION: u32 = 3;

/// The start of every key of format `version`.
pub fn prefix(version: u32) -> String {
    if version <= 1 {
        "surgeguard/".to_string()
    } else {
        format!("surgeguard.v{version}/")
    }
}

/// Where a plugin's keys live in this module's format.
pub fn namespace(plugin_name: &str) -> String {
    format!("{}{plugin_name}", prefix(FORMAT_VERSION))
}

/// A key of this module's format outside any plugin (`instances`, `seed`).
pub fn process_key(name: &str) -> String {
    format!("{}{name}", prefix(FORMAT_VERSION))
}

/// The other formats, from 1 to one past this module's, whose modules ran in this process (they
/// allocated an instance id): state this module leaves alone. For the log line at start-up.
pub fn other_formats_present(store: &dyn crate::store::SharedStore) -> Vec<u32> {
    (1..=FORMAT_VERSION + 1)
        .filter(|&v| v != FORMAT_VERSION)
        .filter(|&v| matches!(store.load(&format!("{}instances", prefix(v))), Ok(Some(_))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, SharedStore};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keys_of_different_formats_never_meet_whatever_the_plugin_is_called() {
        // Format 1's keys were `surgeguard/<plugin>/...`: a plugin named like a later prefix
        // still cannot reach a later format's keys.
        let legacy_record = |plugin: &str| format!("{}{plugin}/record", prefix(1));
        for plugin in ["", "v2", "surgeguard.v2", "a/b", "storefront"] {
            let ours = format!("{}/record", namespace(plugin));
            assert!(ours.starts_with(&prefix(FORMAT_VERSION)));
            assert!(!ours.starts_with(&prefix(1)), "{ours}");
            assert_ne!(ours, legacy_record(plugin));
            assert_ne!(
                format!("{}/record", namespace(plugin)),
                format!("{}{plugin}/record", prefix(FORMAT_VERSION + 1))
            );
        }
        assert_ne!(process_key("instances"), format!("{}instances", prefix(1)));
    }

    #[test]
    fn the_other_formats_that_ran_here_are_found_by_their_instance_counters() {
        let store = MemoryStore::default();
        assert!(other_formats_present(&store).is_empty());
        store.compare_and_swap(&process_key("instances"), &1u64.to_le_bytes(), None).ok();
        assert!(other_formats_present(&store).is_empty(), "our own counter is not another format");
        store.compare_and_swap("surgeguard/instances", &4u64.to_le_bytes(), None).ok();
        let next = format!("{}instances", prefix(FORMAT_VERSION + 1));
        store.compare_and_swap(&next, &2u64.to_le_bytes(), None).ok();
        let mut expected = vec![FORMAT_VERSION + 1];
        if FORMAT_VERSION > 1 {
            expected.insert(0, 1);
        }
        assert_eq!(other_formats_present(&store), expected);
    }
}

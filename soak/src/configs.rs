//! The plugin configurations the soak pushes over ECDS: `envoy/storefront.json` with a keyed
//! limit for the flood, in [`VARIANTS`] valid variants, and invalid ones of several kinds.
//!
//! Invariants: the valid variants differ from one another only in numbers of the global limit
//! and the in-flight limit, and the keyed limit is the same in all of them: every variant's
//! state (buckets, keyed slots) is created in the warm-up and reused after, so what the soak
//! holds is bounded by the variants, not by the number of reloads. Every invalid push differs
//! from every other (its push number is in it): Envoy ignores a resource equal to the last one
//! it received, so a repeated push would not reach the module.

use serde_json::{json, Value};

/// The keyed limit the flood exercises: one bucket per `x-api-key`, on `/api/` only.
pub const KEYED_LIMIT: &str = "per_api_key";
pub const KEY_HEADER: &str = "x-api-key";
/// Slots the keyed limit may hold; the flood offers more keys than this.
pub const MAX_KEYS: u64 = 500;
/// Valid configurations pushed in turn.
pub const VARIANTS: usize = 3;

/// The shipped storefront configuration with the keyed limit added.
fn base(shipped: &str) -> Result<Value, String> {
    let mut v: Value = serde_json::from_str(shipped).map_err(|e| format!("envoy/storefront.json: {e}"))?;
    let limits = v["limits"].as_array_mut().ok_or("envoy/storefront.json: no `limits` list")?;
    limits.push(json!({
        "name": KEYED_LIMIT, "key": { "header": KEY_HEADER }, "tokens_per_second": 2, "burst": 4,
        "max_keys": MAX_KEYS, "match": { "path_prefix": "/api/" }
    }));
    Ok(v)
}

/// Valid variant `n` (of [`VARIANTS`]): 0 is the shipped numbers; the others move the global
/// limit and the in-flight limit down and up by a sixth.
pub fn valid(shipped: &str, n: usize) -> Result<String, String> {
    let mut v = base(shipped)?;
    let factor = [1.0, 5.0 / 6.0, 7.0 / 6.0][n % VARIANTS];
    let scale = |x: &Value| x.as_f64().map(|x| (x * factor).round());
    let global = v["limits"]
        .as_array_mut()
        .and_then(|l| l.iter_mut().find(|l| l["key"].as_str().unwrap_or("global") == "global"))
        .ok_or("envoy/storefront.json: no global limit")?;
    for field in ["tokens_per_second", "burst"] {
        global[field] = json!(scale(&global[field]).ok_or(format!("global limit: no {field}"))?);
    }
    let max = &mut v["concurrency"]["max_in_flight"];
    *max = json!(scale(max).ok_or("envoy/storefront.json: no concurrency.max_in_flight")?);
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// Invalid push number `k`: a kind of mistake an operator makes, different for every `k`.
pub fn invalid(shipped: &str, k: usize) -> Result<String, String> {
    let mut v = base(shipped)?;
    let tag = k as u64 + 1;
    match k % 4 {
        // Cut off mid-file.
        0 => {
            let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            let cut = text.find("\"limits\"").unwrap_or(text.len() / 2);
            return Ok(format!("{}\"limits\": [{{\"name\": \"storefront\", \"burst\": {tag}", &text[..cut]));
        }
        // A value out of range.
        1 => {
            v["limits"][0]["burst"] = json!(0);
            v["limits"][0]["tokens_per_second"] = json!(tag);
        }
        // A misspelt field.
        2 => v["limits"][0]["tokens_per_secnd"] = json!(tag),
        // A reference to a class that does not exist.
        _ => v["rules"][0]["class"] = json!(format!("no_such_class_{tag}")),
    }
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        std::fs::read_to_string(surgeguard_harness::repo_root().join("envoy/storefront.json")).unwrap()
    }

    #[test]
    fn every_variant_is_valid_and_they_differ() {
        let all: Vec<String> = (0..VARIANTS).map(|n| valid(&shipped(), n).unwrap()).collect();
        for (n, json) in all.iter().enumerate() {
            let policy = surgeguard::config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("variant {n}: {e:?}"));
            assert!(policy.limits.iter().any(|l| l.name == KEYED_LIMIT), "variant {n}");
        }
        assert_ne!(all[0], all[1]);
        assert_ne!(all[1], all[2]);
        assert_ne!(all[0], all[2]);
    }

    #[test]
    fn every_invalid_push_is_refused_and_no_two_are_alike() {
        let pushes: Vec<String> = (0..8).map(|k| invalid(&shipped(), k).unwrap()).collect();
        for (k, json) in pushes.iter().enumerate() {
            assert!(surgeguard::config::parse(json.as_bytes()).is_err(), "push {k} is refused:\n{json}");
        }
        let distinct: std::collections::BTreeSet<&String> = pushes.iter().collect();
        assert_eq!(distinct.len(), pushes.len());
    }
}

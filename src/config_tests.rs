use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn errors(json: &str) -> Vec<String> {
    match parse(json.as_bytes()) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn policy(json: &str) -> Policy {
    parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e:?}"))
}

const CONTRACT_EXAMPLE: &str = r#"{
  "mode": "enforce",
  "classes": [
    { "name": "critical",  "reserve": 0.0 },
    { "name": "standard",  "reserve": 0.2 },
    { "name": "sheddable", "reserve": 0.5 }
  ],
  "default_class": "standard",
  "rules": [
    { "match": { "header": { "name": "user-agent", "contains": "bot" } }, "class": "sheddable" },
    { "match": { "path_prefix": "/checkout" }, "class": "critical" },
    { "match": { "path_prefix": "/cart", "methods": ["POST", "PUT", "DELETE"] }, "class": "critical" },
    { "match": { "path_prefix": "/search" }, "class": "sheddable" }
  ],
  "limits": [
    { "name": "storefront", "key": "global", "tokens_per_second": 500, "burst": 1000 },
    { "name": "per_client", "key": "client_ip", "tokens_per_second": 20, "burst": 40,
      "match": { "path_prefix": "/api/" } },
    { "name": "per_api_key", "key": { "header": "x-api-key" }, "tokens_per_second": 50, "burst": 100 }
  ],
  "concurrency": { "max_in_flight": 200 }
}"#;

#[test]
fn the_contract_example_compiles() {
    let p = policy(CONTRACT_EXAMPLE);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.classes.len(), 3);
    assert_eq!(p.default_class, ClassId(1));
    assert_eq!(p.rules.len(), 4);
    assert_eq!(p.limits[1].key, KeySource::ClientIp);
    assert_eq!(p.limits[2].key, KeySource::Header(1));
    assert_eq!(p.header_names, vec!["user-agent".to_string(), "x-api-key".to_string()]);
    assert_eq!(p.limits[0].policy_header, "\"storefront\";q=1000;w=2");
    assert_eq!(p.limits[1].max_keys, DEFAULT_MAX_KEYS as u32);
    let c = p.concurrency.as_ref().map(|c| c.class_max_in_flight.clone());
    assert_eq!(c, Some(vec![200, 160, 100]));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let p = policy(r#"{"limits": [{"name": "all", "tokens_per_second": 10, "burst": 5}]}"#);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.classes, vec![Class { name: "default".into(), reserve: 0.0 }]);
    assert_eq!(p.default_class, ClassId(0));
    assert_eq!(p.limits[0].key, KeySource::Global);
    assert!(p.concurrency.is_none());
}

#[test]
fn the_default_class_is_the_last_class() {
    let p = policy(r#"{"classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}"#);
    assert_eq!(p.default_class, ClassId(2));
}

#[test]
fn contract_error_strings() {
    assert_eq!(
        errors(
            r#"{"limits": [{"name": "a", "tokens_per_second": 1, "burst": 1}, {"name": "b", "tokens_per_second": 1, "burst": 0}]}"#
        ),
        vec!["limits[1].burst: must be >= 1, got 0"]
    );
    assert_eq!(
        errors(r#"{"limits": [{"name": "a", "tokens_per_secnd": 1, "burst": 1}]}"#),
        vec!["limits[0].tokens_per_secnd: unknown field", "limits[0].tokens_per_second: required"]
    );
}

// Found by fuzzing (fuzz/, target `config`): the name went into the path raw.
#[test]
fn an_unknown_field_named_with_line_breaks_is_reported_on_one_line() {
    let e = errors(r#"{"classes": [{"name": "a", "res\rve": 0.5}], "x\ny\u2028": 1}"#);
    assert_eq!(e, vec!["x\\ny\\u{2028}: unknown field", "classes[0].res\\rve: unknown field"]);
}

// Found by fuzzing (fuzz/, target `config`): the path was empty.
#[test]
fn an_unknown_field_with_an_empty_name_is_reported_with_a_path() {
    assert_eq!(
        errors(r#"{"": 1, "limits": [{"": 2}]}"#)[..2],
        [r#""": unknown field"#, r#"limits[0]."": unknown field"#]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let e = errors(
        r#"{"mode": "loud", "classes": [{"name": "a", "reserve": 1.5}, {"name": "a"}],
            "rules": [{"match": {"path_prefix": "checkout"}, "class": "nope"}],
            "limits": [{"name": "x y", "key": "ip", "tokens_per_second": 0, "burst": 2.5}],
            "concurrency": {"max_in_flight": -1}, "extra": true}"#,
    );
    assert_eq!(
        e,
        vec![
            "extra: unknown field",
            "mode: must be \"enforce\" or \"shadow\", got \"loud\"",
            "classes[0].reserve: must be between 0.0 and 1.0, got 1.5",
            "classes[1].name: duplicate class name, got \"a\"",
            "rules[0].match.path_prefix: must start with / and hold no query string, got \"checkout\"",
            "rules[0].class: must name a class (a), got \"nope\"",
            "limits[0].name: must be 1 to 64 of A-Z a-z 0-9 _ -, got \"x y\"",
            "limits[0].key: must be \"global\", \"client_ip\" or {\"header\": NAME}, got \"ip\"",
            "limits[0].tokens_per_second: must be > 0 and <= 1e9, got 0",
            "limits[0].burst: must be a whole number, got 2.5",
            "concurrency.max_in_flight: must be >= 1, got -1",
        ]
    );
}

#[test]
fn type_errors_name_the_expected_type() {
    assert_eq!(errors(r#"[1, 2]"#), vec!["configuration: must be an object, got [1,2]"]);
    assert_eq!(errors(r#"{"classes": {}}"#), vec!["classes: must be a list, got {}"]);
    assert_eq!(errors(r#"{"classes": []}"#), vec!["classes: must name at least one class, got []"]);
    assert_eq!(
        errors(r#"{"limits": [{"name": "a", "tokens_per_second": "fast", "burst": 1}]}"#),
        vec!["limits[0].tokens_per_second: must be a number, got \"fast\""]
    );
    assert_eq!(
        errors(r#"{"rules": [{"match": {"methods": ["get"]}, "class": "default"}]}"#),
        vec!["rules[0].match.methods[0]: must be an upper-case HTTP method, got \"get\""]
    );
}

#[test]
fn header_matches_take_exactly_one_test() {
    assert_eq!(
        errors(r#"{"rules": [{"match": {"header": {"name": "ua", "exact": "a", "contains": "b"}}, "class": "default"}]}"#),
        vec!["rules[0].match.header: must give exactly one of exact, prefix, contains, present, got {\"contains\":\"b\",\"exact\":\"a\",\"name\":\"ua\"}"]
    );
    assert_eq!(
        errors(r#"{"rules": [{"match": {"header": {"exact": "a"}}, "class": "default"}]}"#),
        vec!["rules[0].match.header.name: required"]
    );
}

#[test]
fn invalid_json_says_where() {
    assert_eq!(errors("{\"mode\": }"), vec!["configuration: invalid JSON (expected value at line 1 column 10)"]);
    assert_eq!(errors("\u{0}\u{ff}").len(), 1);
    let cases = [
        ("{\"limits\": [\n  {\"name\": \"a\",},\n]}", "trailing comma at line 2 column 16"),
        ("{\"mode\": \"enforce\"", "EOF while parsing an object at line 1 column 18"),
        ("{mode: 1}", "key must be a string at line 1 column 2"),
        ("{} {}", "trailing characters at line 1 column 4"),
        ("{\"mode\": \"\\q\"}", "invalid escape at line 1 column 12"),
        ("{\"limits\": [{\"burst\": 01}]}", "invalid number at line 1 column 24"),
        ("{\"limits\": [{\"burst\": 1e999}]}", "number out of range at line 1 column 27"),
        (
            "{\"mode\": \"a\tb\"}",
            "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 12",
        ),
        (
            &("[".repeat(200) + &"]".repeat(200)),
            "nested too deeply (more than 127 lists and objects) at line 1 column 128",
        ),
    ];
    for (json, kind) in cases {
        assert_eq!(errors(json), vec![format!("configuration: invalid JSON ({kind})")], "{json}");
    }
    let not_utf8 = parse(&[b'{', 0xff, b'}']).err().map(|e| e[0].to_string());
    assert_eq!(not_utf8.as_deref(), Some("configuration: must be UTF-8 JSON (invalid byte at offset 1)"));
}

#[test]
fn an_empty_configuration_is_the_defaults() {
    assert_eq!(policy("").classes.len(), 1);
    assert_eq!(policy("  \n").limits.len(), 0);
}

#[test]
fn max_keys_belongs_to_keyed_limits_only() {
    assert_eq!(
        errors(r#"{"limits": [{"name": "g", "tokens_per_second": 1, "burst": 1, "max_keys": 5}]}"#),
        vec!["limits[0].max_keys: applies only to a keyed limit (client_ip or header), got 5"]
    );
    let p =
        policy(r#"{"limits": [{"name": "k", "key": "client_ip", "tokens_per_second": 1, "burst": 1, "max_keys": 5}]}"#);
    assert_eq!(p.limits[0].max_keys, 5);
}

#[test]
fn duplicate_limit_names_are_refused() {
    assert_eq!(
        errors(
            r#"{"limits": [{"name": "a", "tokens_per_second": 1, "burst": 1}, {"name": "a", "tokens_per_second": 2, "burst": 1}]}"#
        ),
        vec!["limits[1].name: duplicate limit name, got \"a\""]
    );
}

#[test]
fn reserves_become_per_class_tolerances() {
    let p = policy(
        r#"{"classes": [{"name": "c"}, {"name": "s", "reserve": 0.5}],
            "limits": [{"name": "l", "tokens_per_second": 10, "burst": 10}]}"#,
    );
    let l = &p.limits[0];
    assert_eq!(l.ns_per_token, 100_000_000);
    assert_eq!(l.class_tolerance_ns, vec![1_000_000_000, 500_000_000]);
    assert_eq!(l.window_s, 1);
}

#[test]
fn a_changed_rate_or_burst_changes_the_state_id() {
    let a = policy(r#"{"limits": [{"name": "l", "tokens_per_second": 10, "burst": 10}]}"#);
    let b = policy(r#"{"limits": [{"name": "l", "tokens_per_second": 10, "burst": 20}]}"#);
    let c = policy(r#"{"limits": [{"name": "l", "tokens_per_second": 10, "burst": 10}], "mode": "shadow"}"#);
    assert_ne!(a.limits[0].state_id, b.limits[0].state_id);
    assert_eq!(a.limits[0].state_id, c.limits[0].state_id);
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(200);
    let e = errors(&format!(r#"{{"mode": "{long}"}}"#));
    assert!(e[0].ends_with("...") && e[0].len() < 200, "{}", e[0]);
}

#[test]
fn documented_defaults_are_the_ones_the_code_uses() {
    let default_of = |path: &str| REFERENCE.iter().find(|d| d.path == path).map(|d| d.default);
    assert_eq!(default_of("limits[].max_keys"), Some(DEFAULT_MAX_KEYS.to_string().as_str()));
    assert_eq!(default_of("concurrency.retry_after_s"), Some(DEFAULT_SHED_RETRY_AFTER_S.to_string().as_str()));
    assert_eq!(default_of("limits[].fleet.timeout_ms"), Some(DEFAULT_FLEET_TIMEOUT_MS.to_string().as_str()));
    assert_eq!(default_of("limits[].fleet.refill_ms"), Some(DEFAULT_FLEET_REFILL_MS.to_string().as_str()));
    let p = policy(r#"{"concurrency": {"max_in_flight": 3}}"#);
    assert_eq!(p.concurrency.map(|c| c.retry_after_s), Some(DEFAULT_SHED_RETRY_AFTER_S));
}

#[test]
fn every_documented_field_is_accepted() {
    let all = r#"{"mode": "shadow", "classes": [{"name": "a", "reserve": 0.1}], "default_class": "a",
      "rules": [{"match": {"path_prefix": "/a", "path": "/a/b", "methods": ["GET"],
                 "header": {"name": "x", "prefix": "y", "ignore_case": true}}, "class": "a"},
                {"match": {"header": {"name": "x", "exact": "y"}}, "class": "a"},
                {"match": {"header": {"name": "x", "contains": "y"}}, "class": "a"},
                {"match": {"header": {"name": "x", "present": false}}, "class": "a"}],
      "limits": [{"name": "l", "key": {"header": "k"}, "tokens_per_second": 1, "burst": 1,
                  "match": {"path": "/"}, "max_keys": 7},
                 {"name": "f", "tokens_per_second": 1, "burst": 4,
                  "fleet": {"cluster": "rls", "domain": "d", "descriptor": [{"key": "k", "value": "v"}],
                            "local_share": 0.5, "timeout_ms": 20, "refill_ms": 100, "max_lease": 2}}],
      "concurrency": {"max_in_flight": 1, "retry_after_s": 2,
                      "adaptive": {"floor": 1, "tolerance": 1.5, "window_ms": 100}}}"#;
    assert_eq!(errors(all), Vec::<String>::new());
    let used: Vec<&str> = REFERENCE.iter().map(|d| d.path.rsplit('.').next().unwrap_or(d.path)).collect();
    for d in REFERENCE {
        let name = d.path.rsplit('.').next().unwrap_or(d.path).trim_end_matches("[]");
        assert!(all.contains(&format!("\"{name}\"")), "{} is documented but not exercised", d.path);
    }
    assert!(!used.is_empty());
}

#[test]
fn a_fleet_limit_compiles_its_lease_and_a_local_fallback_of_its_share() {
    let p = policy(
        r#"{"classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
            "limits": [{"name": "db", "tokens_per_second": 500, "burst": 1000,
                        "fleet": {"cluster": "rls", "domain": "shop", "local_share": 0.25}}]}"#,
    );
    let l = &p.limits[0];
    let f = l.fleet.as_ref().unwrap();
    assert_eq!((f.cluster.as_str(), f.domain.as_str()), ("rls", "shop"));
    assert_eq!(f.descriptor, vec![(DEFAULT_DESCRIPTOR_KEY.to_string(), "db".to_string())]);
    assert_eq!(f.class_reserve_tokens, vec![0, 500]);
    assert_eq!(f.lease.capacity, 1000);
    assert_eq!(f.lease.window_ns, 2 * NS_PER_S);
    assert_eq!(f.lease.timeout_ns, DEFAULT_FLEET_TIMEOUT_MS * 1_000_000);
    assert_eq!(f.lease.refill_period_ns, DEFAULT_FLEET_REFILL_MS * 1_000_000);
    assert_eq!((f.lease.min_hits, f.lease.max_hits), (10, 250));
    // A quarter of 500/s for one refill period of 250 ms.
    assert_eq!(f.lease.initial_hits, 32);
    // The limit's own bucket is the fallback: a quarter of 500/s, burst 250.
    assert_eq!(l.ns_per_token, 8_000_000);
    assert_eq!(l.class_tolerance_ns, vec![250 * 8_000_000, 125 * 8_000_000]);
    // What clients see stays the fleet limit.
    assert_eq!(l.policy_header, "\"db\";q=1000;w=2");
}

#[test]
fn fleet_problems_are_reported_with_their_paths() {
    let limit = |fleet: &str| {
        format!(r#"{{"limits": [{{"name": "db", "tokens_per_second": 10, "burst": 8, "fleet": {fleet}}}]}}"#)
    };
    assert_eq!(
        errors(&limit(r#"{"domain": "", "local_share": 0, "timeout_ms": 0, "max_lease": 9, "x": 1}"#)),
        vec![
            "limits[0].fleet.x: unknown field",
            "limits[0].fleet.cluster: required",
            "limits[0].fleet.domain: must not be empty, got \"\"",
            "limits[0].fleet.local_share: must be > 0.0 and <= 1.0, got 0",
            "limits[0].fleet.timeout_ms: must be >= 1, got 0",
            "limits[0].fleet.max_lease: must be <= 8, got 9",
        ]
    );
    assert_eq!(
        errors(&limit(r#"{"cluster": "c", "domain": "d", "local_share": 1, "descriptor": [{"key": "k"}, 3]}"#)),
        vec![
            "limits[0].fleet.descriptor[0].value: required",
            "limits[0].fleet.descriptor[1]: must be an object, got 3"
        ]
    );
    assert_eq!(
        errors(&limit(r#"{"cluster": "c", "domain": "d", "local_share": 1, "descriptor": []}"#)),
        vec!["limits[0].fleet.descriptor: must hold at least one entry, got []"]
    );
    let keyed = r#"{"limits": [{"name": "k", "key": "client_ip", "tokens_per_second": 1, "burst": 1,
                    "fleet": {"cluster": "c", "domain": "d", "local_share": 1}}]}"#;
    assert_eq!(
        errors(keyed),
        vec![r#"limits[0].fleet: applies only to a "global" limit, got {"cluster":"c","domain":"d","local_share":1}"#]
    );
}

#[test]
fn a_field_given_twice_is_refused() {
    assert_eq!(
        errors(r#"{"limits": [{"name": "a", "tokens_per_second": 1, "burst": 1, "burst": 1000}]}"#),
        vec!["limits[0].burst: duplicate field"]
    );
    assert_eq!(
        errors(r#"{"mode": "enforce", "extra": 1, "mode": "shadow", "extra": 2, "mode": "shadow"}"#),
        vec!["extra: unknown field", "mode: duplicate field"]
    );
    // A repeated key stands for the same field, however it is escaped.
    assert_eq!(
        errors(r#"{"concurrency": {"max_in_flight": 1, "max_in_fligh\u0074": 2}}"#),
        vec!["concurrency.max_in_flight: duplicate field"]
    );
}

#[test]
fn values_are_echoed_as_written() {
    let got = |json: &str| errors(json).into_iter().next().unwrap_or_default();
    let limit = |rate: &str, burst: &str| {
        format!(r#"{{"limits": [{{"name": "a", "tokens_per_second": {rate}, "burst": {burst}}}]}}"#)
    };
    assert_eq!(got(&limit("1e10", "1")), "limits[0].tokens_per_second: must be > 0 and <= 1e9, got 1e10");
    assert_eq!(got(&limit("-0.0", "1")), "limits[0].tokens_per_second: must be > 0 and <= 1e9, got -0.0");
    assert_eq!(got(&limit("1", "1.50")), "limits[0].burst: must be a whole number, got 1.50");
    assert_eq!(got(&limit("1", "2E9")), "limits[0].burst: must be <= 1000000000, got 2E9");
    assert_eq!(got(&limit("1", "[1.0, \"\\u00e9\\n\"]")), "limits[0].burst: must be a number, got [1.0,\"é\\n\"]");
    assert_eq!(
        got(r#"{"classes": [{"name": "a", "reserve": 1.0000000000000002}]}"#),
        "classes[0].reserve: must be between 0.0 and 1.0, got 1.0000000000000002"
    );
    // The values themselves are exact where a configuration needs them.
    let p = policy(&limit("0.1", "3e2"));
    assert_eq!((p.limits[0].tokens_per_second, p.limits[0].burst), (0.1, 300));
    assert_eq!(p.limits[0].ns_per_token, 10_000_000_000);
}

#[test]
fn the_reference_prose_is_not_what_the_parser_reads() {
    assert_eq!(FIELD_PATHS.len(), REFERENCE.len());
    assert!(FIELD_PATHS.iter().zip(REFERENCE).all(|(p, d)| *p == d.path));
}

#[test]
fn an_adaptive_limit_takes_max_in_flight_as_its_ceiling_and_start_and_defaults_the_rest() {
    let p = policy(
        r#"{"classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
            "concurrency": {"max_in_flight": 500, "adaptive": {}}}"#,
    );
    let c = p.concurrency.unwrap();
    let a = c.adaptive.unwrap();
    assert_eq!((a.params.ceiling, a.params.floor, a.params.window_ms), (500, 10, 200));
    assert_eq!((a.params.tolerance, a.params.grow_tolerance), (1.25, 1.08));
    assert_eq!(a.reserves, vec![0.0, 0.5]);
    assert_eq!(a.limit(None), 500, "before the first window: the ceiling");
    assert_eq!(a.limit(Some(3)), 10, "never under the floor");
    assert_eq!(a.limit(Some(900)), 500, "never over the ceiling (a reload lowered it)");
    assert_eq!((a.class_max(ClassId(0), 41), a.class_max(ClassId(1), 41)), (41, 20));
    assert_eq!(c.class_max_in_flight, vec![500, 250], "the static maxima are still compiled");
    let small = policy(r#"{"concurrency": {"max_in_flight": 20, "adaptive": {"floor": 5, "tolerance": 1.06}}}"#);
    let a = small.concurrency.unwrap().adaptive.unwrap();
    assert_eq!((a.params.floor, a.params.tolerance, a.params.grow_tolerance), (5, 1.06, 1.06));
    let tiny = policy(r#"{"concurrency": {"max_in_flight": 20, "adaptive": {}}}"#);
    assert_eq!(tiny.concurrency.unwrap().adaptive.unwrap().params.floor, 1);
    assert_eq!(policy(r#"{"concurrency": {"max_in_flight": 20}}"#).concurrency.unwrap().adaptive, None);
}

#[test]
fn bad_adaptive_fields_are_reported_with_path_and_value() {
    assert_eq!(
        errors(
            r#"{"concurrency": {"max_in_flight": 100, "adaptive": {"floor": 101, "tolerance": 0.9,
                "window_ms": 20, "ceiling": 5}}}"#
        ),
        vec![
            "concurrency.adaptive.ceiling: unknown field",
            "concurrency.adaptive.floor: must be <= 100, got 101",
            "concurrency.adaptive.tolerance: must be between 1.05 and 4, got 0.9",
            "concurrency.adaptive.window_ms: must be >= 50, got 20",
        ]
    );
    assert_eq!(
        errors(r#"{"concurrency": {"max_in_flight": 100, "adaptive": true}}"#),
        vec!["concurrency.adaptive: must be an object, got true"]
    );
    assert_eq!(
        errors(r#"{"concurrency": {"adaptive": {"window_ms": 1.5}}}"#),
        vec!["concurrency.max_in_flight: required", "concurrency.adaptive.window_ms: must be >= 50, got 1.5"]
    );
}

// --- Size bounds: at each bound accepted, one past refused with its path and size ---

/// `n` items made by `item`, comma-separated.
fn items(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(", ")
}

/// One rule whose `match` is `m`.
fn rule_matching(m: &str) -> String {
    format!(r#"{{"rules": [{{"match": {m}, "class": "default"}}]}}"#)
}

#[test]
fn a_configuration_may_be_max_config_bytes_long_and_not_one_byte_more() {
    let padded = |n: usize| format!("{{}}{}", " ".repeat(n - 2));
    assert!(parse(padded(MAX_CONFIG_BYTES).as_bytes()).is_ok());
    assert_eq!(
        errors(&padded(MAX_CONFIG_BYTES + 1)),
        vec!["configuration: must be at most 262144 bytes, got 262145 bytes"]
    );
}

#[test]
fn at_most_max_classes_classes() {
    let classes = |n| format!(r#"{{"classes": [{}]}}"#, items(n, |i| format!(r#"{{"name": "c{i}"}}"#)));
    assert_eq!(policy(&classes(MAX_CLASSES)).classes.len(), 64);
    assert_eq!(errors(&classes(MAX_CLASSES + 1)), vec!["classes: must hold at most 64 entries, got 65 entries"]);
}

#[test]
fn too_many_classes_are_reported_beside_their_own_problems_and_their_names_still_resolve() {
    let classes = items(MAX_CLASSES + 1, |i| format!(r#"{{"name": "c{i}"}}"#));
    let json = format!(r#"{{"classes": [{classes}, {{"name": "bad name"}}], "default_class": "c64"}}"#);
    assert_eq!(
        errors(&json),
        vec![
            "classes: must hold at most 64 entries, got 66 entries",
            "classes[65].name: must be 1 to 64 of A-Z a-z 0-9 _ -, got \"bad name\""
        ]
    );
}

#[test]
fn at_most_max_rules_rules() {
    let rules = |n| {
        let r = items(n, |i| format!(r#"{{"match": {{"path_prefix": "/r{i}"}}, "class": "default"}}"#));
        format!(r#"{{"rules": [{r}]}}"#)
    };
    assert_eq!(policy(&rules(MAX_RULES)).rules.len(), 128);
    assert_eq!(errors(&rules(MAX_RULES + 1)), vec!["rules: must hold at most 128 entries, got 129 entries"]);
}

#[test]
fn at_most_max_limits_limits() {
    let limits = |n| {
        let l = items(n, |i| format!(r#"{{"name": "l{i}", "tokens_per_second": 1, "burst": 1}}"#));
        format!(r#"{{"limits": [{l}]}}"#)
    };
    assert_eq!(policy(&limits(MAX_LIMITS)).limits.len(), 64);
    assert_eq!(errors(&limits(MAX_LIMITS + 1)), vec!["limits: must hold at most 64 entries, got 65 entries"]);
}

#[test]
fn at_most_max_keyed_limits_keyed_limits() {
    let limits = |n| {
        let l = items(n, |i| format!(r#"{{"name": "k{i}", "key": "client_ip", "tokens_per_second": 1, "burst": 1}}"#));
        format!(r#"{{"limits": [{l}, {{"name": "g", "tokens_per_second": 1, "burst": 1}}]}}"#)
    };
    assert_eq!(policy(&limits(MAX_KEYED_LIMITS)).limits.len(), 9, "8 keyed and a global one");
    assert_eq!(
        errors(&limits(MAX_KEYED_LIMITS + 1)),
        vec!["limits[8].key: at most 8 limits may be keyed (client_ip or header), got \"client_ip\""]
    );
}

#[test]
fn keyed_limits_hold_at_most_max_total_keys_in_all() {
    let limits = |a: u64, b: u64| {
        format!(
            r#"{{"limits": [{{"name": "a", "key": "client_ip", "tokens_per_second": 1, "burst": 1, "max_keys": {a}}},
                            {{"name": "b", "key": {{"header": "x-k"}}, "tokens_per_second": 1, "burst": 1, "max_keys": {b}}}]}}"#
        )
    };
    assert_eq!(policy(&limits(600_000, 400_000)).limits[1].max_keys, 400_000);
    assert_eq!(
        errors(&limits(600_000, 400_001)),
        vec!["limits[1].max_keys: keyed limits may hold at most 1000000 keys in all, got 400001, 1000001 in all"]
    );
}

#[test]
fn at_most_max_header_names_distinct_headers_are_read() {
    // The same name read twice (any case) counts once.
    let headers = |n| {
        let r = items(n, |i| {
            format!(r#"{{"match": {{"header": {{"name": "x-h{i}", "present": true}}}}, "class": "default"}}"#)
        });
        format!(
            r#"{{"rules": [{r}], "limits": [{{"name": "k", "key": {{"header": "X-H0"}}, "tokens_per_second": 1, "burst": 1}}]}}"#
        )
    };
    assert_eq!(policy(&headers(MAX_HEADER_NAMES)).header_names.len(), 16);
    let past = vec!["rules[16].match.header.name: at most 16 distinct header names may be read (rules, matches, keys), got \"x-h16\""];
    assert_eq!(errors(&headers(MAX_HEADER_NAMES + 1)), past);
    assert_eq!(errors(&headers(MAX_HEADER_NAMES + 5)), past, "reported once");
}

#[test]
fn a_match_lists_at_most_max_methods_methods() {
    let methods =
        |n| rule_matching(&format!(r#"{{"methods": [{}]}}"#, items(n, |i| format!(r#""M{}""#, "X".repeat(i)))));
    assert!(parse(methods(MAX_METHODS).as_bytes()).is_ok());
    assert_eq!(
        errors(&methods(MAX_METHODS + 1)),
        vec!["rules[0].match.methods: must hold at most 16 entries, got 17 entries"]
    );
}

#[test]
fn every_string_is_at_most_max_string_bytes() {
    let prefix = |n: usize| rule_matching(&format!(r#"{{"path_prefix": "/{}"}}"#, "p".repeat(n - 1)));
    assert!(parse(prefix(MAX_STRING_BYTES).as_bytes()).is_ok());
    assert_eq!(
        errors(&prefix(MAX_STRING_BYTES + 1)),
        vec!["rules[0].match.path_prefix: must be at most 1024 bytes, got 1025 bytes"]
    );
    let exact = |n: usize| rule_matching(&format!(r#"{{"header": {{"name": "x", "exact": "{}"}}}}"#, "v".repeat(n)));
    assert!(parse(exact(MAX_STRING_BYTES).as_bytes()).is_ok());
    assert_eq!(
        errors(&exact(MAX_STRING_BYTES + 1)),
        vec!["rules[0].match.header.exact: must be at most 1024 bytes, got 1025 bytes"]
    );
    let cluster = "c".repeat(MAX_STRING_BYTES + 1);
    let fleet = format!(
        r#"{{"limits": [{{"name": "f", "tokens_per_second": 1, "burst": 1,
                          "fleet": {{"cluster": "{cluster}", "domain": "d", "local_share": 1}}}}]}}"#
    );
    assert_eq!(errors(&fleet), vec!["limits[0].fleet.cluster: must be at most 1024 bytes, got 1025 bytes"]);
}

#[test]
fn a_contains_pattern_is_at_most_max_contains_bytes() {
    let contains =
        |n: usize| rule_matching(&format!(r#"{{"header": {{"name": "x", "contains": "{}"}}}}"#, "a".repeat(n)));
    assert!(parse(contains(MAX_CONTAINS_BYTES).as_bytes()).is_ok());
    assert_eq!(
        errors(&contains(MAX_CONTAINS_BYTES + 1)),
        vec!["rules[0].match.header.contains: must be at most 256 bytes, got 257 bytes"]
    );
}

#[test]
fn a_fleet_descriptor_holds_at_most_max_descriptor_entries() {
    let descriptor = |n| {
        let entries = items(n, |i| format!(r#"{{"key": "k{i}", "value": "v"}}"#));
        format!(
            r#"{{"limits": [{{"name": "f", "tokens_per_second": 1, "burst": 1,
                              "fleet": {{"cluster": "rls", "domain": "d", "local_share": 1, "descriptor": [{entries}]}}}}]}}"#
        )
    };
    assert_eq!(
        policy(&descriptor(MAX_DESCRIPTOR_ENTRIES)).limits[0].fleet.as_ref().map(|f| f.descriptor.len()),
        Some(16)
    );
    assert_eq!(
        errors(&descriptor(MAX_DESCRIPTOR_ENTRIES + 1)),
        vec!["limits[0].fleet.descriptor: must hold at most 16 entries, got 17 entries"]
    );
}

#[test]
fn the_reference_states_every_size_bound() {
    let meaning = |path: &str| REFERENCE.iter().find(|d| d.path == path).map_or("", |d| d.meaning);
    let states = |path: &str, bound: usize| {
        assert!(meaning(path).contains(&bound.to_string()), "{path}: {} does not say {bound}", meaning(path));
    };
    states("classes", MAX_CLASSES);
    states("rules", MAX_RULES);
    states("limits", MAX_LIMITS);
    states("limits", MAX_KEYED_LIMITS);
    states("limits[].max_keys", MAX_TOTAL_KEYS as usize);
    states("match.methods", MAX_METHODS);
    states("match.header", MAX_HEADER_NAMES);
    states("match.header.contains", MAX_CONTAINS_BYTES);
    states("limits[].fleet.descriptor", MAX_DESCRIPTOR_ENTRIES);
}

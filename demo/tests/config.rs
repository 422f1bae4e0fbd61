//! The shipped demo configuration: `envoy/demo.yaml` carries `envoy/storefront.json` word for
//! word, the filter's own parser accepts it, and it sorts the demo's traffic into the classes
//! a storefront needs, with an in-flight limit sized from the database tier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use surgeguard::classify::{classify, Request};
use surgeguard_demo::db::Contention;
use surgeguard_demo::rng::Rng;
use surgeguard_demo::traffic::{request, Kind};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn storefront_json() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("envoy/storefront.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `configuration.value` of the http filter named `surgeguard` in demo.yaml.
fn plugin_json_in_demo_yaml() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("envoy/demo.yaml")).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let listeners = yaml["static_resources"]["listeners"].as_sequence().unwrap();
    let mut found = Vec::new();
    for l in listeners {
        for chain in l["filter_chains"].as_sequence().unwrap() {
            for f in chain["filters"].as_sequence().unwrap() {
                for h in f["typed_config"]["http_filters"].as_sequence().into_iter().flatten() {
                    if h["name"].as_str() == Some("surgeguard") {
                        let c = &h["typed_config"]["config"]["configuration"];
                        assert_eq!(c["@type"].as_str(), Some("type.googleapis.com/google.protobuf.StringValue"));
                        found.push(c["value"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "one surgeguard filter in demo.yaml");
    serde_json::from_str(&found[0]).unwrap()
}

#[test]
fn demo_yaml_carries_storefront_json_word_for_word() {
    assert_eq!(plugin_json_in_demo_yaml(), storefront_json());
}

#[test]
fn storefront_json_is_accepted_by_the_filters_parser() {
    let text = std::fs::read(root().join("envoy/storefront.json")).unwrap();
    let policy = surgeguard::config::parse(&text)
        .unwrap_or_else(|errors| panic!("{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")));
    let names: Vec<&str> = policy.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["critical", "standard", "sheddable"]);
}

#[test]
fn the_in_flight_limit_is_sized_from_the_database_tier() {
    let text = std::fs::read(root().join("envoy/storefront.json")).unwrap();
    let policy = surgeguard::config::parse(&text).unwrap();
    let c = policy.concurrency.expect("an in-flight limit");
    let pool = surgeguard_demo::cli::Options::default().pool_size;
    let knee = Contention::default().knee;
    // Everything admitted fits in the pool, so no admitted request ever waits for a connection;
    // standard traffic alone never takes the database past the point where queries slow down.
    assert!(c.max_in_flight <= pool, "{} <= {pool}", c.max_in_flight);
    assert!(c.class_max_in_flight[1] <= knee, "standard: {:?}", c.class_max_in_flight);
    assert!(c.class_max_in_flight[2] < c.class_max_in_flight[1]);
    assert_eq!(c.class_max_in_flight[0], c.max_in_flight, "critical may use it all");
}

#[test]
fn the_demo_traffic_gets_the_classes_a_storefront_needs() {
    let text = std::fs::read(root().join("envoy/storefront.json")).unwrap();
    let policy = surgeguard::config::parse(&text).unwrap();
    let class_of = |req: &surgeguard_harness::client::Req| {
        let headers: Vec<Option<Vec<u8>>> = policy
            .header_names
            .iter()
            .map(|n| req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_bytes().to_vec()))
            .collect();
        let r = Request {
            method: req.method.as_bytes(),
            path: req.path.as_bytes(),
            headers: &headers,
            client_ip: b"127.0.0.1",
        };
        policy.classes[classify(&policy, &r).index()].name.clone()
    };
    let mut rng = Rng::new(9);
    for _ in 0..200 {
        for kind in Kind::ALL {
            let req = request(kind, &mut rng);
            let want = match kind {
                Kind::Checkout => "critical",
                Kind::Cart if req.method == "POST" => "critical",
                Kind::Cart | Kind::Browse => "standard",
                Kind::Search | Kind::Bot => "sheddable",
            };
            assert_eq!(class_of(&req), want, "{kind:?} {} {}", req.method, req.path);
        }
    }
}

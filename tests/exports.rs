#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `src/host/exports.txt` lists the callbacks the shipped module keeps; Envoy never calls one
//! that is not there. So every SDK callback the host glue implements must be listed, or it
//! would silently never run. (That the built module exports exactly the list is checked
//! end to end, in tests/e2e/tests/module.rs.)

use std::collections::BTreeSet;
use std::path::Path;

/// proxy-wasm SDK 0.2 callback methods and the ABI exports Envoy calls them through (a unary
/// gRPC call's answer comes through either of two: the message, or an error status).
const CALLBACK_EXPORTS: [(&str, &str); 16] = [
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_done", "proxy_on_done"),
    ("on_log", "proxy_on_log"),
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_receive"),
    ("on_grpc_call_response", "proxy_on_grpc_close"),
    ("on_foreign_function", "proxy_on_foreign_function"),
];

/// What every module needs whatever it implements: its memory, start-up, the ABI version, the
/// allocator Envoy copies values into, and context creation and deletion (the SDK creates and
/// drops contexts there; surgeguard releases in-flight slots on deletion).
const ALWAYS: [&str; 6] = [
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_delete",
];

fn listed() -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/host/exports.txt")).unwrap();
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Names of the `on_*` methods defined in the host glue's sources.
fn implemented_callbacks() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/host");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(rest) = line.trim_start().strip_prefix("fn on_") {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    names.insert(format!("on_{name}"));
                }
            }
        }
    }
    names
}

#[test]
fn every_callback_the_host_glue_implements_is_kept() {
    let listed = listed();
    let implemented = implemented_callbacks();
    assert!(implemented.contains("on_http_request_headers"), "the scan finds the glue's callbacks: {implemented:?}");
    for name in &implemented {
        let exports: Vec<&str> =
            CALLBACK_EXPORTS.iter().filter(|(method, _)| method == name).map(|(_, export)| *export).collect();
        assert!(!exports.is_empty(), "`{name}` in src/host: add its ABI exports to CALLBACK_EXPORTS here");
        for export in exports {
            assert!(listed.contains(export), "src/host implements `{name}`: list `{export}` in src/host/exports.txt");
        }
    }
}

#[test]
fn what_every_module_needs_is_kept_and_nothing_unimplemented_is() {
    let listed = listed();
    for export in ALWAYS {
        assert!(listed.contains(export), "src/host/exports.txt must keep `{export}`");
    }
    let implemented = implemented_callbacks();
    for export in &listed {
        let needed = ALWAYS.contains(&export.as_str())
            || CALLBACK_EXPORTS.iter().any(|(method, e)| e == export && implemented.contains(*method));
        assert!(
            needed,
            "`{export}` is kept but nothing in src/host implements it: Envoy would enter the VM for nothing"
        );
    }
}

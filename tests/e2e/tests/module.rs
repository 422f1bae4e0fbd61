//! The module `./build.sh` ships exports exactly what `src/host/exports.txt` lists: Envoy
//! calls a callback only if the module exports it, so a missing export would silently switch a
//! feature off, and an extra one costs an entry into the VM per request.

use std::collections::BTreeSet;
use surgeguard_harness::{repo_root, wasm_path};

/// Reads an unsigned LEB128 at `*at`, advancing it.
fn leb128(bytes: &[u8], at: &mut usize) -> u64 {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b < 0x80 {
            return value;
        }
    }
}

/// The export names of a wasm binary (section 7).
fn export_names(wasm: &[u8]) -> BTreeSet<String> {
    assert_eq!(wasm.get(..4), Some(&b"\0asm"[..]), "a wasm binary");
    let mut names = BTreeSet::new();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb128(wasm, &mut at) as usize;
        let end = at + size;
        if id == 7 {
            let mut p = at;
            for _ in 0..leb128(wasm, &mut p) {
                let len = leb128(wasm, &mut p) as usize;
                names.insert(String::from_utf8(wasm[p..p + len].to_vec()).expect("UTF-8 export name"));
                p += len + 1; // the name, then the kind byte
                leb128(wasm, &mut p); // the index
            }
        }
        at = end;
    }
    names
}

#[test]
fn the_shipped_module_exports_exactly_the_listed_callbacks() {
    let listed: BTreeSet<String> = std::fs::read_to_string(repo_root().join("src/host/exports.txt"))
        .expect("src/host/exports.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let module = wasm_path();
    let wasm = std::fs::read(&module).unwrap_or_else(|e| panic!("{}: {e} (run ./build.sh)", module.display()));
    let exported = export_names(&wasm);
    assert_eq!(exported, listed, "{} against src/host/exports.txt", module.display());
    // The SDK exports more than surgeguard handles: pruning did happen.
    assert!(!exported.contains("proxy_on_response_headers") && !exported.contains("proxy_on_http_call_response"));
}

//! A VM crash on demand without a crash switch in the shipped module: the soak runs
//! `dist/surgeguard.wasm` with one function added by rewriting the binary, the way
//! `tests/e2e/tests/failure_policy.rs` assembles its crashing module by hand. The added function
//! becomes the `proxy_on_request_headers` export: it traps (`unreachable`, what a Rust panic
//! becomes in the module) when a request carries at least [`CRASH_HEADERS`] headers, and
//! otherwise calls the module's own function with the same arguments. No storefront request
//! has that many headers, so everything else runs the module's own code.
//!
//! The rewrite appends (a function, its body) and repoints one export: no existing index moves,
//! so calls, tables and the name section stay valid.

/// Headers (Envoy counts its own pseudo-headers too) from which a request crashes the VM.
/// Envoy accepts up to 100 by default.
pub const CRASH_HEADERS: u32 = 64;
const EXPORT: &str = "proxy_on_request_headers";

const SECTION_TYPE_IMPORT: u8 = 2;
const SECTION_FUNCTION: u8 = 3;
const SECTION_EXPORT: u8 = 7;
const SECTION_CODE: u8 = 10;

/// The module with the crash added; an error if it is not a module this rewrite understands.
pub fn with_crash_on_many_headers(module: &[u8]) -> Result<Vec<u8>, String> {
    let header = module.get(..8).ok_or("not a wasm module: too short")?;
    if header != b"\0asm\x01\0\0\0" {
        return Err("not a wasm module (version 1)".into());
    }
    let sections = sections(module)?;
    let body = |id: u8| sections.iter().find(|s| s.id == id).map(|s| s.body);
    let imported = imported_functions(body(SECTION_TYPE_IMPORT).unwrap_or(&[]))?;
    let functions = body(SECTION_FUNCTION).ok_or("no function section")?;
    let (defined, mut type_ids) = vector_u32(functions)?;
    let exports = body(SECTION_EXPORT).ok_or("no export section")?;
    let original = export_function(exports, EXPORT)?.ok_or(format!("no `{EXPORT}` export"))?;
    let original_type = original
        .checked_sub(imported)
        .and_then(|i| type_ids.get(i as usize).copied())
        .ok_or(format!("`{EXPORT}` is an imported function"))?;
    let wrapper = imported + defined;
    type_ids.push(original_type);

    let mut out = module[..8].to_vec();
    for s in &sections {
        let new_body = match s.id {
            SECTION_FUNCTION => {
                let mut b = Vec::new();
                leb_u32(type_ids.len() as u32, &mut b);
                type_ids.iter().for_each(|t| leb_u32(*t, &mut b));
                b
            }
            SECTION_EXPORT => repoint_export(s.body, EXPORT, wrapper)?,
            SECTION_CODE => append_body(s.body, &wrapper_body(original))?,
            _ => s.body.to_vec(),
        };
        out.push(s.id);
        leb_u32(new_body.len() as u32, &mut out);
        out.extend(new_body);
    }
    Ok(out)
}

/// `(context_id, num_headers, end_of_stream) -> action`: trap past the bound, else the original.
fn wrapper_body(original: u32) -> Vec<u8> {
    let mut code = vec![0x00]; // no locals
    code.extend([0x20, 0x01]); // local.get num_headers
    code.push(0x41); // i32.const
    leb_i32(CRASH_HEADERS as i32, &mut code);
    code.extend([0x4f, 0x04, 0x40, 0x00, 0x0b]); // i32.ge_u; if; unreachable; end
    code.extend([0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0x10]); // the arguments; call
    leb_u32(original, &mut code);
    code.push(0x0b); // end
    let mut sized = Vec::new();
    leb_u32(code.len() as u32, &mut sized);
    sized.extend(code);
    sized
}

struct Section<'a> {
    id: u8,
    body: &'a [u8],
}

fn sections(module: &[u8]) -> Result<Vec<Section<'_>>, String> {
    let mut at = 8;
    let mut out = Vec::new();
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = read_leb(module, &mut at)? as usize;
        let body = module.get(at..at + size).ok_or("a section runs past the end")?;
        at += size;
        out.push(Section { id, body });
    }
    Ok(out)
}

fn read_leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or("a number runs past the end")?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than 64 bits".into())
}

fn read_u32(bytes: &[u8], at: &mut usize) -> Result<u32, String> {
    u32::try_from(read_leb(bytes, at)?).map_err(|_| "a number past u32".to_string())
}

fn read_name<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a [u8], String> {
    let len = read_u32(bytes, at)? as usize;
    let name = bytes.get(*at..*at + len).ok_or("a name runs past the end")?;
    *at += len;
    Ok(name)
}

fn byte(bytes: &[u8], at: &mut usize) -> Result<u8, String> {
    let b = *bytes.get(*at).ok_or("an entry runs past the end")?;
    *at += 1;
    Ok(b)
}

/// Limits of a table or memory: flags, minimum, and the maximum if flag bit 0 says so.
fn skip_limits(bytes: &[u8], at: &mut usize) -> Result<(), String> {
    let flags = byte(bytes, at)?;
    read_leb(bytes, at)?;
    if flags & 1 != 0 {
        read_leb(bytes, at)?;
    }
    Ok(())
}

/// Functions come first in the function index space, so the module's own start after these.
fn imported_functions(imports: &[u8]) -> Result<u32, String> {
    if imports.is_empty() {
        return Ok(0);
    }
    let mut at = 0;
    let count = read_u32(imports, &mut at)?;
    let mut functions = 0;
    for _ in 0..count {
        read_name(imports, &mut at)?;
        read_name(imports, &mut at)?;
        match byte(imports, &mut at)? {
            0x00 => {
                read_u32(imports, &mut at)?;
                functions += 1;
            }
            0x01 => {
                byte(imports, &mut at)?; // element type
                skip_limits(imports, &mut at)?;
            }
            0x02 => skip_limits(imports, &mut at)?,
            0x03 => {
                byte(imports, &mut at)?; // value type
                byte(imports, &mut at)?; // mutability
            }
            kind => return Err(format!("an import of kind {kind:#x} this rewrite does not know")),
        }
    }
    Ok(functions)
}

fn vector_u32(bytes: &[u8]) -> Result<(u32, Vec<u32>), String> {
    let mut at = 0;
    let count = read_u32(bytes, &mut at)?;
    let items = (0..count).map(|_| read_u32(bytes, &mut at)).collect::<Result<Vec<_>, _>>()?;
    Ok((count, items))
}

/// One export: its name, kind, index, and where its index is encoded in the section.
struct Export<'a> {
    name: &'a [u8],
    kind: u8,
    index: u32,
    encoded: std::ops::Range<usize>,
}

impl Export<'_> {
    fn is_function(&self, name: &str) -> bool {
        self.name == name.as_bytes() && self.kind == 0x00
    }
}

fn export_entries(exports: &[u8]) -> Result<Vec<Export<'_>>, String> {
    let mut at = 0;
    let count = read_u32(exports, &mut at)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let name = read_name(exports, &mut at)?;
        let kind = byte(exports, &mut at)?;
        let start = at;
        let index = read_u32(exports, &mut at)?;
        out.push(Export { name, kind, index, encoded: start..at });
    }
    Ok(out)
}

fn export_function(exports: &[u8], name: &str) -> Result<Option<u32>, String> {
    Ok(export_entries(exports)?.into_iter().find(|e| e.is_function(name)).map(|e| e.index))
}

fn repoint_export(exports: &[u8], name: &str, function: u32) -> Result<Vec<u8>, String> {
    let entry =
        export_entries(exports)?.into_iter().find(|e| e.is_function(name)).ok_or(format!("no `{name}` export"))?;
    let mut out = exports[..entry.encoded.start].to_vec();
    leb_u32(function, &mut out);
    out.extend_from_slice(&exports[entry.encoded.end..]);
    Ok(out)
}

/// The code section with one more body (already size-prefixed) at its end.
fn append_body(code: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    let mut at = 0;
    let count = read_u32(code, &mut at)?;
    let mut out = Vec::new();
    leb_u32(count + 1, &mut out);
    out.extend_from_slice(&code[at..]);
    out.extend_from_slice(body);
    Ok(out)
}

fn leb_u32(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn leb_i32(mut v: i32, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0);
        out.push(if done { b } else { b | 0x80 });
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_moves_to_an_added_function_that_calls_the_original() {
        let path = surgeguard_harness::wasm_path();
        // Built by ./build.sh, which `./build.sh test` runs first.
        let module = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run ./build.sh)", path.display()));
        let out = with_crash_on_many_headers(&module).unwrap();
        let find = |m: &[u8], id: u8| -> Vec<u8> {
            sections(m).unwrap().into_iter().find(|s| s.id == id).map(|s| s.body.to_vec()).unwrap()
        };
        let imported = imported_functions(&find(&module, SECTION_TYPE_IMPORT)).unwrap();
        let (defined, types) = vector_u32(&find(&module, SECTION_FUNCTION)).unwrap();
        let (defined_after, types_after) = vector_u32(&find(&out, SECTION_FUNCTION)).unwrap();
        assert_eq!(defined_after, defined + 1);
        assert_eq!(types_after[..types.len()], types[..]);
        let original = export_function(&find(&module, SECTION_EXPORT), EXPORT).unwrap().unwrap();
        let now = export_function(&find(&out, SECTION_EXPORT), EXPORT).unwrap().unwrap();
        assert_eq!(now, imported + defined, "the export names the added function");
        assert_eq!(types_after.last(), Some(&types[(original - imported) as usize]), "same signature");
        assert!(find(&out, SECTION_CODE).ends_with(&wrapper_body(original)));
        // Every other export is untouched.
        let others = |m: &[u8]| {
            export_entries(&find(m, SECTION_EXPORT))
                .unwrap()
                .into_iter()
                .filter(|e| e.name != EXPORT.as_bytes())
                .map(|e| (e.name.to_vec(), e.kind, e.index))
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&module), others(&out));
    }

    #[test]
    fn what_is_not_a_module_is_refused() {
        assert!(with_crash_on_many_headers(b"\0asm").is_err());
        assert!(with_crash_on_many_headers(b"\0asm\x02\0\0\0").is_err());
        assert!(with_crash_on_many_headers(b"\0asm\x01\0\0\0").unwrap_err().contains("no function section"));
    }
}

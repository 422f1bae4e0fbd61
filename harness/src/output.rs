//! Writing a run's outputs (summaries, reports) to a directory: one writer for the demo and the
//! benchmark, so every output is written the same way and every failure names its path.

use std::path::{Path, PathBuf};

/// Creates `dir` (with its parents) and writes each `(file name, bytes)` into it. Returns the
/// paths written, in order; an error names the path that failed.
pub fn write_outputs(dir: &Path, files: &[(&str, &[u8])]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `value` as pretty JSON with a trailing newline (files end in a newline). Object keys come
/// sorted, whatever the order of a struct's fields, so an output diffs cleanly against the last.
pub fn write_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let sorted = serde_json::to_value(value).map_err(|e| format!("JSON: {e}"))?;
    let mut bytes = serde_json::to_vec_pretty(&sorted).map_err(|e| format!("JSON: {e}"))?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_land_in_a_new_nested_directory_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let written = write_outputs(&dir, &[("x.json", b"{}\n"), ("y.md", b"# y\n")]).unwrap();
        assert_eq!(written, vec![dir.join("x.json"), dir.join("y.md")]);
        assert_eq!(std::fs::read_to_string(dir.join("y.md")).unwrap(), "# y\n");
    }

    #[test]
    fn a_failure_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = write_outputs(&blocker.join("sub"), &[("x", b"")]).unwrap_err();
        assert!(err.contains(&blocker.join("sub").display().to_string()), "{err}");
    }

    #[test]
    fn json_is_pretty_and_ends_in_a_newline() {
        let bytes = write_json(&serde_json::json!({ "a": 1 })).unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), "{\n  \"a\": 1\n}\n");
        let fields_in_any_order = std::collections::HashMap::from([("b", 2), ("a", 1)]);
        let bytes = write_json(&fields_in_any_order).unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), "{\n  \"a\": 1,\n  \"b\": 2\n}\n");
    }
}

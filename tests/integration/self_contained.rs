//! A clone with nothing beside it must pass `make test`: every file a test reads lives in the
//! repository. This scans the code for the ways a Rust test or the Makefile names a file
//! (`include_str!`, `include_bytes!`, `Path::new`, `.join`, `read_to_string`, `File::open`)
//! and fails on any relative path that climbs out of the repository from the crate it is in,
//! and on any absolute path into the folder that holds the repository.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository's root (this crate is `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every file below `dir` that code or build rules live in, less build outputs.
fn code_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | ".venv" | "dist" | "vectors") {
                code_files(&path, out);
            }
        } else if name.ends_with(".rs") || name == "Makefile" || name == "run" {
            out.push(path);
        }
    }
}

/// The folder a relative path in `file` is taken from: its crate's (Cargo runs tests and
/// build scripts there, and `env!("CARGO_MANIFEST_DIR")` names it), or the file's own folder.
fn base_of(file: &Path, root: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(root).to_path_buf();
    while dir.starts_with(root) {
        if dir.join("Cargo.toml").is_file() || dir.join("Makefile").is_file() {
            return dir;
        }
        if !dir.pop() {
            break;
        }
    }
    root.to_path_buf()
}

/// Whether `relative`, taken from `base`, stays inside `root` (components resolved lexically).
fn stays_inside(base: &Path, relative: &str, root: &Path) -> bool {
    let mut at = base.to_path_buf();
    for part in Path::new(relative).components() {
        let still_inside = match part {
            // Climbing above the filesystem root is leaving too.
            Component::ParentDir => at.pop(),
            Component::Normal(name) => {
                at.push(name);
                true
            }
            _ => true,
        };
        if !still_inside {
            return false;
        }
    }
    at.starts_with(root)
}

/// The string literals that follow a file-naming call in `text`, each with whether it is taken
/// from the file's own folder (`include_str!` and `include_bytes!`) rather than the crate's.
fn named_paths_from(text: &str) -> Vec<(String, bool)> {
    named_paths(text)
        .into_iter()
        .map(|path| {
            let from_file = ["include_str!(\"", "include_bytes!(\""]
                .iter()
                .any(|call| text.contains(&format!("{call}{path}\"")));
            (path, from_file)
        })
        .collect()
}

/// The string literals that follow a file-naming call in `text`.
fn named_paths(text: &str) -> Vec<String> {
    const CALLS: [&str; 7] = [
        "include_str!(\"",
        "include_bytes!(\"",
        "Path::new(\"",
        "PathBuf::from(\"",
        ".join(\"",
        "read_to_string(\"",
        "File::open(\"",
    ];
    let mut found = Vec::new();
    for call in CALLS {
        let mut rest = text;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            if let Some(end) = rest.find('"') {
                found.push(rest[..end].to_owned());
            }
        }
    }
    found
}

#[test]
fn no_test_reads_outside_the_repository() {
    let root = repo_root();
    let beside = root.parent().expect("the repository has a parent folder");
    let mut files = Vec::new();
    code_files(&root, &mut files);
    assert!(
        files.len() > 50,
        "found only {} code files below {}",
        files.len(),
        root.display()
    );
    let mut escapes = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_default();
        let crate_base = base_of(file, &root);
        let file_base = file.parent().unwrap_or(&root).to_path_buf();
        for (path, from_file) in named_paths_from(&text) {
            let base = if from_file { &file_base } else { &crate_base };
            let outside = if Path::new(&path).is_absolute() {
                Path::new(&path).starts_with(beside) && !Path::new(&path).starts_with(&root)
            } else {
                !stays_inside(base, &path, &root)
            };
            if outside {
                escapes.push(format!("{}: {path:?}", file.display()));
            }
        }
        // The folder beside the repository that the project's notes live in, by any route.
        let sibling = ["..", "shared"].join("/");
        for line in text.lines().filter(|l| l.contains(&sibling)) {
            escapes.push(format!("{}: {}", file.display(), line.trim()));
        }
    }
    assert!(
        escapes.is_empty(),
        "these read outside the repository, which a fresh clone does not have:\n{}",
        escapes.join("\n")
    );
}

#[test]
fn the_scan_sees_an_escape() {
    let root = repo_root();
    let crate_dir = root.join("filters").join("jwt-auth");
    let climbing = ["..", "..", "..", "shared", "vectors"].join("/");
    assert!(!stays_inside(&crate_dir, &climbing, &root));
    assert!(stays_inside(&crate_dir, "../../tests/vectors", &root));
    assert_eq!(
        named_paths(r#"let p = dir.join("../x"); include_str!("a.json");"#),
        ["a.json", "../x"]
    );
    assert_eq!(
        base_of(&crate_dir.join("tests").join("pipeline.rs"), &root),
        crate_dir
    );
    // An include is taken from the including file's folder, other calls from the crate's.
    assert_eq!(
        named_paths_from(r#"include_str!("../../x.yaml"); p.join("y")"#),
        [("../../x.yaml".to_owned(), true), ("y".to_owned(), false)]
    );
}

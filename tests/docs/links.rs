//! Every relative link in our Markdown resolves: the file (or folder) exists inside the
//! repository, and a `#fragment` names a heading of the Markdown file it points to.

use crate::markdown::{self, Link, Parsed};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Whether a link leaves the repository's files: a URL with a scheme (`https:`, `mailto:`,
/// `oci:`) or a protocol-relative one.
fn is_external(target: &str) -> bool {
    if target.starts_with("//") {
        return true;
    }
    let scheme: String = target.chars().take_while(|c| *c != ':').collect();
    scheme.len() < target.len()
        && scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
}

/// `%20` and friends, as a browser reads a link.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `relative` taken from the folder `base` (both relative to the root), resolved lexically;
/// `None` if it climbs out of the repository.
fn resolve(base: &Path, relative: &str) -> Option<PathBuf> {
    let mut at = base.to_path_buf();
    for part in Path::new(relative).components() {
        match part {
            Component::ParentDir => {
                if !at.pop() {
                    return None;
                }
            }
            Component::Normal(name) => at.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(at)
}

/// What is wrong with `link`, found in `file` (relative to the root), if anything. `anchors`
/// gives a Markdown file's anchors (relative to the root).
fn problem(
    file: &Path,
    link: &Link,
    exists: &dyn Fn(&Path) -> bool,
    anchors: &mut dyn FnMut(&Path) -> Vec<String>,
) -> Option<String> {
    let target = link.target.as_str();
    if is_external(target) {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let path = percent_decoded(path);
    if path.starts_with('/') {
        return Some("an absolute path: write it relative to this file".to_owned());
    }
    let resolved = if path.is_empty() {
        file.to_path_buf()
    } else {
        let base = file.parent().unwrap_or(Path::new(""));
        match resolve(base, &path) {
            Some(resolved) => resolved,
            None => return Some("climbs out of the repository".to_owned()),
        }
    };
    if !exists(&resolved) {
        return Some(format!("{} does not exist", resolved.display()));
    }
    let fragment = fragment?;
    if resolved.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "#{fragment}: only links to Markdown files may name a heading ({} is not one)",
            resolved.display()
        ));
    }
    let fragment = percent_decoded(fragment);
    let offered = anchors(&resolved);
    if offered.contains(&fragment) {
        return None;
    }
    Some(format!(
        "{} has no heading with anchor #{fragment}; its anchors: {}",
        resolved.display(),
        offered.join(", ")
    ))
}

/// Every problem with the links of the files `texts` maps (relative path to text); other
/// files are looked for on disk.
fn problems(texts: &HashMap<PathBuf, String>) -> (usize, Vec<String>) {
    let mut cache: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut anchors = |path: &Path| -> Vec<String> {
        cache
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let text = texts
                    .get(path)
                    .cloned()
                    .unwrap_or_else(|| markdown::read(path));
                markdown::anchors(&markdown::parse(&text))
            })
            .clone()
    };
    let exists =
        |path: &Path| texts.contains_key(path) || markdown::repo_root().join(path).exists();
    let mut files: Vec<&PathBuf> = texts.keys().collect();
    files.sort();
    let mut checked = 0;
    let mut found = Vec::new();
    for file in files {
        let parsed: Parsed = markdown::parse(&texts[file]);
        for link in markdown::links(&parsed) {
            if is_external(&link.target) {
                continue;
            }
            checked += 1;
            if let Some(problem) = problem(file, &link, &exists, &mut anchors) {
                found.push(format!(
                    "{}:{}: ({}) {problem}",
                    file.display(),
                    link.line,
                    link.target
                ));
            }
        }
    }
    (checked, found)
}

/// The links between README, ARCHITECTURE, CONTRIBUTING, docs/ and the rest are how a
/// newcomer finds their way: none may lead nowhere.
#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let files = markdown::markdown_files();
    for expected in [
        "README.md",
        "ARCHITECTURE.md",
        "CONTRIBUTING.md",
        "docs/configuration.md",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(expected)),
            "{expected} was not found among the Markdown files: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.starts_with("tests/vendor")),
        "vendored sources are not ours to check"
    );
    let texts: HashMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), markdown::read(f)))
        .collect();
    let (checked, found) = problems(&texts);
    assert!(
        checked >= 50,
        "only {checked} relative links found: the scan is broken"
    );
    assert!(
        found.is_empty(),
        "{} broken link(s) of {checked}:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The check itself finds what it should: a missing file, a missing heading, a fragment on a
/// file that has no headings, a path out of the repository; and leaves URLs and code alone.
#[test]
fn broken_links_are_reported() {
    let page = "# Page\n\n## Known heading\n\n\
        [ok](#known-heading) [ok](other.md#other-title) [ok](../README.md) [ok](../tests/vectors/README.md)\n\
        [url](https://example.com/missing.md) `[code](missing.md)`\n\
        [bad](missing.md)\n\
        [bad](#unknown)\n\
        [bad](other.md#nope)\n\
        [bad](../Cargo.toml#L1)\n\
        [bad](../../outside.md)\n\
        [bad](/docs/page.md)\n";
    let texts: HashMap<PathBuf, String> = [
        (PathBuf::from("docs/page.md"), page.to_owned()),
        (PathBuf::from("docs/other.md"), "# Other title\n".to_owned()),
    ]
    .into_iter()
    .collect();
    let (checked, found) = problems(&texts);
    assert_eq!(checked, 10, "{found:?}");
    let lines: Vec<&str> = found
        .iter()
        .map(|p| p.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "docs/page.md:7",
            "docs/page.md:8",
            "docs/page.md:9",
            "docs/page.md:10",
            "docs/page.md:11",
            "docs/page.md:12"
        ],
        "{found:#?}"
    );
}

#[test]
fn urls_are_external_and_paths_are_not() {
    for url in [
        "https://x.example/a.md",
        "mailto:a@b.example",
        "oci://registry/x",
        "//cdn.example/x",
    ] {
        assert!(is_external(url), "{url}");
    }
    for path in ["docs/a.md", "a.md#x:y", "#heading", "../x.md"] {
        assert!(!is_external(path), "{path}");
    }
}

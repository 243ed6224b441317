//! Just enough Markdown for the documentation tests: which files, their fenced blocks, their
//! links and their headings' anchors (GitHub's rules).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The repository's root (this crate is `tests/`).
pub fn repo_root() -> PathBuf {
    filter_tests::repo_root()
}

/// Folders whose Markdown is not ours to check: build outputs, tools, and third-party
/// sources kept as published (their links point into their own projects).
const SKIPPED: &[&str] = &["target", "dist", "node_modules", "tests/vendor"];

/// Every Markdown file of the repository that we wrote, as paths relative to the root,
/// sorted.
pub fn markdown_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let relative = path
            .strip_prefix(root)
            .expect("below the root")
            .to_path_buf();
        let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            let skipped = name.starts_with('.') || SKIPPED.iter().any(|s| relative == Path::new(s));
            if !skipped {
                walk(root, &path, out);
            }
        } else if name.ends_with(".md") {
            out.push(relative);
        }
    }
}

/// A Markdown file's text.
pub fn read(relative: &Path) -> String {
    let path = repo_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The info string's words: the language first, then our markers.
    pub info: Vec<String>,
    /// The content, with the fence's own indentation removed.
    pub text: String,
}

/// A file split into its fenced blocks and the prose around them.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The fenced blocks, in order.
    pub blocks: Vec<Block>,
    /// Runs of prose between blocks: (1-based first line, text).
    pub prose: Vec<(usize, String)>,
}

/// The opening fence on `line`, if it is one: its indentation, character, length and info.
fn fence(line: &str) -> Option<(usize, char, usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = line.get(indent..)?;
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let info = rest.get(len..)?.trim();
    // A backtick fence's info string may not hold a backtick (CommonMark).
    if ch == '`' && info.contains('`') {
        return None;
    }
    Some((indent, ch, len, info))
}

/// Splits `text` into fenced blocks and prose. An unclosed fence runs to the end, as in
/// CommonMark.
pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut prose = String::new();
    let mut prose_start = 1;
    let mut open: Option<(Block, usize, char, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if let Some((block, indent, ch, len)) = &mut open {
            let trimmed = line.trim();
            let closes = trimmed.len() >= *len && trimmed.chars().all(|c| c == *ch);
            if closes {
                let (block, ..) = open.take().expect("open block");
                parsed.blocks.push(block);
                prose_start = number + 1;
            } else {
                let strip = line.len() - line.trim_start_matches(' ').len();
                let content = line.get(strip.min(*indent)..).unwrap_or("");
                block.text.push_str(content);
                block.text.push('\n');
            }
            continue;
        }
        if let Some((indent, ch, len, info)) = fence(line) {
            if !prose.is_empty() {
                parsed.prose.push((prose_start, std::mem::take(&mut prose)));
            }
            let block = Block {
                line: number,
                info: info.split_whitespace().map(str::to_owned).collect(),
                text: String::new(),
            };
            open = Some((block, indent, ch, len));
            continue;
        }
        if prose.is_empty() {
            prose_start = number;
        }
        prose.push_str(line);
        prose.push('\n');
    }
    if let Some((block, ..)) = open {
        parsed.blocks.push(block);
    }
    if !prose.is_empty() {
        parsed.prose.push((prose_start, prose));
    }
    parsed
}

/// `text` with every inline code span replaced by spaces (keeping line breaks, so line
/// numbers still hold): links inside code are not links.
pub fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // The closing run has exactly the opening's length.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|c| **c == '`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &chars[i..j + run] {
                    out.push(if *c == '\n' { '\n' } else { ' ' });
                }
                i = j + run;
            }
            None => {
                for _ in 0..run {
                    out.push('`');
                }
                i += run;
            }
        }
    }
    out
}

/// A link found in prose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// 1-based line of the link.
    pub line: usize,
    /// Where it points, as written.
    pub target: String,
}

/// Every inline link, image and reference definition in a file's prose.
pub fn links(parsed: &Parsed) -> Vec<Link> {
    let inline = regex::Regex::new(r#"\]\(\s*([^()\s]+)(?:\s+"[^"]*")?\s*\)"#).expect("regex");
    let definition = regex::Regex::new(r"(?m)^ {0,3}\[[^\]]+\]:\s*(\S+)").expect("regex");
    let mut out = Vec::new();
    for (start, text) in &parsed.prose {
        let text = without_code_spans(text);
        for re in [&inline, &definition] {
            for found in re.captures_iter(&text) {
                let target = found.get(1).expect("group");
                let line = start + text[..target.start()].matches('\n').count();
                let target = target
                    .as_str()
                    .trim_start_matches('<')
                    .trim_end_matches('>');
                out.push(Link {
                    line,
                    target: target.to_owned(),
                });
            }
        }
    }
    out.sort_by_key(|l| l.line);
    out
}

/// GitHub's anchor for a heading's text: the rendered text lowercased, every character that
/// is not a letter, a digit, a space, `-` or `_` dropped, and each space made a `-`.
pub fn slug(heading: &str) -> String {
    let rendered = rendered_text(heading);
    rendered
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text as GitHub renders it: links show their text, code its content, emphasis
/// markers go.
fn rendered_text(heading: &str) -> String {
    let link = regex::Regex::new(r"!?\[([^\]]*)\]\([^)]*\)").expect("regex");
    let text = link.replace_all(heading, "$1");
    text.chars().filter(|c| *c != '`' && *c != '*').collect()
}

/// Every anchor a file offers: its headings' slugs (a repeated one gets `-1`, `-2`, ... as on
/// GitHub) and explicit `<a id=...>`/`<a name=...>` anchors.
pub fn anchors(parsed: &Parsed) -> Vec<String> {
    let heading =
        regex::Regex::new(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$").expect("regex");
    let html = regex::Regex::new(r#"<a\s+(?:id|name)="([^"]+)""#).expect("regex");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, text) in &parsed.prose {
        for line in text.lines() {
            if let Some(found) = heading.captures(line) {
                let base = slug(&found[1]);
                let count = seen.entry(base.clone()).or_insert(0);
                out.push(if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                });
                *count += 1;
            }
            for found in html.captures_iter(line) {
                out.push(found[1].to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("`jwt_auth`: JWT validation"),
            "jwt_auth-jwt-validation"
        );
        assert_eq!(
            slug("Ship it: images, Istio, remote loading, Envoy versions"),
            "ship-it-images-istio-remote-loading-envoy-versions"
        );
        assert_eq!(slug("Retry-After for clients"), "retry-after-for-clients");
        assert_eq!(
            slug("`gateway.wasm`: all four in one filter entry"),
            "gatewaywasm-all-four-in-one-filter-entry"
        );
        assert_eq!(
            slug("Why **+40 µs** and [not](x.md) less"),
            "why-40-µs-and-not-less"
        );
        assert_eq!(slug("a  b"), "a--b");
    }

    #[test]
    fn repeated_headings_get_numbered_anchors() {
        let parsed =
            parse("# Title\n## Notes\ntext\n## Notes\n```md\n## Not a heading\n```\n## Notes ##\n");
        assert_eq!(anchors(&parsed), ["title", "notes", "notes-1", "notes-2"]);
    }

    #[test]
    fn fences_split_blocks_from_prose() {
        let text = "intro\n```json rate_limit\n{}\n```\nmiddle\n  ~~~~yaml fragment\n  a: 1\n    b: 2\n  ~~~~\nend\n";
        let parsed = parse(text);
        assert_eq!(
            parsed.blocks,
            [
                Block {
                    line: 2,
                    info: vec!["json".into(), "rate_limit".into()],
                    text: "{}\n".into()
                },
                Block {
                    line: 6,
                    info: vec!["yaml".into(), "fragment".into()],
                    text: "a: 1\n  b: 2\n".into()
                },
            ]
        );
        let prose: Vec<usize> = parsed.prose.iter().map(|(line, _)| *line).collect();
        assert_eq!(prose, [1, 5, 10]);
    }

    #[test]
    fn links_in_code_are_not_links() {
        let parsed = parse(
            "See [a](a.md) and `[b](b.md)`, ``[c](`c.md`)``,\n[two\nlines](d.md#x \"title\").\n\n[ref]: e.md\n```text\n[f](f.md)\n```\n",
        );
        let found = links(&parsed);
        let found: Vec<(usize, &str)> = found.iter().map(|l| (l.line, l.target.as_str())).collect();
        assert_eq!(found, [(1, "a.md"), (3, "d.md#x"), (5, "e.md")]);
    }
}

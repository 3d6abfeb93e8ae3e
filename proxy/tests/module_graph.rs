//! The modules of the proxy, the certificates crate and the control plane
//! form a DAG: no top-level module of a crate's `src/` depends, through any
//! chain of `crate::` paths, on itself.
//!
//! The rule (the same as the repository's cycle checker): every top-level
//! module of `src/` (`src/x.rs` or `src/x/`) is a node, `lib.rs` and
//! `main.rs` are not; every `crate::name` (including each name of a
//! `use crate::{a, b}` group) written outside a `#[cfg(test)]` module is an
//! edge from the module of that file to `name`. Reads the sources with std
//! only, so it runs without building anything else.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module name -> the modules it names through `crate::`.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn proxy_modules_have_no_cycle() {
    assert_acyclic("proxy");
}

#[test]
fn certs_modules_have_no_cycle() {
    assert_acyclic("certs");
}

#[test]
fn control_plane_modules_have_no_cycle() {
    assert_acyclic("control-plane");
}

#[test]
fn checker_finds_a_cycle_and_ignores_test_modules() {
    let mut graph = Graph::new();
    let (code, external) = strip_test_modules(
        "use crate::{b::X, c};\n#[cfg(test)]\nmod tests {\n    use crate::d;\n}\n#[cfg(test)]\nmod more;\n",
    );
    assert_eq!(external, vec!["more".to_owned()]);
    add_edges(&mut graph, "a", &code);
    add_edges(&mut graph, "b", "fn f() { crate::a::g() }");
    add_edges(&mut graph, "d", "use crate::a;");
    let cycles = cycles(&graph);
    assert_eq!(cycles, vec![vec!["a".to_owned(), "b".to_owned()]]);
}

fn assert_acyclic(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let graph = module_graph(&src);
    assert!(!graph.is_empty(), "no module found under {}", src.display());
    let cycles = cycles(&graph);
    let report: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let members: BTreeSet<&String> = cycle.iter().collect();
            let edges: Vec<String> = cycle
                .iter()
                .map(|from| {
                    let to: Vec<&str> = graph[from]
                        .iter()
                        .filter(|to| members.contains(to))
                        .map(String::as_str)
                        .collect();
                    format!("  {from} -> {}", to.join(", "))
                })
                .collect();
            format!("cycle [{}]:\n{}", cycle.join(", "), edges.join("\n"))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "{} has module cycles; move the shared item to the lower module:\n{}",
        src.display(),
        report.join("\n")
    );
}

/// Reads every `.rs` file under `src` (test-only module files excluded).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_files(src, &mut files);
    let mut test_files = BTreeSet::new();
    let mut sources = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("source file is readable");
        let (code, test_mods) = strip_test_modules(&text);
        let dir = module_dir(&file);
        for name in test_mods {
            test_files.insert(dir.join(format!("{name}.rs")));
            test_files.insert(dir.join(&name).join("mod.rs"));
        }
        sources.push((file, code));
    }
    let mut graph = Graph::new();
    for (file, code) in sources {
        if test_files.iter().any(|test| file.starts_with(test)) {
            continue;
        }
        let rel = file.strip_prefix(src).expect("file is under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let node = first.trim_end_matches(".rs");
        if node == "lib" || node == "main" {
            continue;
        }
        add_edges(&mut graph, node, &code);
    }
    graph
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("src directory is readable")
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The directory in which `mod x;` declared in `file` looks for `x.rs`.
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().expect("file has a directory").to_path_buf();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match stem {
        "mod" | "lib" | "main" => parent,
        _ => parent.join(stem),
    }
}

/// Adds an edge from `node` for every `crate::name` in `code`.
fn add_edges(graph: &mut Graph, node: &str, code: &str) {
    let targets = graph.entry(node.to_owned()).or_default();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(found) = code[at..].find("crate::") {
        let start = at + found;
        at = start + "crate::".len();
        if start > 0 && is_ident(bytes[start - 1]) {
            continue;
        }
        let rest = &code[at..];
        let names = if let Some(group) = rest.strip_prefix('{') {
            top_level_group_names(group)
        } else {
            vec![leading_ident(rest)]
        };
        for name in names {
            if !name.is_empty()
                && name != node
                && name.starts_with(|c: char| c.is_ascii_lowercase())
            {
                targets.insert(name.to_owned());
            }
        }
    }
}

/// The first path segment of every entry of a `{a::X, b, c::{..}}` group
/// (`group` starts after the opening brace).
fn top_level_group_names(group: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut expect_name = true;
    let mut i = 0;
    let bytes = group.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' if depth == 0 => break,
            b'}' => depth -= 1,
            b',' if depth == 0 => expect_name = true,
            c if expect_name && is_ident(c) => {
                let name = leading_ident(&group[i..]);
                names.push(name);
                expect_name = false;
                i += name.len();
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

fn leading_ident(text: &str) -> &str {
    let end = text
        .bytes()
        .position(|c| !is_ident(c))
        .unwrap_or(text.len());
    &text[..end]
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `text` without its `#[cfg(test)] mod name { .. }` blocks, and the names
/// of its `#[cfg(test)] mod name;` declarations (test modules in own files).
fn strip_test_modules(text: &str) -> (String, Vec<String>) {
    const MARK: &str = "#[cfg(test)]";
    let mut code = String::new();
    let mut external = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find(MARK) {
        let start = at + found;
        let after = skip_attributes(text, start + MARK.len());
        let Some(module) = module_item(&text[after..]) else {
            code.push_str(&text[at..start + MARK.len()]);
            at = start + MARK.len();
            continue;
        };
        code.push_str(&text[at..start]);
        let (name, body_start, inline) = module;
        if inline {
            at = after + body_start + block_len(&text[after + body_start..]);
        } else {
            external.push(name);
            at = after + body_start;
        }
    }
    code.push_str(&text[at..]);
    (code, external)
}

/// Skips whitespace and further `#[..]` attributes from `at`.
fn skip_attributes(text: &str, mut at: usize) -> usize {
    loop {
        let trimmed = text[at..].trim_start();
        at = text.len() - trimmed.len();
        if trimmed.starts_with("#[") {
            at += 1 + block_len(&trimmed[1..]);
        } else {
            return at;
        }
    }
}

/// For `[pub[(..)]] mod name {` or `.. mod name;`: the name, the offset of
/// the `{` (or past the `;`) and whether the module is inline.
fn module_item(text: &str) -> Option<(String, usize, bool)> {
    let mut rest = text;
    if let Some(after_pub) = rest.strip_prefix("pub") {
        rest = after_pub.trim_start();
        if rest.starts_with('(') {
            rest = &rest[block_len(rest)..];
        }
        rest = rest.trim_start();
    }
    let after_mod = rest.strip_prefix("mod")?;
    if !after_mod.starts_with(char::is_whitespace) {
        return None;
    }
    let after_mod = after_mod.trim_start();
    let name = leading_ident(after_mod);
    let tail = after_mod[name.len()..].trim_start();
    let offset = text.len() - tail.len();
    match tail.as_bytes().first() {
        Some(b'{') => Some((name.to_owned(), offset, true)),
        Some(b';') => Some((name.to_owned(), offset + 1, false)),
        _ => None,
    }
}

/// Length of the bracketed block that starts `text` (`{`, `[` or `(`),
/// skipping comments, strings and character literals.
fn block_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i += text[i..].find('\n').unwrap_or(text.len() - i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += text[i..].find("*/").map_or(text.len() - i, |end| end + 2);
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'r' if (i == 0 || !is_ident(bytes[i - 1]))
                && matches!(bytes.get(i + 1), Some(b'#') | Some(b'"')) =>
            {
                let hashes = text[i + 1..].bytes().take_while(|&c| c == b'#').count();
                if bytes.get(i + 1 + hashes) == Some(&b'"') {
                    let close = format!("\"{}", "#".repeat(hashes));
                    let body = i + 2 + hashes;
                    i = body
                        + text[body..]
                            .find(&close)
                            .map_or(text.len() - body, |end| end + close.len());
                    continue;
                }
            }
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                i += 3 + text[i + 3..].find('\'').unwrap_or(0);
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.len()
}

/// The strongly connected components with more than one module (Tarjan),
/// each sorted, in sorted order.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, node: &'a str) {
            let index = self.index.len();
            self.index.insert(node, index);
            self.low.insert(node, index);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    component.push(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan.found.sort();
    tarjan.found
}

//! Finds where a key path sits in YAML text, so semantic errors (found after
//! parsing, when serde's positions are gone) still name `line:column`.
//!
//! A path is a list of mapping keys and sequence indexes written `[N]`, e.g.
//! `["services", "api", "routes", "[1]", "split"]`. Block and flow style
//! (`{ a: 1 }`, `[ x, y ]`) are both followed, as far as one line holds a
//! flow collection. When a segment is not found the position of the deepest
//! one found is returned, so an error still points at the right neighbourhood.

/// 1-based line and column of the last segment of `path` found.
pub fn locate(text: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut here = Here {
        at: None,
        block: None,
    };
    for segment in path {
        let next = match index(segment) {
            Some(n) => find_item(&lines, &here, n),
            None => find_key(&lines, &here, segment),
        };
        match next {
            Some(next) => here = next,
            None => break,
        }
    }
    here.at
        .map_or((1, 1), |(line, column)| (line + 1, column + 1))
}

/// Where the last segment was found.
struct Here {
    /// 0-based line and byte column.
    at: Option<(usize, usize)>,
    /// Lines belonging to it are indented more than this.
    block: Option<usize>,
}

fn index(segment: &str) -> Option<usize> {
    segment.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

fn starts_with_key(text: &str, key: &str) -> bool {
    let unquoted = text.strip_prefix(key).is_some_and(|r| r.starts_with(':'));
    unquoted || text.starts_with(&format!("\"{key}\":")) || text.starts_with(&format!("'{key}':"))
}

fn find_key(lines: &[&str], here: &Here, key: &str) -> Option<Here> {
    if let Some((line, column)) = here.at {
        // A flow mapping on the same line: `parent: { a: 1, key: 2 }`, or
        // the first key of a block sequence item: `- key: 1`.
        let rest = &lines[line][column..];
        if let Some(offset) = flow_key(rest, key) {
            return Some(Here {
                at: Some((line, column + offset)),
                block: here.block,
            });
        }
        if here.block.is_some_and(|b| b < column) && starts_with_key(rest, key) {
            return Some(Here {
                at: Some((line, column)),
                block: Some(column),
            });
        }
    }
    let first = here.at.map_or(0, |(line, _)| line + 1);
    let mut child_indent = None;
    for (i, line) in lines.iter().enumerate().skip(first) {
        if is_blank(line) {
            continue;
        }
        let indent = indent(line);
        if here.block.is_some_and(|b| indent <= b) {
            return None;
        }
        if *child_indent.get_or_insert(indent) != indent {
            continue;
        }
        if starts_with_key(&line[indent..], key) {
            return Some(Here {
                at: Some((i, indent)),
                block: Some(indent),
            });
        }
    }
    None
}

fn find_item(lines: &[&str], here: &Here, n: usize) -> Option<Here> {
    let (line, column) = here.at?;
    // A flow sequence on the key's line: `key: [ a, b ]`.
    let rest = &lines[line][column..];
    if let Some(open) = rest.find('[') {
        if rest[..open].trim_end().ends_with(':') {
            let offset = flow_item(&rest[open + 1..], n)?;
            return Some(Here {
                at: Some((line, column + open + 1 + offset)),
                block: here.block,
            });
        }
    }
    // A block sequence: `- ` items at one indentation, not less than the key's.
    let mut item_indent = None;
    let mut count = 0;
    for (i, text) in lines.iter().enumerate().skip(line + 1) {
        if is_blank(text) {
            continue;
        }
        let indent = indent(text);
        let dash = text[indent..].starts_with('-');
        let first = *item_indent.get_or_insert(indent);
        if indent < column || indent < first || (indent == first && !dash) {
            return None;
        }
        if indent == first {
            if count == n {
                let content = text[indent + 1..].len() - text[indent + 1..].trim_start().len();
                return Some(Here {
                    at: Some((i, indent + 1 + content)),
                    block: Some(indent),
                });
            }
            count += 1;
        }
    }
    None
}

/// Byte offset of `key:` as a key of a flow mapping in `text`.
fn flow_key(text: &str, key: &str) -> Option<usize> {
    let needle = format!("{key}:");
    let mut from = 0;
    while let Some(found) = text[from..].find(&needle) {
        let at = from + found;
        let before = text[..at].trim_end_matches(' ');
        if before.ends_with('{') || before.ends_with(',') {
            return Some(at);
        }
        from = at + needle.len();
    }
    None
}

/// Byte offset of the `n`-th element of a flow sequence whose `[` came just
/// before `text`.
fn flow_item(text: &str, n: usize) -> Option<usize> {
    let (mut depth, mut count, mut quote) = (0usize, 0usize, None);
    let mut element_starts = true;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if element_starts && !c.is_whitespace() && !matches!(c, ']' | ',') {
            if count == n {
                return Some(i);
            }
            element_starts = false;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' | '{' => depth += 1,
            ']' | '}' if depth == 0 => return None,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                count += 1;
                element_starts = true;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "mesh:\n  trust_domain: t\nservices:\n  web: {}\n  api:\n    protocol: http\n    split:\n      - { subset: v3, weight: 1 }\n";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(locate(TEXT, &["services"]), (3, 1));
        assert_eq!(locate(TEXT, &["services", "api"]), (5, 3));
        assert_eq!(locate(TEXT, &["services", "api", "split"]), (7, 5));
        assert_eq!(locate(TEXT, &["mesh", "trust_domain"]), (2, 3));
        assert_eq!(
            locate(TEXT, &["services", "api", "split", "[0]", "weight"]),
            (8, 23)
        );
    }

    #[test]
    fn finds_keys_in_flow_mappings() {
        let text = "mesh:\n  tracing: { otlp_endpoint: x, sample_ratio: 2.0 }\nservices:\n  api: { policy: { timeout: 0s } }\n";
        assert_eq!(locate(text, &["mesh", "tracing", "sample_ratio"]), (2, 32));
        assert_eq!(locate(text, &["mesh", "tracing", "otlp_endpoint"]), (2, 14));
        assert_eq!(
            locate(text, &["services", "api", "policy", "timeout"]),
            (4, 20)
        );
        assert_eq!(locate(text, &["mesh", "tracing", "protocol"]), (2, 3));
    }

    #[test]
    fn finds_sequence_items_in_both_styles() {
        let text = "routes:\n  - match: { path_prefix: /a }\n    split: [ { subset: a, weight: 1 }, { subset: \"b,c\", weight: 0 } ]\n  - split: []\nrules:\n- { to: api }\n- { to: web, from: [a, b] }\n";
        assert_eq!(locate(text, &["routes", "[0]"]), (2, 5));
        assert_eq!(
            locate(text, &["routes", "[0]", "match", "path_prefix"]),
            (2, 14)
        );
        assert_eq!(
            locate(text, &["routes", "[0]", "split", "[1]", "weight"]),
            (3, 57)
        );
        assert_eq!(locate(text, &["routes", "[1]", "split"]), (4, 5));
        assert_eq!(locate(text, &["rules", "[1]", "from", "[1]"]), (7, 24));
        assert_eq!(locate(text, &["routes", "[2]"]), (1, 1), "no third route");
    }

    #[test]
    fn falls_back_to_the_deepest_prefix() {
        assert_eq!(locate(TEXT, &["services", "api", "routes"]), (5, 3));
        assert_eq!(locate(TEXT, &["nothing"]), (1, 1));
        assert_eq!(locate(TEXT, &["services", "api", "split", "[3]"]), (7, 5));
    }
}

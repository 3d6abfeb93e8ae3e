//! Finds where a key path sits in YAML text, so semantic errors (found after
//! parsing) can still name `line:column` like parse errors do.
//!
//! Walks block-style YAML by indentation; a key inside a flow mapping
//! (`{ a: 1 }`) is found on its parent's line. When a key is not found the
//! deepest location found so far is returned.

/// 1-based line and column of the last key of `path` (e.g.
/// `["services", "api", "split"]`), or of the deepest prefix found.
pub fn locate(text: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = (1, 1);
    let mut start = 0;
    let mut parent_indent: Option<usize> = None;
    'segments: for segment in path {
        let needle = format!("{segment}:");
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if i > start && parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            let key = trimmed.trim_start_matches("- ");
            if key.starts_with(&needle) || key.starts_with(&format!("\"{segment}\":")) {
                let column = indent + (trimmed.len() - key.len()) + 1;
                found = (i + 1, column);
                start = i + 1;
                parent_indent = Some(indent + (trimmed.len() - key.len()));
                continue 'segments;
            }
            if let Some(at) = line
                .find(&format!(" {needle}"))
                .or_else(|| line.find(&format!("{{{needle}")))
            {
                if i + 1 == found.0 || i == start.saturating_sub(1) {
                    found = (i + 1, at + 2);
                    continue 'segments;
                }
            }
        }
        break;
    }
    found
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
    }

    #[test]
    fn falls_back_to_the_deepest_prefix() {
        assert_eq!(locate(TEXT, &["services", "api", "routes"]), (5, 3));
        assert_eq!(locate(TEXT, &["nothing"]), (1, 1));
    }
}

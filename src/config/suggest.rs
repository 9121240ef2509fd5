//! "Unknown key" messages with did-you-mean hints.

use super::raw::SECTIONS;

pub(super) fn key_path(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

pub(super) fn unknown_key(field: &str, expected: &[&str]) -> (String, Option<String>) {
    let mut sorted: Vec<&str> = expected.to_vec();
    sorted.sort_unstable();
    let section = SECTIONS.iter().find(|(_, keys)| {
        let mut k: Vec<&str> = keys.to_vec();
        k.sort_unstable();
        k == sorted
    });
    let (name, keys) = match section {
        Some((name, keys)) => (*name, *keys),
        None => ("", expected),
    };
    let message = if name.is_empty() {
        format!("unknown top-level key `{field}`")
    } else {
        format!("unknown key `{field}` in `{name}`")
    };
    let mut hint = String::new();
    // A key that exists verbatim in another section was most likely misplaced; that
    // beats a spelling suggestion (`ttl` at the top level is `session.ttl`, not `tls`).
    // Some keys live in several sections (`max_connections`); name them all.
    let others: Vec<&str> = SECTIONS
        .iter()
        .filter(|(s, keys)| *s != name && keys.contains(&field))
        .map(|(s, _)| *s)
        .collect();
    if let [other] = others.as_slice()
        && other.is_empty()
    {
        hint.push_str(&format!("`{field}` is a top-level key; "));
    } else if !others.is_empty() {
        let paths: Vec<String> = others
            .iter()
            .map(|s| format!("`{}`", key_path(s, field)))
            .collect();
        hint.push_str(&format!("did you mean {}? ", paths.join(" or ")));
    } else if let Some((_, best)) = keys
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
    {
        hint.push_str(&format!("did you mean `{best}`? "));
    }
    let where_ = if name.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{name}`")
    };
    hint.push_str(&format!("valid keys {where_}: {}", keys.join(", ")));
    (message, Some(hint))
}

/// Levenshtein distance, for "did you mean" (key names are short).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    #[test]
    fn unknown_key_at_a_nested_level() {
        let e = assert_err(
            "cookies:\n  name: sid\n  nmae: x\n",
            5,
            3,
            "unknown key `nmae` in `cookies`",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains("did you mean `name`?"), "{hint}");
        assert!(hint.contains("same_site"), "{hint}");
        let e = assert_err(
            "store:\n  storage:\n    max_entires: 5\n",
            5,
            5,
            "in `store.storage`",
        );
        assert!(e.hint().unwrap_or_default().contains("max_entries"));
        // A key written in the wrong section is pointed to its section.
        let e = assert_err("ttl: 5s\n", 3, 1, "unknown top-level key `ttl`");
        assert!(
            e.hint().unwrap_or_default().contains("`session.ttl`"),
            "{e}"
        );
    }

    /// `SECTIONS` must list exactly the fields of each raw struct (serde reports the
    /// struct's field list; a mismatch would mislabel the section).
    #[test]
    fn every_section_is_recognised_for_unknown_keys() {
        for (name, keys) in SECTIONS {
            let yaml = if name.is_empty() {
                "bogus_key: 1\n".to_owned()
            } else {
                let mut yaml = String::new();
                let parts: Vec<&str> = name.split('.').collect();
                for (depth, part) in parts.iter().enumerate() {
                    yaml.push_str(&format!("{}{part}:\n", "  ".repeat(depth)));
                }
                yaml.push_str(&format!("{}bogus_key: 1\n", "  ".repeat(parts.len())));
                yaml
            };
            let e = err(&yaml);
            let want = if name.is_empty() {
                "unknown top-level key `bogus_key`".to_owned()
            } else {
                format!("unknown key `bogus_key` in `{name}`")
            };
            assert_eq!(e.message(), want, "section {name:?}");
            assert!(e.hint().unwrap_or_default().contains(&keys.join(", ")));
        }
    }

    #[test]
    fn misplaced_max_connections_names_both_sections() {
        let e = assert_err(
            "max_connections: 5\n",
            3,
            1,
            "unknown top-level key `max_connections`",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("`store.storage.max_connections` or `limits.max_connections`"),
            "{hint}"
        );
        let e = assert_err(
            "limits: {max_conections: 5}\n",
            3,
            10,
            "unknown key `max_conections` in `limits`",
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("did you mean `max_connections`?"),
            "{e}"
        );
    }
}

//! `${VAR}` expansion in string values.

use super::EnvLookup;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExpandError {
    Unset(String),
    Invalid,
}

/// Replaces `${NAME}` with the variable's value and `$${` with a literal `${`. Other
/// `$` are literal. Values are inserted verbatim (not expanded again), so a secret may
/// contain anything.
pub(super) fn expand_vars(input: &str, env: EnvLookup<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(ExpandError::Invalid)?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ExpandError::Invalid);
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The inverse of [`expand_vars`] for a literal: `${` → `$${`.
pub(super) fn escape_vars(s: &str) -> String {
    s.replace("${", "$${")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_vars("a${PORT}b$${PORT}c$d$$e", &env).as_deref(),
            Ok("a6380b${PORT}c$d$$e")
        );
        // Values are inserted verbatim: YAML syntax and `${` in them mean nothing.
        assert_eq!(
            expand_vars("${TRICKY}", &env).as_deref(),
            Ok("a: b # c ${SESSION_SECRET} $${")
        );
        assert_eq!(
            expand_vars("x${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        for bad in ["${", "${}", "${1A}", "${A-B}", "${A:-x}", "${A"] {
            assert_eq!(expand_vars(bad, &env), Err(ExpandError::Invalid), "{bad}");
        }
        assert_eq!(escape_vars("a${b}"), "a$${b}");
        assert_eq!(
            expand_vars(&escape_vars("a${b}$${c}"), &env).as_deref(),
            Ok("a${b}$${c}")
        );
    }

    #[test]
    fn env_expansion_types_and_errors() {
        let c = ok(
            "store:\n  engine: redis\n  key_prefix: \"app${PORT}:\"\n  storage:\n    port: ${PORT}\n    \
             password: \"${TRICKY}\"\n",
        );
        assert_eq!(
            redis(&c).topology,
            RedisTopology::Server {
                host: "127.0.0.1".into(),
                port: 6380
            }
        );
        assert_eq!(c.store.key_prefix, "app6380:");
        assert_eq!(
            redis(&c).password,
            Some(Secret("a: b # c ${SESSION_SECRET} $${".into()))
        );
        let e = assert_err("listen: \"${NOPE}:80\"\n", 3, 9, "`NOPE` is not set");
        assert!(e.message().contains("`listen`"));
        assert_err("cookies:\n  domain: ${A:-x}\n", 4, 11, "malformed");
        let c = ok("cookies:\n  path: \"/a$${b}\"\n");
        assert_eq!(c.cookies.path, "/a${b}");
    }
}

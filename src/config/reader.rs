//! Errors, and the readers that turn one raw scalar into a typed value or a
//! positioned error.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_saphyr::Location;

use super::{
    EnvLookup,
    expand::{ExpandError, expand_vars},
    raw::{Scalar, Str, Val},
    suggest::unknown_key,
    values::{format_size, parse_duration, parse_size},
};

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// Why a configuration could not be loaded. `Display` is the message shown to the
/// operator: `FILE:LINE:COLUMN: message`, then `  hint: ...` on its own line when
/// there is something useful to suggest. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, too large, not UTF-8 is
    /// reported as [`ConfigError::Invalid`]).
    #[error("{}: cannot read: {error}", .path.display())]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message already includes it, and error chains printed
        // by callers would repeat it otherwise.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}:{}:{}: {}{}", .path.display(), .line, .column, .message, HintSuffix(.hint.as_deref()))]
    Invalid {
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: u64,
        /// 1-based column, in characters.
        column: u64,
        message: String,
        hint: Option<String>,
    },
}

impl ConfigError {
    /// `(line, column)` of the problem, when it is in the file's content.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
        }
    }

    /// The message without location and hint.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Io { error, .. } => format!("cannot read: {error}"),
            ConfigError::Invalid { message, .. } => message.clone(),
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { hint, .. } => hint.as_deref(),
        }
    }
}

pub(super) struct HintSuffix<'a>(Option<&'a str>);

impl fmt::Display for HintSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(h) => write!(f, "\n  hint: {h}"),
            None => Ok(()),
        }
    }
}

pub(super) const GEN_SECRET_HINT: &str =
    "run `session-sidecar gen-secret` and pass it as secrets: [\"${SESSION_SECRET}\"]";
pub(super) const DURATION_HINT: &str =
    "durations are written like 500ms, 10s, 5m, 2h, 1d (a bare integer means seconds)";
pub(super) const SIZE_HINT: &str =
    "sizes are written like 512B, 8KiB (8192), 8KB (8000), 1MiB (a bare integer means bytes)";

/// Upper bound of `limits.max_connections` and `limits.max_connections_per_ip`: about
/// Linux's ceiling on open file descriptors per process (`fs.nr_open`, 1048576).
pub(super) const MAX_CONNECTIONS_LIMIT: i128 = 1_000_000;
pub(super) const MAX_CONNECTIONS_HINT: &str = "a whole number of connections from 1 to 1000000, \
     for example `max_connections: 10000`";
pub(super) const MAX_CONNECTIONS_PER_IP_HINT: &str = "a whole number of connections from 1 to 1000000, \
     or `null` for no per-address cap; behind a load balancer or reverse proxy every \
     connection comes from its address, so raise it or use `null` there";

/// Everything validation needs besides the raw values.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) env: EnvLookup<'a>,
}

/// Where to point when a required key is missing and there is no better place.
pub(super) fn file_start() -> Location {
    Location::UNKNOWN
}

pub(super) fn line_col(loc: &Location) -> (u64, u64) {
    if loc.line() == 0 {
        (1, 1)
    } else {
        (loc.line(), loc.column().max(1))
    }
}

/// Control characters from the file or from the parser must not reach the terminal.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Ctx<'_> {
    pub(super) fn err(
        &self,
        at: &Location,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        let (line, column) = line_col(at);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint,
        }
    }

    pub(super) fn yaml_error(&self, err: &serde_saphyr::Error) -> ConfigError {
        use serde_saphyr::{Error as E, MessageFormatter, UserMessageFormatter};
        let at = err.location().unwrap_or(Location::UNKNOWN);
        // Look through wrappers to the error that says what went wrong.
        let mut inner = err;
        while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = inner {
            inner = error;
        }
        let (message, hint) = match inner {
            E::SerdeUnknownField {
                field, expected, ..
            } => unknown_key(&sanitize(field), expected),
            E::DuplicateMappingKey { key, .. } => (
                match key {
                    Some(k) => format!("duplicate key `{}`", sanitize(k)),
                    None => "duplicate key".to_owned(),
                },
                Some("each key may appear once per section; remove one of them".to_owned()),
            ),
            E::Unexpected { expected, .. } => match *expected {
                "mapping start" => (
                    "expected a section (indented `key: value` lines or `{ key: value }`)"
                        .to_owned(),
                    Some("see docs/configuration.md for the keys of each section".to_owned()),
                ),
                "sequence start" => (
                    "expected a list".to_owned(),
                    Some("write a list as `[a, b]` or as one `- item` line per entry".to_owned()),
                ),
                "string scalar" => (
                    "expected a single value, found a list or mapping".to_owned(),
                    None,
                ),
                other => (format!("expected {}", sanitize(other)), None),
            },
            E::Budget { .. } => (
                "the document is too large or too deeply nested for a configuration".to_owned(),
                None,
            ),
            E::MultipleDocuments { .. } => (
                "only one YAML document is allowed".to_owned(),
                Some("remove the `---` separator".to_owned()),
            ),
            E::UnsupportedTag { tag, .. } => (
                format!("unsupported YAML tag `{}`", sanitize(tag)),
                Some("remove the tag; values are typed by their key".to_owned()),
            ),
            other => (sanitize(&UserMessageFormatter.format_message(other)), None),
        };
        self.err(&at, message, hint)
    }

    // ---- scalar conversions ----------------------------------------------------

    /// Expands `${VAR}` in a string value.
    pub(super) fn expand(
        &self,
        value: &str,
        at: &Location,
        key: &str,
    ) -> Result<String, ConfigError> {
        expand_vars(value, self.env).map_err(|e| match e {
            ExpandError::Unset(name) => self.err(
                at,
                format!("`{key}`: environment variable `{name}` is not set"),
                Some(if key == "secrets" {
                    format!("export {name}=<secret>; to create one, {GEN_SECRET_HINT}")
                } else {
                    format!("export {name}, or write `$${{` for a literal `${{`")
                }),
            ),
            ExpandError::Invalid => self.err(
                at,
                format!("`{key}`: malformed `${{...}}` reference"),
                Some(
                    "write `${NAME}` with NAME made of letters, digits and `_` (no defaults \
                     like `${NAME:-x}`); write `$${` for a literal `${`"
                        .to_owned(),
                ),
            ),
        })
    }

    pub(super) fn string(&self, v: &Str, key: &str) -> Result<String, ConfigError> {
        self.expand(&v.value, &v.referenced, key)
    }

    pub(super) fn opt_string(
        &self,
        v: &Option<Str>,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        v.as_ref().map(|v| self.string(v, key)).transpose()
    }

    /// The scalar as text (after expansion) for keys that parse text themselves.
    pub(super) fn scalar_text(&self, v: &Val, key: &str) -> Result<String, ConfigError> {
        Ok(match &v.value {
            Scalar::Str(s) => self.expand(s, &v.referenced, key)?,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        })
    }

    pub(super) fn int(
        &self,
        v: &Val,
        key: &str,
        min: i128,
        max: i128,
    ) -> Result<i128, ConfigError> {
        let n = match &v.value {
            Scalar::Int(i) => Some(*i),
            Scalar::Str(_) => {
                let text = self.scalar_text(v, key)?;
                text.parse::<i128>().ok()
            }
            Scalar::Float(_) | Scalar::Bool(_) => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.err(
                &v.referenced,
                format!("`{key}` must be between {min} and {max}, found {n}"),
                None,
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be an integer"),
                Some(format!("for example `{key}: {min}`")),
            )),
        }
    }

    /// As [`Ctx::int`], every rejection carrying `hint`.
    pub(super) fn int_with_hint(
        &self,
        v: &Val,
        key: &str,
        min: i128,
        max: i128,
        hint: &str,
    ) -> Result<i128, ConfigError> {
        self.int(v, key, min, max).map_err(|e| match e {
            ConfigError::Invalid {
                path,
                line,
                column,
                message,
                ..
            } => ConfigError::Invalid {
                path,
                line,
                column,
                message,
                hint: Some(hint.to_owned()),
            },
            e @ ConfigError::Io { .. } => e,
        })
    }

    /// A connection limit: an integer from 1 to [`MAX_CONNECTIONS_LIMIT`]; every
    /// rejection carries `hint`.
    pub(super) fn connection_count(
        &self,
        v: &Val,
        key: &str,
        hint: &str,
    ) -> Result<usize, ConfigError> {
        let n = self.int_with_hint(v, key, 1, MAX_CONNECTIONS_LIMIT, hint)?;
        usize::try_from(n)
            .map_err(|_| self.err(&v.referenced, format!("`{key}` is too large"), None))
    }

    pub(super) fn bool(&self, v: &Val, key: &str) -> Result<bool, ConfigError> {
        let b = match &v.value {
            Scalar::Bool(b) => Some(*b),
            Scalar::Str(_) => match self.scalar_text(v, key)?.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        b.ok_or_else(|| {
            self.err(
                &v.referenced,
                format!("`{key}` must be true or false"),
                None,
            )
        })
    }

    pub(super) fn duration(
        &self,
        v: &Val,
        key: &str,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let text = match &v.value {
            Scalar::Float(_) | Scalar::Bool(_) => None,
            _ => Some(self.scalar_text(v, key)?),
        };
        let d = text.as_deref().map(parse_duration);
        match d {
            Some(Ok(d)) if d.is_zero() && !allow_zero => Err(self.err(
                &v.referenced,
                format!("`{key}` must be greater than zero"),
                Some(DURATION_HINT.to_owned()),
            )),
            Some(Ok(d)) => Ok(d),
            Some(Err(why)) => Err(self.err(
                &v.referenced,
                format!("`{key}`: {why}"),
                Some(DURATION_HINT.to_owned()),
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be a duration"),
                Some(DURATION_HINT.to_owned()),
            )),
        }
    }

    pub(super) fn size(
        &self,
        v: &Val,
        key: &str,
        (min, max): (u64, u64),
    ) -> Result<usize, ConfigError> {
        let text = match &v.value {
            Scalar::Float(_) | Scalar::Bool(_) => None,
            _ => Some(self.scalar_text(v, key)?),
        };
        match text.as_deref().map(parse_size) {
            Some(Ok(n)) if (min..=max).contains(&n) => usize::try_from(n)
                .map_err(|_| self.err(&v.referenced, format!("`{key}` is too large"), None)),
            Some(Ok(n)) => Err(self.err(
                &v.referenced,
                format!(
                    "`{key}` must be between {} and {}, found {}",
                    format_size(min),
                    format_size(max),
                    format_size(n)
                ),
                None,
            )),
            Some(Err(why)) => Err(self.err(
                &v.referenced,
                format!("`{key}`: {why}"),
                Some(SIZE_HINT.to_owned()),
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be a size"),
                Some(SIZE_HINT.to_owned()),
            )),
        }
    }

    /// One of `choices`, case-insensitively.
    pub(super) fn choice<T: Copy>(
        &self,
        v: &Str,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let text = self.string(v, key)?;
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&text))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.err(
                    &v.referenced,
                    format!("`{key}`: unknown value {:?}", sanitize(&text)),
                    Some(format!("one of: {}", names.join(", "))),
                )
            })
    }

    pub(super) fn socket_addr(&self, v: &Str, key: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.string(v, key)?;
        text.parse().map_err(|_| {
            self.err(
                &v.referenced,
                format!(
                    "`{key}`: {:?} is not an IP address and port",
                    sanitize(&text)
                ),
                Some(
                    "for example 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (host names are \
                     not accepted here)"
                        .to_owned(),
                ),
            )
        })
    }

    /// A file path; relative paths are taken relative to the config file's directory,
    /// so that the config works whatever the working directory of the process is.
    pub(super) fn file_path(&self, v: &Str, key: &str) -> Result<PathBuf, ConfigError> {
        let text = self.string(v, key)?;
        if text.is_empty() {
            return Err(self.err(&v.referenced, format!("`{key}` must not be empty"), None));
        }
        let p = PathBuf::from(text);
        Ok(match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        })
    }
}

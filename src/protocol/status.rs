//! The `X-Session-Status` token injected with every request.

use std::fmt;

use http::HeaderValue;

/// The `X-Session-Status` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// No session cookie.
    None,
    /// Loaded from the store.
    Active,
    /// The cookie's signature is valid but its session is gone or past its lifetime.
    Expired,
    /// Bad signature or malformed cookie.
    Invalid,
    /// Store error under `store.on_error: anonymous`.
    Unavailable,
}

impl SessionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::None => "none",
            SessionStatus::Active => "active",
            SessionStatus::Expired => "expired",
            SessionStatus::Invalid => "invalid",
            SessionStatus::Unavailable => "unavailable",
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tokens() {
        for (status, token) in [
            (SessionStatus::None, "none"),
            (SessionStatus::Active, "active"),
            (SessionStatus::Expired, "expired"),
            (SessionStatus::Invalid, "invalid"),
            (SessionStatus::Unavailable, "unavailable"),
        ] {
            assert_eq!(status.as_str(), token);
            assert_eq!(status.header_value(), token);
            assert_eq!(status.to_string(), token);
        }
    }
}

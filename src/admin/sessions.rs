//! The session admin API on the admin listener (docs/protocol.md §11):
//! `GET /sessions?owner=O`, `DELETE /sessions?owner=O`, `DELETE /sessions/{handle}`.
//!
//! Off unless `admin.token` is set (then `404` with a hint). Every call needs
//! `Authorization: Bearer <token>`, compared in constant time; anything else is `401`.
//! Answers never contain a session id or a cookie value: sessions are named by their
//! handle, base64url(SHA-256(id)), which cannot be presented as a cookie.

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::{
    metrics::{AdminResult, Metrics, RevokeCause},
    owners,
    protocol::{MAX_OWNER_LEN, field_literal},
    store::{Owner, SessionInfo, StoreError, any::AnyStore, owners::is_handle, timed::TimedStore},
};

/// Sessions per listing unless `limit=` says otherwise, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// An admin API answer: status and JSON body (or a plain-text reason).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    /// `text/plain` for refusals, `application/json` otherwise.
    pub json: bool,
}

impl Answer {
    fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Answer {
            status,
            body: format!("{value}\n"),
            json: true,
        }
    }

    fn text(status: StatusCode, body: &str) -> Self {
        Answer {
            status,
            body: format!("{body}\n"),
            json: false,
        }
    }
}

/// A parsed call, before it touches the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Call {
    List { owner: Owner, limit: usize },
    RevokeOwner(Owner),
    RevokeHandle(String),
}

/// Is this an admin API path (as opposed to `/healthz` and friends)?
pub fn is_sessions_path(path: &str) -> bool {
    path == "/sessions" || path.starts_with("/sessions/")
}

/// The bearer token matches `token` (constant time in the token's length).
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

/// Parse method, path and query into a [`Call`], or the refusal (400, 404, 405).
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Call, Answer> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one = |name: &str| -> Result<Option<&str>, Answer> {
        let mut values = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(Answer::text(
                StatusCode::BAD_REQUEST,
                &format!("`{name}` given more than once"),
            )),
            (v, None) => Ok(v.map(String::as_str)),
        }
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| k != "owner" && k != "limit") {
        let shown: String = k.chars().take(32).filter(|c| !c.is_control()).collect();
        return Err(Answer::text(
            StatusCode::BAD_REQUEST,
            &format!("unknown query parameter `{shown}` (owner, limit)"),
        ));
    }
    let owner = || -> Result<Owner, Answer> {
        match one("owner")? {
            Some(o) if !o.is_empty() && o.len() <= MAX_OWNER_LEN => {
                Ok(Owner::from_literal(field_literal(o)))
            }
            Some(_) => Err(Answer::text(
                StatusCode::BAD_REQUEST,
                &format!("`owner` must be 1 to {MAX_OWNER_LEN} bytes"),
            )),
            None => Err(Answer::text(
                StatusCode::BAD_REQUEST,
                "`owner` is required, e.g. /sessions?owner=alice (URL-encoded)",
            )),
        }
    };
    match (method, path.strip_prefix("/sessions")) {
        (&Method::GET, Some("")) => {
            let limit = match one("limit")? {
                None => DEFAULT_LIMIT,
                Some(v) => match v.parse::<usize>() {
                    Ok(n @ 1..=MAX_LIMIT) => n,
                    _ => {
                        return Err(Answer::text(
                            StatusCode::BAD_REQUEST,
                            &format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                        ));
                    }
                },
            };
            Ok(Call::List {
                owner: owner()?,
                limit,
            })
        }
        (&Method::DELETE, Some("")) => {
            if one("limit")?.is_some() {
                return Err(Answer::text(
                    StatusCode::BAD_REQUEST,
                    "`limit` is for listings: a revoke takes every session of the owner",
                ));
            }
            Ok(Call::RevokeOwner(owner()?))
        }
        (&Method::DELETE, Some(rest)) => match rest.strip_prefix('/') {
            Some(handle) if is_handle(handle) && params.is_empty() => {
                Ok(Call::RevokeHandle(handle.to_owned()))
            }
            _ => Err(Answer::text(
                StatusCode::BAD_REQUEST,
                "expected /sessions/{handle}: 43 characters of base64url",
            )),
        },
        (_, Some("")) => Err(Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET or DELETE on /sessions",
        )),
        _ => Err(Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use DELETE on /sessions/{handle}",
        )),
    }
}

/// The `Allow` header for a 405 on `path`.
pub fn allowed(path: &str) -> HeaderValue {
    if path == "/sessions" {
        HeaderValue::from_static("GET, DELETE")
    } else {
        HeaderValue::from_static("DELETE")
    }
}

/// One session in a listing.
fn info_json(i: &SessionInfo) -> serde_json::Value {
    let mut v = serde_json::json!({
        "handle": i.handle,
        "created": i.created,
        "last_seen": i.last_seen,
        "expires": i.expires,
    });
    if let (Some(c), Some(map)) = (&i.client, v.as_object_mut()) {
        map.insert("ip".into(), c.ip.clone().into());
        map.insert("user_agent".into(), c.user_agent.clone().into());
    }
    v
}

/// The owner as the app gave it (the literal is a JSON string: read it back).
fn owner_json(owner: &Owner) -> serde_json::Value {
    serde_json::from_str(owner.literal()).unwrap_or(serde_json::Value::Null)
}

/// Run a parsed call against the store and count it.
pub async fn run(store: &TimedStore<AnyStore>, metrics: &Metrics, call: Call) -> Answer {
    let result: Result<Answer, StoreError> = async {
        Ok(match call {
            Call::List { owner, limit } => {
                let listing = owners::list(store, &owner, limit).await?;
                let sessions: Vec<_> = listing.sessions.iter().map(info_json).collect();
                Answer::json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "owner": owner_json(&owner),
                        "sessions": sessions,
                        "total": listing.total,
                        "truncated": listing.total > sessions.len() || listing.more_in_index,
                    }),
                )
            }
            Call::RevokeOwner(owner) => {
                let n = owners::revoke_owner(store, &owner, None).await?;
                metrics.revoked(RevokeCause::Admin, n);
                tracing::info!(revoked = n, "admin API: revoked the sessions of an owner");
                Answer::json(StatusCode::OK, &serde_json::json!({ "revoked": n }))
            }
            Call::RevokeHandle(handle) => {
                if owners::revoke_handle(store, &handle).await? {
                    metrics.revoked(RevokeCause::Admin, 1);
                    tracing::info!("admin API: revoked one session");
                    Answer::json(StatusCode::OK, &serde_json::json!({ "revoked": 1 }))
                } else {
                    Answer::text(StatusCode::NOT_FOUND, "no live session with this handle")
                }
            }
        })
    }
    .await;
    let answer = result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "admin API: store call failed");
        Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("store unavailable: {e}"),
        )
    });
    metrics.admin_call(match answer.status {
        StatusCode::OK => AdminResult::Ok,
        StatusCode::NOT_FOUND => AdminResult::NotFound,
        _ => AdminResult::Unavailable,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(o: &str) -> Owner {
        Owner::from_literal(field_literal(o))
    }

    #[test]
    fn calls_parse() {
        assert_eq!(
            parse(&Method::GET, "/sessions", Some("owner=alice%40example.com")),
            Ok(Call::List {
                owner: owner("alice@example.com"),
                limit: DEFAULT_LIMIT
            })
        );
        assert_eq!(
            parse(&Method::GET, "/sessions", Some("owner=b+c&limit=5")),
            Ok(Call::List {
                owner: owner("b c"),
                limit: 5
            })
        );
        assert_eq!(
            parse(&Method::DELETE, "/sessions", Some("owner=%C3%A9")),
            Ok(Call::RevokeOwner(owner("é")))
        );
        let handle = "A".repeat(43);
        assert_eq!(
            parse(&Method::DELETE, &format!("/sessions/{handle}"), None),
            Ok(Call::RevokeHandle(handle))
        );
    }

    #[test]
    fn bad_calls_are_refused_with_a_reason() {
        let status = |m: &Method, p: &str, q: Option<&str>| parse(m, p, q).unwrap_err().status;
        assert_eq!(
            status(&Method::GET, "/sessions", None),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&Method::GET, "/sessions", Some("owner=")),
            StatusCode::BAD_REQUEST
        );
        let long = format!("owner={}", "a".repeat(257));
        assert_eq!(
            status(&Method::GET, "/sessions", Some(&long)),
            StatusCode::BAD_REQUEST
        );
        for q in [
            "owner=a&owner=b",
            "owner=a&limit=0",
            "owner=a&limit=1001",
            "owner=a&x=1",
        ] {
            assert_eq!(
                status(&Method::GET, "/sessions", Some(q)),
                StatusCode::BAD_REQUEST,
                "{q}"
            );
        }
        assert_eq!(
            status(&Method::DELETE, "/sessions", Some("owner=a&limit=3")),
            StatusCode::BAD_REQUEST
        );
        for p in [
            "/sessions/short",
            "/sessions/",
            &format!("/sessions/{}=", "A".repeat(42)),
        ] {
            assert_eq!(
                status(&Method::DELETE, p, None),
                StatusCode::BAD_REQUEST,
                "{p}"
            );
        }
        assert_eq!(
            status(&Method::POST, "/sessions", Some("owner=a")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(&Method::GET, &format!("/sessions/{}", "A".repeat(43)), None),
            StatusCode::METHOD_NOT_ALLOWED
        );
        // Unknown names are shown cut and without control characters.
        let a = parse(&Method::GET, "/sessions", Some("owner=a&%0Aevil=1")).unwrap_err();
        assert!(!a.body.trim_end().contains('\n'), "{}", a.body);
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let token = "0123456789abcdef0123456789abcdef";
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(authorized(&with(&format!("Bearer {token}")), token));
        assert!(!authorized(&HeaderMap::new(), token));
        assert!(!authorized(&with(token), token));
        assert!(!authorized(&with(&format!("Bearer {token}x")), token));
        assert!(!authorized(
            &with(&format!("Bearer {}", &token[1..])),
            token
        ));
        assert!(!authorized(&with(&format!("bearer  {token}")), token));
    }

    #[test]
    fn listings_show_no_id_and_the_owner_as_given() {
        let i = SessionInfo {
            handle: "h".into(),
            owner: Some(owner("ann")),
            created: 1,
            last_seen: 2,
            expires: 3,
            client: None,
        };
        assert_eq!(
            info_json(&i).to_string(),
            r#"{"created":1,"expires":3,"handle":"h","last_seen":2}"#
        );
        assert_eq!(owner_json(&owner("cl\u{e9}")), serde_json::json!("clé"));
    }
}

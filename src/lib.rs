//! # session-sidecar
//!
//! A reverse proxy that gives server-side sessions to web applications that were never
//! written for them. The app reads its session from request headers and changes it with
//! response headers; the sidecar owns the cookie, the store and every security rule.
//!
//! ```text
//! browser ──cookie──▶ session-sidecar ──X-Session: {...}──▶ app
//!         ◀─Set-Cookie─               ◀─X-Session-Set: {...}─
//! ```
//!
//! ## How a request flows
//!
//! Two functions read top to bottom: `proxy::Proxy::receive` (steps 1–4: framing,
//! strip, cookie, load), then `proxy::Proxy::process` (steps 5–9: inject and forward,
//! instructions, decide, write, respond).
//!
//! 1. refuse ambiguous framing ([`proxy::headers::check_framing`], and the raw-head
//!    scan in [`server::head_scan`]);
//! 2. strip every client header of the reserved family, in every spelling
//!    ([`protocol::ReservedPrefix::strip`]);
//! 3. read and verify the signed cookie ([`cookie::read_session_cookie`]);
//! 4. load data and pending flash in one store round trip ([`store::SessionStore::load`]);
//! 5. remove hop-by-hop fields *before* injecting, set `X-Forwarded-*`, inject
//!    `X-Session`, `X-Session-Flash`, `X-Session-Status`;
//! 6. forward with the body streamed ([`proxy::forward`]);
//! 7. take (and strip) the upstream's write instructions into a [`protocol::ChangeSet`]
//!    ([`protocol::ReservedPrefix::take_instructions`]);
//! 8. decide the store write and the cookie, purely ([`lifecycle::decide`]);
//! 9. apply the write atomically ([`store::SessionStore::apply`]) and respond.
//!
//! ## Where things live
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | the header protocol: reserved names, instruction parsing, encoding |
//! | [`cookie`] | session ids, HMAC signing with rotation, `Set-Cookie` |
//! | [`lifecycle`] | what a change set means: which store write, which cookie |
//! | [`store`] | the [`store::SessionStore`] trait, its reference semantics ([`store::apply_ops`]) and the memory, Redis and memcached engines |
//! | [`proxy`] | the pipeline and its header operations, the upstream client, upgrades |
//! | [`server`] | listeners, connection lifecycle, graceful shutdown |
//! | [`server::watchdog`] | per-connection timers: first byte and request head (`header_read`), keep-alive idle, HTTP/2 idle |
//! | [`server::head_scan`] | the raw request-head scan for `Content-Length` with `Transfer-Encoding`, pure |
//! | [`reload`] | `SIGHUP`: which re-read settings apply live, which need a restart |
//! | [`tls`] | TLS termination: PEM loading, ALPN `h2`/`http/1.1`, certificates swapped on reload |
//! | [`config`] | the YAML schema, validation with `FILE:LINE:COLUMN` errors (a folder: types, raw, reader, sections, store, values, expand, suggest, redact) |
//! | [`admin`] | `/healthz`, `/readyz`, `/metrics` |
//! | [`metrics`] | the Prometheus registry: request, upstream, store and session counters |
//!
//! ## Embedding
//!
//! The binary is a thin CLI over [`server::start`]; tests and the demo start the same
//! way:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let yaml = r#"
//! listen: 127.0.0.1:0
//! upstream: http://127.0.0.1:8000
//! secrets: ["0123456789abcdef0123456789abcdef"]
//! "#;
//! let config = session_sidecar::config::Config::from_yaml_str(yaml, "inline.yaml".as_ref())?;
//! let running = session_sidecar::server::start(config).await?;
//! println!("listening on {}", running.addr);
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod cookie;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod owners;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod store;
pub mod tls;

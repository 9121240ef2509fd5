//! Quick start: a tiny web app that knows nothing about cookies or Redis, behind
//! session-sidecar on the embedded memory store, in one process.
//!
//!     cargo run --release --example demo
//!
//! then open the printed URL. The app reads its session from `X-Session` and changes it
//! with response headers: a visit counter (`X-Session-Incr`), login with
//! `X-Session-Regenerate` (a new session id on privilege change), logout with
//! `X-Session-Destroy` plus a flash message (`X-Session-Flash-Set`).
//! `DEMO_LISTEN` changes the sidecar's address (default 127.0.0.1:8080).

use std::{convert::Infallible, path::Path};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use session_sidecar::{config::Config, server};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // 1. The app, on a free loopback port.
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(serve_app(app));

    // 2. The sidecar in front of it: memory store, a secret made for this run.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let listen = std::env::var("DEMO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let yaml = format!(
        r#"
listen: "{listen}"
upstream: "http://{app_addr}"
secrets: ["{secret}"]
store: {{ engine: memory }}
# The demo is served over plain http on localhost: browsers would drop a Secure cookie
# from http://127.0.0.1. Keep the default (secure: true) behind TLS in production.
cookies: {{ secure: false }}
admin: {{ listen: null }}
"#,
        secret = URL_SAFE_NO_PAD.encode(secret)
    );
    let config =
        Config::from_yaml_str(&yaml, Path::new("<demo>")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server::start(config).await?;
    println!();
    println!("  session-sidecar demo: open http://{}/", running.addr);
    println!("  (the app itself listens on {app_addr}; Ctrl-C stops both)");
    println!();
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}

async fn serve_app(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req| async move { Ok::<_, Infallible>(app(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type AppResponse = Response<Full<Bytes>>;

/// The whole app: no cookie parsing, no store — just headers.
async fn app(req: Request<Incoming>) -> AppResponse {
    let header_json = |name: &str| -> Value {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_else(|| json!({}))
    };
    let session = header_json("x-session");
    let flash = header_json("x-session-flash");
    let status = req
        .headers()
        .get("x-session-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();

    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/") => {
            let visits = session["visits"].as_i64().unwrap_or(0) + 1;
            let user = session["user"].as_str().map(html_escape);
            let notice = flash["notice"].as_str().map(html_escape);
            let body = page(visits, user.as_deref(), notice.as_deref(), &status);
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                "text/html; charset=utf-8".parse().unwrap(),
            );
            // Count this visit: atomic in the store, even with many tabs.
            h.insert("x-session-incr", r#"{"visits":1}"#.parse().unwrap());
            resp
        }
        ("POST", "/login") => {
            let form = read_form(req).await;
            let name = form_value(&form, "user").unwrap_or_default();
            let name = name.trim();
            if name.is_empty() || name.len() > 64 {
                return redirect(&[(
                    "x-session-flash-set",
                    json!({"notice": "Pick a name (1–64 characters)."}),
                )]);
            }
            redirect(&[
                // A new session id on login defeats session fixation.
                ("x-session-regenerate", json!(1)),
                ("x-session-set", json!({ "user": name })),
                (
                    "x-session-flash-set",
                    json!({ "notice": format!("Welcome, {name}!") }),
                ),
            ])
        }
        ("POST", "/logout") => redirect(&[
            // Destroy plus a flash: the old session is gone; a fresh one carries the note.
            ("x-session-destroy", json!(1)),
            (
                "x-session-flash-set",
                json!({"notice": "You are logged out."}),
            ),
        ]),
        _ => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

fn redirect(instructions: &[(&'static str, Value)]) -> AppResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, "/".parse().unwrap());
    for (name, value) in instructions {
        if let Ok(v) = value.to_string().parse() {
            h.append(*name, v);
        }
    }
    resp
}

async fn read_form(req: Request<Incoming>) -> String {
    match Limited::new(req.into_body(), 4096).collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

/// `application/x-www-form-urlencoded` lookup, enough for one field.
fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(visits: i64, user: Option<&str>, notice: Option<&str>, status: &str) -> String {
    let notice = notice
        .map(|n| format!(r#"<p class="notice">{n}</p>"#))
        .unwrap_or_default();
    let who = match user {
        Some(u) => format!(
            r#"<p>Logged in as <b>{u}</b>.</p>
<form method="post" action="/logout"><button>Log out</button></form>"#
        ),
        None => r#"<form method="post" action="/login">
<input name="user" placeholder="your name" maxlength="64" autofocus> <button>Log in</button></form>"#
            .to_owned(),
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>session-sidecar demo</title>
<style>body{{font-family:sans-serif;max-width:36em;margin:3em auto}}.notice{{background:#ffd;padding:.5em}}code{{background:#eee}}</style></head>
<body><h1>session-sidecar demo</h1>
{notice}
<p>You have visited this page <b>{visits}</b> time(s) in this session.</p>
{who}
<p><small>This app never sees a cookie: it reads <code>X-Session</code> (status <code>{status}</code>) and
answers with <code>X-Session-Incr</code>, <code>-Regenerate</code>, <code>-Destroy</code> and <code>-Flash-Set</code>.</small></p>
</body></html>
"#
    )
}

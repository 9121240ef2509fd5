//! `SIGHUP`: what a re-read configuration may change in a running sidecar
//! (docs/configuration.md#reloading).
//!
//! Pure: [`plan`] compares the configuration in force with the re-read one and returns
//! the configuration to put in force, the restart-only settings that differ (logged as
//! "needs a restart: ...", otherwise ignored) and the reloadable settings that changed.
//!
//! Reloadable (they live in the per-request [`crate::proxy::Settings`] snapshot, or are
//! certificates re-read by the TLS acceptor): `secrets`, `cookies.*`,
//! `headers.expose_id`, `bypass`, `trusted_proxies`, `store.on_error`, `tls.cert`,
//! `tls.key`, `session.no_touch`, `session.max_per_owner`, `session.record_client`,
//! `admin.token` and `log.owner`. Everything else is built once at start (listeners, store, upstream client,
//! timers, logging) and needs a restart. `headers.prefix` needs one too on purpose: the
//! app reads its session under that name, so renaming the family without restarting the
//! app with it would leave the app trusting a name the sidecar no longer strips.
//!
//! The configuration put in force keeps the *running* value of every restart-only
//! setting, so the per-request settings never disagree with the listener or the store
//! (e.g. `session.absolute_ttl` is used by both), and a later `SIGHUP` still reports a
//! restart-only difference that has not been applied.

use crate::config::{
    AdminConfig, Config, CookieConfig, HeadersConfig, Limits, LogConfig, SessionConfig,
    StoreConfig, Timeouts, TlsConfig,
};

/// The outcome of comparing the configuration in force with a re-read one.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to put in force: the new file's reloadable settings, the running
    /// restart-only ones.
    pub effective: Config,
    /// Config keys whose change needs a restart (not applied), in a fixed order.
    pub needs_restart: Vec<&'static str>,
    /// Reloadable config keys whose value changed (applied), in a fixed order. Names only:
    /// never values (secrets).
    pub changed: Vec<&'static str>,
}

/// Compare `old` (in force) with `new` (re-read); see the module docs.
pub fn plan(old: &Config, new: Config) -> Plan {
    let mut restart = Vec::new();
    let mut changed = Vec::new();
    // Exhaustive on purpose: a new top-level setting does not compile until it is
    // classified here as reloadable or restart-only.
    let Config {
        path,
        listen,
        workers,
        tls,
        upstream,
        upstream_tls,
        secrets,
        store,
        session,
        cookies,
        headers,
        bypass,
        trusted_proxies,
        timeouts,
        limits,
        admin,
        log,
    } = new;

    mark(&mut restart, "listen", old.listen != listen);
    mark(&mut restart, "workers", old.workers != workers);
    let tls = compare_tls(old.tls.as_ref(), tls, &mut restart, &mut changed);
    mark(&mut restart, "upstream", old.upstream != upstream);
    mark(
        &mut restart,
        "upstream_tls",
        old.upstream_tls != upstream_tls,
    );
    // `Secret` equality compares the values (its `Debug` hides them).
    mark(&mut changed, "secrets", old.secrets != secrets);
    let store = compare_store(&old.store, store, &mut restart, &mut changed);
    let session = compare_session(&old.session, session, &mut restart, &mut changed);
    compare_cookies(&old.cookies, &cookies, &mut changed);
    let headers = compare_headers(&old.headers, headers, &mut restart, &mut changed);
    mark(&mut changed, "bypass", old.bypass != bypass);
    mark(
        &mut changed,
        "trusted_proxies",
        old.trusted_proxies != trusted_proxies,
    );
    compare_timeouts(&old.timeouts, &timeouts, &mut restart);
    compare_limits(&old.limits, &limits, &mut restart);
    let admin = compare_admin(&old.admin, admin, &mut restart, &mut changed);
    let log = compare_log(&old.log, log, &mut restart, &mut changed);

    Plan {
        effective: Config {
            path,
            listen: old.listen,
            workers: old.workers,
            tls,
            upstream: old.upstream.clone(),
            upstream_tls: old.upstream_tls.clone(),
            secrets,
            store,
            session,
            cookies,
            headers,
            bypass,
            trusted_proxies,
            timeouts: old.timeouts.clone(),
            limits: old.limits.clone(),
            admin,
            log,
        },
        needs_restart: restart,
        changed,
    }
}

fn mark(list: &mut Vec<&'static str>, key: &'static str, differs: bool) {
    if differs && !list.contains(&key) {
        list.push(key);
    }
}

/// Turning TLS on or off changes the listener (restart); new `cert`/`key` paths are
/// reloadable (the files are re-read on every `SIGHUP` anyway).
// The struct updates are for settings added to `tls` later: they stay restart-only
// until classified here.
#[allow(clippy::needless_update)]
fn compare_tls(
    old: Option<&TlsConfig>,
    new: Option<TlsConfig>,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> Option<TlsConfig> {
    match (old, new) {
        (None, None) => None,
        (Some(o), Some(n)) => {
            mark(changed, "tls.cert", o.cert != n.cert);
            mark(changed, "tls.key", o.key != n.key);
            let effective = TlsConfig {
                cert: n.cert.clone(),
                key: n.key.clone(),
                ..o.clone()
            };
            // Any other TLS setting (added later) is read by the listener at start.
            let rest = TlsConfig {
                cert: o.cert.clone(),
                key: o.key.clone(),
                ..n
            };
            mark(restart, "tls", &rest != o);
            Some(effective)
        }
        (old, Some(_)) | (old, None) => {
            mark(restart, "tls", true);
            old.cloned()
        }
    }
}

/// `store.on_error` is a per-request decision (reloadable); the rest builds the store.
fn compare_store(
    old: &StoreConfig,
    new: StoreConfig,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> StoreConfig {
    mark(
        restart,
        "store.engine",
        old.storage.engine_name() != new.storage.engine_name(),
    );
    mark(restart, "store.storage", old.storage != new.storage);
    mark(
        restart,
        "store.key_prefix",
        old.key_prefix != new.key_prefix,
    );
    mark(restart, "store.timeout", old.timeout != new.timeout);
    mark(restart, "store.cache", old.cache != new.cache);
    mark(changed, "store.on_error", old.on_error != new.on_error);
    let effective = StoreConfig {
        on_error: new.on_error,
        ..old.clone()
    };
    let rest = StoreConfig {
        on_error: old.on_error,
        ..new
    };
    if !restart.iter().any(|k| k.starts_with("store.")) {
        mark(restart, "store", &rest != old);
    }
    effective
}

/// The lifetimes and size are the store's (restart); the owner and touch-route settings
/// are per-request settings (reloadable). `touch_after` is the store's too.
#[allow(clippy::needless_update)]
fn compare_session(
    old: &SessionConfig,
    new: SessionConfig,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> SessionConfig {
    mark(restart, "session.ttl", old.ttl != new.ttl);
    mark(
        restart,
        "session.absolute_ttl",
        old.absolute_ttl != new.absolute_ttl,
    );
    mark(restart, "session.max_size", old.max_size != new.max_size);
    mark(
        restart,
        "session.touch_after",
        old.touch_after != new.touch_after,
    );
    mark(changed, "session.no_touch", old.no_touch != new.no_touch);
    mark(
        changed,
        "session.max_per_owner",
        old.max_per_owner != new.max_per_owner,
    );
    mark(
        changed,
        "session.record_client",
        old.record_client != new.record_client,
    );
    let effective = SessionConfig {
        no_touch: new.no_touch.clone(),
        max_per_owner: new.max_per_owner,
        record_client: new.record_client,
        ..old.clone()
    };
    // Any other session setting (added later) stays restart-only until classified here.
    if !restart.iter().any(|k| k.starts_with("session.")) {
        mark(
            restart,
            "session",
            SessionConfig {
                no_touch: old.no_touch.clone(),
                max_per_owner: old.max_per_owner,
                record_client: old.record_client,
                ..new
            } != *old,
        );
    }
    effective
}

fn compare_cookies(old: &CookieConfig, new: &CookieConfig, changed: &mut Vec<&'static str>) {
    mark(changed, "cookies.name", old.name != new.name);
    mark(changed, "cookies.path", old.path != new.path);
    mark(changed, "cookies.domain", old.domain != new.domain);
    mark(changed, "cookies.secure", old.secure != new.secure);
    mark(changed, "cookies.http_only", old.http_only != new.http_only);
    mark(changed, "cookies.same_site", old.same_site != new.same_site);
    mark(changed, "cookies.max_age", old.lifetime != new.lifetime);
    mark(changed, "cookies.rolling", old.rolling != new.rolling);
    mark(changed, "cookies.forward", old.forward != new.forward);
    if !changed.iter().any(|k| k.starts_with("cookies.")) {
        mark(changed, "cookies", old != new);
    }
}

fn compare_headers(
    old: &HeadersConfig,
    new: HeadersConfig,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> HeadersConfig {
    mark(restart, "headers.prefix", old.prefix != new.prefix);
    mark(changed, "headers.expose_id", old.expose_id != new.expose_id);
    HeadersConfig {
        prefix: old.prefix.clone(),
        ..new
    }
}

fn compare_timeouts(old: &Timeouts, new: &Timeouts, restart: &mut Vec<&'static str>) {
    mark(
        restart,
        "timeouts.header_read",
        old.header_read != new.header_read,
    );
    mark(
        restart,
        "timeouts.body_read",
        old.body_read != new.body_read,
    );
    mark(
        restart,
        "timeouts.upstream_connect",
        old.upstream_connect != new.upstream_connect,
    );
    mark(
        restart,
        "timeouts.upstream_response",
        old.upstream_response != new.upstream_response,
    );
    mark(restart, "timeouts.idle", old.idle != new.idle);
    mark(restart, "timeouts.shutdown", old.shutdown != new.shutdown);
    if !restart.iter().any(|k| k.starts_with("timeouts.")) {
        mark(restart, "timeouts", old != new);
    }
}

fn compare_limits(old: &Limits, new: &Limits, restart: &mut Vec<&'static str>) {
    mark(
        restart,
        "limits.max_header_size",
        old.max_header_size != new.max_header_size,
    );
    mark(
        restart,
        "limits.max_connections",
        old.max_connections != new.max_connections,
    );
    mark(
        restart,
        "limits.max_connections_per_ip",
        old.max_connections_per_ip != new.max_connections_per_ip,
    );
    if !restart.iter().any(|k| k.starts_with("limits.")) {
        mark(restart, "limits", old != new);
    }
}

/// The listener is bound at start; the token is a per-request setting (rotate it with a
/// `SIGHUP`).
fn compare_admin(
    old: &AdminConfig,
    new: AdminConfig,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> AdminConfig {
    mark(restart, "admin.listen", old.listen != new.listen);
    mark(changed, "admin.token", old.token != new.token);
    AdminConfig {
        listen: old.listen,
        token: new.token,
    }
}

/// Format and level configure the subscriber at start; `log.owner` is read per request.
fn compare_log(
    old: &LogConfig,
    new: LogConfig,
    restart: &mut Vec<&'static str>,
    changed: &mut Vec<&'static str>,
) -> LogConfig {
    mark(restart, "log.format", old.format != new.format);
    mark(restart, "log.level", old.level != new.level);
    mark(changed, "log.owner", old.owner != new.owner);
    LogConfig {
        owner: new.owner,
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const A: &str = "reload-secret-A-0123456789abcdefghijklmnopqrstuvwxyz";
    const B: &str = "reload-secret-B-0123456789abcdefghijklmnopqrstuvwxyz";

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nsecrets: [\"{A}\"]\n{extra}"
        );
        Config::from_yaml_str_with_env(&text, Path::new("t.yaml"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn identical_configs_change_nothing() {
        let p = plan(&cfg(""), cfg(""));
        assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
        assert!(p.changed.is_empty(), "{:?}", p.changed);
    }

    #[test]
    fn reloadable_settings_are_applied_and_named() {
        let old = cfg("");
        let new = cfg(
            "cookies: { name: sid, secure: false, same_site: strict, max_age: 1h, rolling: true }\n\
             headers: { expose_id: true }\n\
             bypass: [/static/]\n\
             trusted_proxies: [10.0.0.0/8]\n\
             store: { on_error: anonymous }\n",
        );
        let p = plan(&old, new);
        assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
        assert_eq!(
            p.changed,
            [
                "store.on_error",
                "cookies.name",
                "cookies.secure",
                "cookies.same_site",
                "cookies.max_age",
                "cookies.rolling",
                "headers.expose_id",
                "bypass",
                "trusted_proxies",
            ]
        );
        let e = &p.effective;
        assert_eq!(e.cookies.name, "sid");
        assert!(!e.cookies.secure);
        assert!(e.headers.expose_id);
        assert_eq!(e.bypass, ["/static/"]);
        assert_eq!(e.trusted_proxies.len(), 1);
        assert_eq!(e.store.on_error, crate::config::OnError::Anonymous);
    }

    #[test]
    fn owner_settings_and_the_admin_token_reload() {
        let old = cfg("");
        let new = cfg(
            "session: { no_touch: [/poll], max_per_owner: 2, record_client: true }\n\
             admin: { token: \"0123456789abcdef0123456789abcdef\" }\n\
             log: { owner: true }\n",
        );
        let p = plan(&old, new);
        assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
        assert_eq!(
            p.changed,
            [
                "session.no_touch",
                "session.max_per_owner",
                "session.record_client",
                "admin.token",
                "log.owner",
            ]
        );
        let e = &p.effective;
        assert_eq!(e.session.no_touch, ["/poll"]);
        assert_eq!(e.session.max_per_owner, Some(2));
        assert!(e.session.record_client && e.log.owner && e.admin.token.is_some());
        // touch_after is the store's: a restart.
        let p = plan(&old, cfg("session: { touch_after: 1m }\n"));
        assert_eq!(p.needs_restart, ["session.touch_after"]);
        let p = plan(&old, cfg("workers: 7\n"));
        assert_eq!(p.needs_restart, ["workers"]);
        assert_eq!(p.effective.workers, old.workers);
        assert_eq!(p.effective.session.touch_after, old.session.touch_after);
    }

    #[test]
    fn secret_rotation_is_named_without_values() {
        let old = cfg("");
        let text = format!(
            "listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nsecrets: [\"{B}\", \"{A}\"]\n"
        );
        let new = Config::from_yaml_str_with_env(&text, Path::new("t.yaml"), &|_| None).unwrap();
        let p = plan(&old, new);
        assert_eq!(p.changed, ["secrets"]);
        assert!(p.needs_restart.is_empty());
        let secrets: Vec<&str> = p.effective.secrets.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(secrets, [B, A]);
        let shown = format!("{:?} {:?}", p.changed, p.needs_restart);
        assert!(!shown.contains(A) && !shown.contains(B));
    }

    #[test]
    fn restart_only_settings_are_named_and_keep_their_running_value() {
        let old = cfg("");
        let new = Config::from_yaml_str_with_env(
            &format!(
                "listen: 127.0.0.1:9999\nupstream: https://127.0.0.1:8001\nsecrets: [\"{A}\"]\n\
                 upstream_tls: {{ ca: ca.pem }}\n\
                 store: {{ engine: redis, key_prefix: \"s:\", timeout: 1s, storage: {{ db_sessions: 3 }} }}\n\
                 session: {{ ttl: 2h, max_size: 4KiB }}\n\
                 headers: {{ prefix: X-Sess }}\n\
                 timeouts: {{ body_read: 5s, idle: 5s, shutdown: 3s }}\n\
                 limits: {{ max_header_size: 16KiB }}\n\
                 admin: {{ listen: null }}\n\
                 log: {{ format: json, level: debug }}\n"
            ),
            Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        let p = plan(&old, new);
        assert_eq!(
            p.needs_restart,
            [
                "listen",
                "upstream",
                "upstream_tls",
                "store.engine",
                "store.storage",
                "store.key_prefix",
                "store.timeout",
                "session.ttl",
                "session.max_size",
                "headers.prefix",
                "timeouts.body_read",
                "timeouts.idle",
                "timeouts.shutdown",
                "limits.max_header_size",
                "admin.listen",
                "log.format",
                "log.level",
            ]
        );
        assert!(p.changed.is_empty(), "{:?}", p.changed);
        let e = &p.effective;
        assert_eq!(e.listen, old.listen);
        assert_eq!(e.upstream, old.upstream);
        assert_eq!(e.upstream_tls, None);
        assert_eq!(e.store.storage, old.store.storage);
        assert_eq!(e.store.key_prefix, old.store.key_prefix);
        assert_eq!(e.session.ttl, old.session.ttl);
        assert_eq!(e.headers.prefix, "X-Session");
        assert_eq!(e.timeouts.shutdown, old.timeouts.shutdown);
        assert_eq!(e.timeouts.body_read, old.timeouts.body_read);
        assert_eq!(e.limits.max_header_size, old.limits.max_header_size);
        assert_eq!(e.admin.listen, old.admin.listen);
        assert_eq!(e.log.level, old.log.level);
    }

    #[test]
    fn a_store_password_change_needs_a_restart_although_debug_redacts_it() {
        let old = cfg("store: { engine: redis, storage: { password: one } }\n");
        let new = cfg("store: { engine: redis, storage: { password: two } }\n");
        let p = plan(&old, new);
        assert_eq!(p.needs_restart, ["store.storage"]);
        let crate::config::Storage::Redis(redis) = &p.effective.store.storage else {
            panic!("redis storage: {:?}", p.effective.store.storage);
        };
        assert_eq!(redis.password.as_ref().map(|s| &s.0[..]), Some("one"));
    }

    #[test]
    fn mixed_changes_split_and_a_second_reload_still_reports_the_pending_restart() {
        let old = cfg("");
        let changed_file = || {
            Config::from_yaml_str_with_env(
                &format!(
                    "listen: 127.0.0.1:9999\nupstream: http://127.0.0.1:8000\nsecrets: [\"{B}\"]\n\
                     bypass: [/health]\n"
                ),
                Path::new("t.yaml"),
                &|_| None,
            )
            .unwrap()
        };
        let first = plan(&old, changed_file());
        assert_eq!(first.needs_restart, ["listen"]);
        assert_eq!(first.changed, ["secrets", "bypass"]);
        // The effective config now in force still listens where it started …
        let second = plan(&first.effective, changed_file());
        // … so the next SIGHUP reports the pending restart again, and nothing else.
        assert_eq!(second.needs_restart, ["listen"]);
        assert!(second.changed.is_empty(), "{:?}", second.changed);
    }

    #[test]
    fn tls_paths_reload_but_turning_tls_on_or_off_needs_a_restart() {
        let plain = cfg("");
        let tls = cfg("tls: { cert: a.pem, key: a.key }\n");
        let moved = cfg("tls: { cert: b.pem, key: a.key }\n");

        let on = plan(&plain, tls.clone());
        assert_eq!(on.needs_restart, ["tls"]);
        assert!(on.effective.tls.is_none());

        let off = plan(&tls, plain.clone());
        assert_eq!(off.needs_restart, ["tls"]);
        assert_eq!(off.effective.tls, tls.tls);

        let p = plan(&tls, moved.clone());
        assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
        assert_eq!(p.changed, ["tls.cert"]);
        assert_eq!(p.effective.tls, moved.tls);
    }
}

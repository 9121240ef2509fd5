//! The request pipeline (docs/protocol.md §2), top to bottom in `Proxy::receive` (steps
//! 1–2) and `Proxy::process` (steps 3–7): strip → load (read the cookie, one store round
//! trip) → inject → forward → take instructions → decide and apply → respond. Header
//! details live in [`headers`], the upstream client in [`forward`], upgrades in
//! [`upgrade`], and the decision of what to write in [`crate::lifecycle`].

pub mod access;
pub mod connect;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod request_id;
pub mod upgrade;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Instant,
};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;

use crate::{
    body::{Body, strip_reserved_trailers},
    config::{Config, IpNet, OnError},
    cookie::{
        self, CookieAttributes, CookieSigner, CookieState, SessionId, make_private,
        read_session_cookie, strip_session_cookie,
    },
    error::ProxyError,
    lifecycle::{self, CookieAction, CookiePolicy, Decision, ResponseClass, SessionView},
    metrics::{Metrics, RejectReason, RevokeCause, UpstreamErrorKind},
    owners,
    protocol::{ChangeSet, Malformed, ReservedPrefix, SessionStatus, encode_object},
    store::{
        ClientInfo, LoadedSession, Owner, SessionStore, StoreError, Target, Touch, WriteOutcome,
        WritePlan, any::AnyStore, timed::TimedStore,
    },
};

use self::{
    access::AccessLine,
    forward::Upstream,
    pool::PooledBody,
    request_id::{RequestIds, X_REQUEST_ID},
};

/// Per-request settings derived from the config. Swapped whole on reload, so a request
/// sees one consistent snapshot.
#[derive(Debug)]
pub struct Settings {
    pub prefix: Arc<ReservedPrefix>,
    pub signer: CookieSigner,
    pub cookie: CookieAttributes,
    pub policy: CookiePolicy,
    pub forward_cookie: bool,
    pub expose_id: bool,
    pub bypass: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub on_error: OnError,
    pub max_header_size: usize,
    /// `session.no_touch` path prefixes.
    pub no_touch: Vec<String>,
    /// `session.max_per_owner`.
    pub max_per_owner: Option<u32>,
    /// `session.record_client`.
    pub record_client: bool,
    /// `log.owner`: owner ids in clear in the access log.
    pub log_owner: bool,
    /// `admin.token`: the session admin API's bearer token (reloaded with the rest).
    pub admin_token: Option<crate::config::Secret>,
}

/// Why settings could not be built from a config.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

impl Settings {
    pub fn from_config(config: &Config) -> Result<Self, SettingsError> {
        let prefix = ReservedPrefix::new(&config.headers.prefix)
            .map_err(|e| SettingsError(format!("headers.prefix: {e}")))?;
        let secrets: Vec<&[u8]> = config.secrets.iter().map(|s| s.0.as_bytes()).collect();
        let c = &config.cookies;
        let lifetime = c.lifetime.map(|d| d.as_secs());
        Ok(Settings {
            prefix: Arc::new(prefix),
            signer: CookieSigner::new(&c.name, &secrets),
            cookie: CookieAttributes {
                name: c.name.clone(),
                path: c.path.clone(),
                domain: c.domain.clone(),
                secure: c.secure,
                http_only: c.http_only,
                same_site: c.same_site,
                max_age: lifetime,
            },
            policy: CookiePolicy {
                lifetime,
                rolling: c.rolling,
                absolute_ttl: config.session.absolute_ttl.as_secs(),
                ttl: config.session.ttl.as_secs(),
            },
            forward_cookie: c.forward,
            expose_id: config.headers.expose_id,
            bypass: config.bypass.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            on_error: config.store.on_error,
            max_header_size: config.limits.max_header_size,
            no_touch: config.session.no_touch.clone(),
            max_per_owner: config.session.max_per_owner,
            record_client: config.session.record_client,
            admin_token: config.admin.token.clone(),
            log_owner: config.log.owner,
        })
    }

    fn touch(&self, path: &str) -> Touch {
        if self.no_touch.iter().any(|p| path.starts_with(p.as_str())) {
            Touch::Keep
        } else {
            Touch::Refresh
        }
    }

    fn is_bypass(&self, path: &str) -> bool {
        self.bypass.iter().any(|p| path.starts_with(p.as_str()))
    }

    fn is_trusted(&self, peer: SocketAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(peer.ip()))
    }
}

/// A client request body the pipeline can stream upstream: hyper's `Incoming`, or the
/// listener's wrapper of it that holds the connection's in-flight mark and bounds each
/// wait for the client (`timeouts.body_read`).
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<crate::body::BoxError>> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<crate::body::BoxError>> + Send + 'static
{
}

/// What the pipeline knows about the client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer (the client, or a trusted proxy in front of us).
    pub peer: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` value ([`headers::peer_value`]),
    /// rendered once per connection rather than on every request.
    pub peer_value: HeaderValue,
    /// `"http"` or `"https"`: how the client reached us (`X-Forwarded-Proto`).
    pub scheme: &'static str,
    /// The raw head carried both `Content-Length` and `Transfer-Encoding` (see
    /// [`crate::server::head_scan`]; hyper hides it from the headers).
    pub ambiguous_framing: bool,
}

/// The session state of one request, from cookie to injection.
struct RequestSession {
    view: SessionView,
    loaded: Option<LoadedSession>,
    /// With `session.record_client`: the client, for a session this request creates.
    client: Option<ClientInfo>,
}

/// A request after steps 1–2 (strip, load).
struct Inbound<B> {
    req: Request<B>,
    /// `None` on a bypass route.
    session: Option<RequestSession>,
}

impl<B> Inbound<B> {
    /// The access log's `session` field.
    fn session_status(&self) -> SessionStatus {
        self.session
            .as_ref()
            .map_or(SessionStatus::None, |s| s.view.status)
    }

    /// The access log's `owner` field (docs/configuration.md#admin-and-logging): the
    /// owner in clear with `log.owner: true`, else a pseudonym that correlates lines.
    fn owner_for_log(&self, clear: bool) -> Option<String> {
        let owner = self.session.as_ref()?.view.owner.as_ref()?;
        Some(if clear {
            owner.literal().to_owned()
        } else {
            owner.key().as_str().chars().take(12).collect()
        })
    }
}

/// What step 5 took from the upstream's response.
struct Taken {
    /// The session instructions, or why they are malformed.
    changes: Result<ChangeSet, Malformed>,
    /// The upstream's half of an accepted `101 Switching Protocols`.
    upgrade: Option<OnUpgrade>,
}

/// Shared state of the pipeline.
#[derive(Debug)]
pub struct Proxy {
    /// Replaced on SIGHUP; each request clones the `Arc` once. An `ArcSwap`, not a
    /// lock: the read every request makes writes no shared lock word (the reload is
    /// the only writer, and readers never wait for it).
    settings: ArcSwap<Settings>,
    /// The configured engine behind the wrapper that bounds and measures every call.
    store: Arc<TimedStore<AnyStore>>,
    upstream: Upstream,
    request_ids: RequestIds,
    /// Upgraded tunnels (WebSocket), which outlive their HTTP connection.
    tunnels: upgrade::Tunnels,
    metrics: Arc<Metrics>,
    /// The pipelines of the proxy workers and their runtimes, when this one is the
    /// control plane's (`server::workers`): the admin's gauges add them up.
    workers: OnceLock<Vec<(Arc<Proxy>, tokio::runtime::Handle)>>,
}

impl Proxy {
    pub fn new(
        settings: Settings,
        store: Arc<TimedStore<AnyStore>>,
        upstream: Upstream,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proxy {
            settings: ArcSwap::from_pointee(settings),
            store,
            upstream,
            request_ids: RequestIds::new(),
            tunnels: upgrade::Tunnels::new(),
            metrics,
            workers: OnceLock::new(),
        }
    }

    /// Record the proxy workers' pipelines (once, at start).
    pub fn set_workers(&self, workers: Vec<(Arc<Proxy>, tokio::runtime::Handle)>) {
        let _ = self.workers.set(workers);
    }

    /// This pipeline and the proxy workers' (when this is the control plane's).
    pub fn pipelines(&self) -> impl Iterator<Item = &Proxy> {
        std::iter::once(self).chain(
            self.workers
                .get()
                .into_iter()
                .flatten()
                .map(|(p, _)| p.as_ref()),
        )
    }

    /// Open upgraded tunnels, the workers' included.
    pub fn open_tunnels(&self) -> usize {
        let workers = self
            .workers
            .get()
            .map_or(0, |w| w.iter().map(|(p, _)| p.tunnels.len()).sum::<usize>());
        self.tunnels.len() + workers
    }

    /// Tasks alive on the current runtime and on the workers' runtimes.
    pub fn alive_tasks(&self) -> usize {
        let here =
            tokio::runtime::Handle::try_current().map_or(0, |r| r.metrics().num_alive_tasks());
        let workers = self.workers.get().map_or(0, |w| {
            w.iter()
                .map(|(_, r)| r.metrics().num_alive_tasks())
                .sum::<usize>()
        });
        here + workers
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn replace_settings(&self, settings: impl Into<Arc<Settings>>) {
        self.settings.store(settings.into());
    }

    pub fn store(&self) -> &Arc<TimedStore<AnyStore>> {
        &self.store
    }

    /// The open upgraded tunnels; shutdown closes and waits for them.
    pub fn tunnels(&self) -> &upgrade::Tunnels {
        &self.tunnels
    }

    /// The metrics this pipeline records (served by the admin listener).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serve one request; never fails (errors become short plain-text responses).
    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<Body>
    where
        B: RequestBody,
    {
        let settings = self.settings();
        // A trusted proxy's sane X-Request-Id is kept; anything else gets a fresh id.
        let request_id = self
            .request_ids
            .for_request(req.headers(), settings.is_trusted(conn.peer));
        // Written once, when this function returns or when the client goes away first.
        let mut line = AccessLine::new(&self.metrics, &req, request_id);
        let version = req.version();
        let has_body = request_has_body(&req);
        // In two halves, so that the access line has the session status as soon as the
        // session is loaded: a request that fails later, or whose client leaves while
        // the app works (499), is logged with it.
        let result = match self.receive(&settings, req, conn, &line.request_id).await {
            Ok(inbound) => {
                line.session = inbound.session_status();
                line.owner = inbound.owner_for_log(settings.log_owner);
                self.process(&settings, inbound, conn, &line.request_id)
                    .await
            }
            Err(e) => Err(e),
        };
        let response =
            result.unwrap_or_else(|e| error_response(e, &line.request_id, version, has_body));
        line.answered(response.status());
        response
    }

    /// Steps 1–2: the request cleaned of the client's reserved headers, and its session.
    async fn receive<B: RequestBody>(
        &self,
        settings: &Settings,
        mut req: Request<B>,
        conn: &ConnInfo,
        request_id: &str,
    ) -> Result<Inbound<B>, ProxyError> {
        // 1. Strip: framing checked and the client's reserved headers removed, before
        //    anything reads a field.
        strip_request(settings, &mut req, conn)?;

        // 2. Load: cookie → session (one store round trip), unless bypassed.
        let session = if settings.is_bypass(req.uri().path()) {
            None
        } else {
            // Boxed, as the upstream and store calls of steps 4 and 6: the engines' futures
            // are KiBs, and inline they made this future ~17 KiB, copied whole on every
            // request
            // (docs/performance.md#what-changed-each-measured-side-by-side-before-it-landed).
            Some(Box::pin(self.load_session(settings, &req, conn, request_id)).await?)
        };
        Ok(Inbound { req, session })
    }

    /// Steps 3–7: inject, forward, then do what the response asks of the session.
    async fn process(
        &self,
        settings: &Settings,
        inbound: Inbound<impl RequestBody>,
        conn: &ConnInfo,
        request_id: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let Inbound { mut req, session } = inbound;

        // 3. Inject: the forwarding headers first (hop-by-hop fields go before
        //    injection, so `Connection` cannot remove what we add), then the session,
        //    then our request id.
        let upgrade = forwarding_headers(settings, &mut req, conn);
        if let Some(s) = &session {
            inject(settings, req.headers_mut(), s).inspect_err(|e| {
                if let ProxyError::Store(e) = e {
                    self.metrics.store_error(e);
                }
            })?;
        }
        set_request_id(req.headers_mut(), request_id);

        // 4. Forward with the body streamed.
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let req = req.map(|b| strip_reserved_trailers(b, settings.prefix.clone()));
        let mut resp = self.forward(req).await?;

        // 5. Take the instructions out of the response (always, also when bypassed).
        let taken = take_instructions(settings, &mut resp, upgrade.as_ref(), request_id)?;
        let mut resp = resp.map(|b| strip_reserved_trailers(b, settings.prefix.clone()));

        // 6. Decide and apply the session write.
        if let Some(session) = session {
            let changes = taken.changes.map_err(|m| {
                self.metrics.write_rejected(RejectReason::Malformed);
                ProxyError::BadInstruction(m.to_string())
            })?;
            if !changes.ignored.is_empty() {
                tracing::warn!(request_id, names = ?changes.ignored, "ignored reserved response headers that are not instructions");
            }
            let cookie =
                Box::pin(self.persist(settings, session, &changes, resp.status(), request_id))
                    .await?;
            set_cookie(settings, resp.headers_mut(), cookie);
        }

        // 7. Respond, and join an accepted upgrade's two halves.
        if let (Some(client), Some(upstream)) = (client_upgrade, taken.upgrade) {
            self.tunnels.spawn(client, upstream);
        }
        Ok(resp)
    }

    /// Send the request upstream; its latency, or its failure by kind, is counted.
    async fn forward(&self, req: Request<Body>) -> Result<Response<PooledBody>, ProxyError> {
        let sent = Instant::now();
        match Box::pin(self.upstream.send(req)).await {
            Ok(resp) => {
                self.metrics.upstream_latency(sent.elapsed().as_secs_f64());
                Ok(resp)
            }
            Err(e) => {
                let kind = match e {
                    ProxyError::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
                    // The client's body failed, not the upstream.
                    ProxyError::RequestBody(_) | ProxyError::BodyTimeout => None,
                    _ => Some(UpstreamErrorKind::Unreachable),
                };
                if let Some(kind) = kind {
                    self.metrics.upstream_error(kind);
                }
                Err(e)
            }
        }
    }

    /// Read and verify the cookie, then load the session in one store round trip.
    async fn load_session(
        &self,
        settings: &Settings,
        req: &Request<impl RequestBody>,
        conn: &ConnInfo,
        request_id: &str,
    ) -> Result<RequestSession, ProxyError> {
        let client = settings
            .record_client
            .then(|| client_info(settings, req.headers(), conn));
        let view = |status, id, needs_resign| SessionView {
            status,
            id,
            needs_resign,
            max_age: None,
            remaining: 0,
            owner: None,
        };
        let verified = match read_session_cookie(req.headers(), &settings.signer) {
            CookieState::Absent => {
                return Ok(RequestSession {
                    view: view(SessionStatus::None, None, false),
                    loaded: None,
                    client,
                });
            }
            CookieState::Invalid => {
                return Ok(RequestSession {
                    view: view(SessionStatus::Invalid, None, false),
                    loaded: None,
                    client,
                });
            }
            CookieState::Valid(v) => v,
        };
        // The store bounds the call by `store.timeout` (a timeout is a
        // `StoreError::Timeout`) and records its metrics.
        let touch = settings.touch(req.uri().path());
        match self.store.load_touch(&verified.id, touch).await {
            Ok(Some(loaded)) => {
                if let (Some(bound_ms), Some(owner)) = (loaded.index_due, &loaded.owner) {
                    owners::refresh_bound(&*self.store, &verified.id, owner, bound_ms, request_id)
                        .await;
                }
                Ok(RequestSession {
                    view: SessionView {
                        status: SessionStatus::Active,
                        id: Some(verified.id),
                        needs_resign: verified.needs_resign,
                        max_age: loaded.max_age,
                        remaining: loaded.remaining,
                        owner: loaded.owner.clone(),
                    },
                    loaded: Some(loaded),
                    client,
                })
            }
            Ok(None) => Ok(RequestSession {
                view: view(SessionStatus::Expired, None, false),
                loaded: None,
                client,
            }),
            Err(e) if settings.on_error == OnError::Anonymous => {
                tracing::warn!(error = %e, "session store unavailable: forwarding without a session");
                Ok(RequestSession {
                    view: view(SessionStatus::Unavailable, None, false),
                    loaded: None,
                    client,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Apply the response's changes (one atomic store write, plus one more only when the
    /// session vanished meanwhile) and say which cookie to send.
    async fn persist(
        &self,
        settings: &Settings,
        session: RequestSession,
        changes: &ChangeSet,
        status: StatusCode,
        request_id: &str,
    ) -> Result<CookieAction, ProxyError> {
        let new_id = || SessionId::generate().map_err(|e| ProxyError::Random(e.to_string()));
        let decision = lifecycle::decide(
            &session.view,
            changes,
            ResponseClass::of(status),
            &settings.policy,
            new_id,
        )?;
        let dropped = match &decision {
            Ok(d) => d.dropped,
            Err(unavailable) => unavailable.dropped,
        };
        if dropped {
            tracing::info!(
                request_id,
                status = status.as_u16(),
                "session writes on a 5xx response not applied"
            );
            self.metrics.write_rejected(RejectReason::ServerError);
        }
        let Decision { plan, cookie, .. } = decision.map_err(|_| {
            self.metrics.write_rejected(RejectReason::StoreUnavailable);
            ProxyError::WriteWithoutStore
        })?;
        // Revocations come before the session's own write (docs/protocol.md §5.3) and,
        // like a Destroy, also on a 5xx: they only remove sessions.
        self.revoke(settings, &session, changes, request_id).await?;
        let Some(mut plan) = plan else {
            return Ok(cookie);
        };
        if let Target::Existing(_) = &plan.target {
            // Handed back unchanged: an engine that noted what it read can write without
            // reading the session again.
            plan.revision = session.loaded.as_ref().and_then(|l| l.revision.clone());
        }
        if matches!(
            plan.target,
            Target::Create(_) | Target::DestroyThenCreate { .. }
        ) {
            plan.client = session.client.clone();
        }
        let previous = session.view.owner.as_ref();
        match self.write(settings, &plan, previous, request_id).await? {
            WriteOutcome::Applied => Ok(cookie),
            WriteOutcome::Gone => {
                // Destroyed or expired since this request loaded it: never revive the
                // old id; the writes start a new session.
                let retry = lifecycle::retry_as_new(&plan, new_id()?, &settings.policy);
                let Some(mut plan) = retry.plan else {
                    return Ok(retry.cookie);
                };
                plan.client = session.client.clone();
                match self.write(settings, &plan, None, request_id).await? {
                    WriteOutcome::Applied => Ok(retry.cookie),
                    WriteOutcome::Gone => Err(ProxyError::Store(StoreError::Unavailable(
                        "a new session could not be created".into(),
                    ))),
                }
            }
        }
    }

    /// One session write with its owner steps: the index entry first, the write, then
    /// the stale entries and the owner limit (src/owners.rs says why in this order).
    async fn write(
        &self,
        settings: &Settings,
        plan: &WritePlan,
        previous: Option<&Owner>,
        request_id: &str,
    ) -> Result<WriteOutcome, ProxyError> {
        let store = &*self.store;
        owners::before_write(store, plan).await?;
        let outcome = self.store.apply(plan).await?;
        if outcome == WriteOutcome::Applied {
            owners::after_write(store, plan, previous, request_id).await;
            if let (crate::store::OwnerChange::Attach { owner, .. }, Some(limit)) =
                (&plan.owner, settings.max_per_owner)
            {
                let current = match &plan.target {
                    Target::Existing(id) | Target::Create(id) => id.store_key(),
                    Target::Move { to, .. } => to.store_key(),
                    Target::DestroyThenCreate { new, .. } => new.store_key(),
                    Target::Destroy(id) => id.store_key(),
                };
                match owners::enforce_limit(store, owner, limit, &current).await {
                    Ok(n) => self.metrics.revoked(RevokeCause::Limit, n),
                    // The write stands; the next attach for this owner enforces again.
                    Err(e) => {
                        tracing::warn!(request_id, error = %e, "could not enforce session.max_per_owner")
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// `X-Session-Revoke-Owner` and `X-Session-Revoke-Others`. A store failure midway
    /// answers 503; what was destroyed stays destroyed (the app may retry the request).
    async fn revoke(
        &self,
        _settings: &Settings,
        session: &RequestSession,
        changes: &ChangeSet,
        request_id: &str,
    ) -> Result<(), ProxyError> {
        if !changes.revokes() {
            return Ok(());
        }
        let store = &*self.store;
        for literal in &changes.revoke_owners {
            let owner = Owner::from_literal(literal.clone());
            let n = owners::revoke_owner(store, &owner, None).await?;
            self.metrics.revoked(RevokeCause::Owner, n);
            tracing::info!(request_id, revoked = n, "revoked the sessions of an owner");
        }
        let current = session
            .view
            .id
            .as_ref()
            .filter(|_| session.view.status == SessionStatus::Active);
        if changes.revoke_others
            && let (Some(owner), Some(id)) = (&session.view.owner, current)
            && !changes.revoke_owners.iter().any(|r| r == owner.literal())
        {
            let n = owners::revoke_owner(store, owner, Some(&id.store_key())).await?;
            self.metrics.revoked(RevokeCause::Others, n);
            tracing::info!(
                request_id,
                revoked = n,
                "revoked the other sessions of this session's owner"
            );
        }
        Ok(())
    }
}

/// What `session.record_client` keeps: the peer's address, or behind a trusted proxy
/// the last `X-Forwarded-For` entry (the address that proxy saw), and `User-Agent`.
fn client_info(settings: &Settings, headers: &http::HeaderMap, conn: &ConnInfo) -> ClientInfo {
    let forwarded = settings
        .is_trusted(conn.peer)
        .then(|| headers.get_all("x-forwarded-for").iter().next_back())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok());
    let ip = forwarded.unwrap_or(conn.peer.ip()).to_string();
    let agent = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], |v| v.as_bytes());
    ClientInfo::new(ip, agent)
}

/// Step 1: refuse ambiguous framing, turn an h2 request into its h1 form (`Host` from
/// `:authority`, cookie crumbs joined), refuse an ambiguous `Host`, remove the client's
/// reserved headers and bound the cookie size.
fn strip_request<B>(
    settings: &Settings,
    req: &mut Request<B>,
    conn: &ConnInfo,
) -> Result<(), ProxyError> {
    if conn.ambiguous_framing {
        return Err(ProxyError::BadFraming(
            "Content-Length together with Transfer-Encoding",
        ));
    }
    headers::check_framing(req.headers())?;
    headers::normalize_h2(req)?;
    headers::check_host(req.headers())?;
    settings.prefix.strip(req.headers_mut());
    if headers::cookie_bytes(req.headers()) > settings.max_header_size {
        return Err(ProxyError::HeaderTooLarge);
    }
    Ok(())
}

/// Step 3's forwarding headers: hop-by-hop fields removed (keeping an HTTP/1.1
/// upgrade, which is returned), reserved names out of the trailer declaration,
/// `X-Forwarded-*` set, the session cookie removed unless forwarded.
fn forwarding_headers<B>(
    settings: &Settings,
    req: &mut Request<B>,
    conn: &ConnInfo,
) -> Option<HeaderValue> {
    let upgrade = headers::remove_hop_by_hop(req.headers_mut())
        // Upgrade is an HTTP/1.1 mechanism (RFC 9110 §7.8); rpxy refuses it on
        // anything else, so do we: the request goes on as a plain one.
        .filter(|_| req.version() == http::Version::HTTP_11);
    let headers = req.headers_mut();
    headers::filter_trailer_declaration(headers, &settings.prefix);
    if let Some(proto) = upgrade.clone() {
        headers::restore_upgrade(headers, proto);
    }
    headers::set_forwarded(
        headers,
        &conn.peer_value,
        settings.is_trusted(conn.peer),
        conn.scheme,
    );
    if !settings.forward_cookie {
        strip_session_cookie(headers, settings.signer.cookie_name());
    }
    upgrade
}

/// Always ours: the client's value was used (trusted) or replaced.
fn set_request_id(headers: &mut http::HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// Step 5: take the session instructions out of the response, remove the upstream's own
/// session cookie, hop-by-hop fields and reserved trailer names, and accept a `101` only
/// for a protocol the client asked for (`asked`).
fn take_instructions<B>(
    settings: &Settings,
    resp: &mut Response<B>,
    asked: Option<&HeaderValue>,
    request_id: &str,
) -> Result<Taken, ProxyError> {
    let changes = settings.prefix.take_instructions(resp.headers_mut());
    if cookie::strip_upstream_session_cookie(resp.headers_mut(), settings.signer.cookie_name()) > 0
    {
        tracing::warn!(
            request_id,
            "removed the upstream's own Set-Cookie for the session cookie's name"
        );
    }
    let chosen = headers::remove_hop_by_hop(resp.headers_mut());
    headers::filter_trailer_declaration(resp.headers_mut(), &settings.prefix);
    // A tunnel only for a `101` that switches to a protocol the client asked for
    // (never h2c: `remove_hop_by_hop`); any other `101` is the app's mistake.
    let upgrade = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match (asked, chosen) {
            (Some(asked), Some(chosen)) if headers::upgrade_offers(asked, &chosen) => {
                headers::restore_upgrade(resp.headers_mut(), chosen);
                Some(hyper::upgrade::on(resp))
            }
            _ => {
                return Err(ProxyError::UpstreamProtocol(
                    "the upstream switched protocols without a matching upgrade request",
                ));
            }
        }
    } else {
        None
    };
    Ok(Taken { changes, upgrade })
}

/// The short plain-text answer for a request that failed.
fn error_response(
    e: ProxyError,
    request_id: &str,
    version: http::Version,
    has_body: bool,
) -> Response<Body> {
    if e.status().is_server_error() {
        tracing::warn!(request_id = %request_id, error = %e, "request failed");
    } else {
        tracing::info!(request_id = %request_id, error = %e, "request refused");
    }
    let mut resp = e.into_response(request_id);
    if version == http::Version::HTTP_2 {
        // h2 has no `Connection` field (hyper would strip it with a warning), and an
        // unread body is one stream, not a connection-reuse hazard.
        resp.headers_mut().remove(header::CONNECTION);
    } else if has_body {
        // A body we never read must not be taken for the next request on this
        // connection (docs/protocol.md §10.4).
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Add `X-Session`, `X-Session-Flash`, `X-Session-Status` (and `X-Session-Id`).
fn inject(
    settings: &Settings,
    headers: &mut http::HeaderMap,
    session: &RequestSession,
) -> Result<(), ProxyError> {
    let p = &settings.prefix;
    let (data, flash) = match &session.loaded {
        Some(l) => (encode_object(&l.data), encode_object(&l.flash)),
        None => ("{}".to_owned(), "{}".to_owned()),
    };
    // Stored values are ASCII-escaped JSON written by this sidecar; anything else in the
    // store is corruption, not something to pass on as a header.
    let value = |s: String| {
        HeaderValue::try_from(s).map_err(|_| {
            ProxyError::Store(StoreError::Corrupt(
                "stored session is not a valid header value".into(),
            ))
        })
    };
    headers.insert(p.session(), value(data)?);
    headers.insert(p.flash(), value(flash)?);
    headers.insert(p.status(), session.view.status.header_value());
    if let Some(owner) = &session.view.owner {
        headers.insert(p.owner(), value(owner.literal().to_owned())?);
    }
    if settings.expose_id
        && let Some(id) = &session.view.id
    {
        headers.insert(p.id(), value(id.as_str().to_owned())?);
    }
    Ok(())
}

fn set_cookie(settings: &Settings, headers: &mut http::HeaderMap, action: CookieAction) {
    let value = match action {
        CookieAction::None => return,
        CookieAction::Issue { id, max_age } => {
            settings.cookie.issue(&settings.signer.sign(&id), max_age)
        }
        CookieAction::Clear => settings.cookie.clear(),
    };
    headers.append(header::SET_COOKIE, value);
    make_private(headers);
}

fn request_has_body(req: &Request<impl RequestBody>) -> bool {
    !req.body().is_end_stream()
}

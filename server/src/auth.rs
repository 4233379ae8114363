//! PROTOCOL §7 in one place: who the caller is ([`Gate::authenticate`]) and
//! what it may do ([`Gate::check`]). Every browser route and every WebSocket
//! frame passes through [`Gate::check`]; the HTTP routes reach it through the
//! [`Granted`] extractor, so a handler cannot forget it.
//!
//! Rules (PROTOCOL §7, SERVER.md §1):
//! - The publish key (`--publish-key-file`) is compared first, in constant
//!   time, before a bearer is read as a JWT. It may read and cancel every run
//!   and publish; a send with it is `403` (sends are a user's).
//! - A JWT comes from `Authorization: Bearer`, a WebSocket frame's `headers`,
//!   or the cookie (default `runstream_token`). `HS256` with a secret, or a PEM
//!   public key whose type decides `RS256`/`ES256`; `alg: none` and every other
//!   algorithm are refused. `exp` is required; `nbf` is checked when present;
//!   `iss`/`aud` only when configured; 30 s leeway.
//! - `runs` grants reading and cancelling those runs; `sessions` grants
//!   sending into those sessions and reading/cancelling their runs: the chat
//!   run whose id is the session id and every run published with that
//!   `session_id`.
//! - `401`: no, invalid or expired credentials. `403`: valid ones without the
//!   right. An unknown run is `404` only to a caller who would have the right
//!   to its id (or with `--auth none`); anyone else gets `403`, so run ids
//!   cannot be probed.
//!
//! Nothing here logs a token or a header value: denials are counted by
//! [`DenyReason`] only.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use runstream::core::wire::ErrorCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::Metrics;
use crate::store::{RunMeta, Store, StoreError};

/// Clock leeway on `exp` and `nbf`, in every server (PROTOCOL §7).
pub const LEEWAY_S: u64 = 30;
/// The cookie a JWT is read from by default (`--jwt-cookie`).
pub const DEFAULT_COOKIE: &str = "runstream_token";
/// Longest bearer token read (bytes); a longer one is refused as malformed
/// before any parsing, so a huge header costs nothing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most entries read from a token's `runs` or `sessions` claim; a token with
/// more is refused as malformed.
pub const MAX_GRANTS: usize = 1024;

/// How requests are authenticated (`--auth none`, `--jwt-secret-file`, `--jwt-public-key-file`).
pub enum AuthMode {
    /// Every caller may do everything (local development: `--auth none`).
    None,
    /// PROTOCOL §7's JWTs.
    Jwt(Box<JwtConfig>),
}

/// A JWT verifier: one key, one algorithm.
pub struct JwtConfig {
    key: DecodingKey,
    validation: Validation,
    cookie: String,
}

/// Why a JWT key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The secret file is empty (after trimming a final newline).
    #[error("{0}: the secret is empty")]
    EmptySecret(String),
    /// The PEM is neither an RSA nor an EC P-256 public key.
    #[error("{0}: not an RSA or EC (P-256) public key in PEM")]
    NotAPublicKey(String),
}

/// Options every JWT verifier takes (`--jwt-cookie`, `--jwt-issuer`, `--jwt-audience`).
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// The cookie name (default [`DEFAULT_COOKIE`]).
    pub cookie: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// Reads a file's bytes, without one final newline (what `echo secret > f` leaves).
pub fn read_key_file(path: &str) -> Result<Vec<u8>, KeyError> {
    let mut b = std::fs::read(path).map_err(|e| KeyError::Read(path.to_owned(), e))?;
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    Ok(b)
}

impl JwtConfig {
    /// HS256 with the secret in `path`.
    pub fn hs256_file(path: &str, opts: JwtOptions) -> Result<Self, KeyError> {
        let secret = read_key_file(path)?;
        if secret.is_empty() {
            return Err(KeyError::EmptySecret(path.to_owned()));
        }
        Ok(Self::new(
            DecodingKey::from_secret(&secret),
            Algorithm::HS256,
            opts,
        ))
    }

    /// RS256 or ES256, decided by the PEM public key in `path`.
    pub fn public_key_file(path: &str, opts: JwtOptions) -> Result<Self, KeyError> {
        let pem = read_key_file(path)?;
        if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(k, Algorithm::RS256, opts));
        }
        if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::new(k, Algorithm::ES256, opts));
        }
        Err(KeyError::NotAPublicKey(path.to_owned()))
    }

    /// A verifier of `alg` tokens signed by `key`.
    pub fn new(key: DecodingKey, alg: Algorithm, opts: JwtOptions) -> Self {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = LEEWAY_S;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &opts.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &opts.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        Self {
            key,
            validation: v,
            cookie: opts.cookie.unwrap_or_else(|| DEFAULT_COOKIE.to_owned()),
        }
    }

    /// The algorithm tokens must carry.
    pub fn algorithm(&self) -> Algorithm {
        self.validation
            .algorithms
            .first()
            .copied()
            .unwrap_or(Algorithm::HS256)
    }
}

/// The claims runstream reads (PROTOCOL §7). Unknown claims are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// The user: logged and counted, never trusted for access.
    #[serde(default)]
    pub sub: Option<String>,
    /// Runs the bearer may read and cancel.
    #[serde(default)]
    pub runs: Vec<String>,
    /// Chat sessions the bearer may send into (and whose runs it may read and cancel).
    #[serde(default)]
    pub sessions: Vec<String>,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// `--auth none`: anybody, with every right but the publish key's.
    Open,
    /// The publish key: a team's backend.
    Publisher,
    /// A JWT's bearer.
    User(Arc<Claims>),
}

impl Principal {
    /// When these credentials stop being valid (a JWT's `exp` plus the leeway).
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Self::User(c) => Some(UNIX_EPOCH + Duration::from_secs(c.exp.saturating_add(LEEWAY_S))),
            _ => None,
        }
    }

    /// Whether this caller would have the right to run `run_id` (`meta`:
    /// the run's, `None` for an unknown run). A `sessions` claim grants the
    /// runs that belong to one of its sessions (the chat run, whose id is the
    /// session id, and runs published with that `session_id`) — by the run's
    /// recorded session, never by an id that merely equals a session's; an
    /// unknown id equal to a granted session is that session's chat run to be.
    fn may_access_run(&self, run_id: &str, meta: Option<&RunMeta>) -> bool {
        match self {
            Self::Open | Self::Publisher => true,
            Self::User(c) => {
                let granted = |s: &str| c.sessions.iter().any(|x| x == s);
                c.runs.iter().any(|r| r == run_id)
                    || match meta {
                        None => granted(run_id),
                        Some(m) => m.session_id.as_deref().is_some_and(granted),
                    }
            }
        }
    }

    /// The user's `sub` for logs (never used for access).
    pub fn sub(&self) -> Option<&str> {
        match self {
            Self::User(c) => c.sub.as_deref(),
            _ => None,
        }
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read run `.0` (stream, WebSocket subscribe, snapshot).
    Read(&'a str),
    /// Cancel run `.0` (or one of its replies).
    Cancel(&'a str),
    /// Send into chat session `.0`.
    Send(&'a str),
    /// Use the publish API (server-to-server).
    Publish,
}

/// Why a request was refused: the label of `runstream_auth_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No credentials at all.
    Missing,
    /// Not a JWT, a header or payload that does not parse, `alg: none`, too long.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Another algorithm than the configured one.
    WrongAlgorithm,
    /// `exp` in the past (beyond the leeway).
    Expired,
    /// No `exp` claim.
    NoExpiry,
    /// `nbf` in the future, or `iss`/`aud` not the configured ones.
    InvalidClaims,
    /// Valid credentials without the right for this run or session.
    NotGranted,
    /// The publish key tried to send a user's message.
    PublisherSend,
    /// An unknown run asked about by a caller who would have its right.
    UnknownRun,
}

impl DenyReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::Expired => "expired",
            Self::NoExpiry => "no_expiry",
            Self::InvalidClaims => "invalid_claims",
            Self::NotGranted => "not_granted",
            Self::PublisherSend => "publisher_send",
            Self::UnknownRun => "unknown_run",
        }
    }

    /// Every reason (for the metrics' zeroes).
    pub const ALL: [DenyReason; 10] = [
        Self::Missing,
        Self::Malformed,
        Self::BadSignature,
        Self::WrongAlgorithm,
        Self::Expired,
        Self::NoExpiry,
        Self::InvalidClaims,
        Self::NotGranted,
        Self::PublisherSend,
        Self::UnknownRun,
    ];
}

/// A refusal, as PROTOCOL §7 answers it.
#[derive(Debug)]
pub enum Denied {
    /// `401` / `unauthorized`: the client refreshes its credentials once.
    Unauthorized(DenyReason),
    /// `403` / `forbidden`: final.
    Forbidden(DenyReason),
    /// `404` / `not_found`: the caller would have the right, but the run is unknown.
    NotFound,
    /// The store could not answer: `503` / `unavailable` (retried).
    Store(StoreError),
}

impl Denied {
    /// The WebSocket `error` op's code (PROTOCOL §2b).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound => ErrorCode::NotFound,
            Self::Store(_) => ErrorCode::Unavailable,
        }
    }

    /// The error op's message: says nothing of the run.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "unknown run",
            Self::Store(_) => "store unavailable",
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized(_) => {
                let mut r = (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"runstream\""),
                );
                r
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden").into_response(),
            Self::NotFound => (StatusCode::NOT_FOUND, "unknown run").into_response(),
            Self::Store(e) => crate::unavailable("", &e),
        }
    }
}

/// Where a request's credentials are: a bearer token and/or a cookie header.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// `Authorization: Bearer <this>`.
    pub bearer: Option<&'a str>,
    /// The `Cookie` header(s), joined.
    pub cookies: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// From an HTTP request's headers.
    pub fn from_headers(h: &'a HeaderMap) -> Self {
        Self {
            bearer: h
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer),
            cookies: h.get(header::COOKIE).and_then(|v| v.to_str().ok()),
        }
    }

    /// From a WebSocket frame's `headers` object (names case-insensitive),
    /// falling back to the upgrade request's cookie.
    pub fn from_frame(
        headers: Option<&'a runstream::core::wire::Headers>,
        upgrade_cookies: Option<&'a str>,
    ) -> Self {
        let bearer = headers.and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| bearer(v))
        });
        Self {
            bearer,
            cookies: upgrade_cookies,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim().trim_matches('"'))
    })
}

/// The authorization layer: the mode, the publish key, the store to look
/// runs up in and the counters of denials.
pub struct Gate {
    mode: Arc<AuthMode>,
    /// SHA-256 of the publish key.
    publish_key: Option<Vec<u8>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

/// A granted request: who asked, and the run's meta for run actions (`None`
/// for a send into a new session or a publish).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The caller.
    pub principal: Principal,
    /// The run acted on, as the check read it.
    pub meta: Option<RunMeta>,
}

impl Gate {
    /// A gate in `mode`; `publish_key` enables the publish API.
    pub fn new(
        mode: Arc<AuthMode>,
        publish_key: Option<Vec<u8>>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            mode,
            publish_key: publish_key
                .filter(|k| !k.is_empty())
                .map(|k| Sha256::digest(&k).to_vec()),
            store,
            metrics,
        }
    }

    /// Whether the publish API is on (a key was configured).
    pub fn publishing(&self) -> bool {
        self.publish_key.is_some()
    }

    /// Who `creds` are (PROTOCOL §7): the publish key first, in constant
    /// time, then a JWT (bearer before cookie).
    pub fn authenticate(&self, creds: Credentials<'_>) -> Result<Principal, DenyReason> {
        if let (Some(key), Some(b)) = (&self.publish_key, creds.bearer) {
            // Digests of equal length, compared in constant time: neither the
            // key's bytes nor its length show in the time taken.
            let given = Sha256::digest(b.as_bytes());
            if bool::from(given.as_slice().ct_eq(key.as_slice())) {
                return Ok(Principal::Publisher);
            }
        }
        let jwt = match &*self.mode {
            AuthMode::None => return Ok(Principal::Open),
            AuthMode::Jwt(j) => j,
        };
        let token = creds
            .bearer
            .or_else(|| creds.cookies.and_then(|c| cookie(c, &jwt.cookie)))
            .ok_or(DenyReason::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(DenyReason::Malformed);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => DenyReason::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    DenyReason::WrongAlgorithm
                }
                ErrorKind::ExpiredSignature => DenyReason::Expired,
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => DenyReason::NoExpiry,
                ErrorKind::ImmatureSignature
                | ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => DenyReason::InvalidClaims,
                _ => DenyReason::Malformed,
            },
        )?;
        let c = data.claims;
        if c.runs.len() > MAX_GRANTS || c.sessions.len() > MAX_GRANTS {
            return Err(DenyReason::Malformed);
        }
        Ok(Principal::User(Arc::new(c)))
    }

    /// Authenticates `creds` and authorizes `action` (PROTOCOL §7), counting a denial.
    pub async fn check(&self, creds: Credentials<'_>, action: Action<'_>) -> Result<Grant, Denied> {
        let r = match self.authenticate(creds) {
            Ok(p) => self.authorize(p, action).await,
            Err(reason) => Err(Denied::Unauthorized(reason)),
        };
        if let Err(d) = &r {
            let reason = match d {
                Denied::Unauthorized(r) | Denied::Forbidden(r) => Some(*r),
                Denied::NotFound => Some(DenyReason::UnknownRun),
                Denied::Store(_) => None,
            };
            if let Some(reason) = reason {
                self.metrics.auth_denied(reason);
            }
        }
        r
    }

    /// Whether `principal` may do `action`; reads the run's meta for run actions.
    pub async fn authorize(
        &self,
        principal: Principal,
        action: Action<'_>,
    ) -> Result<Grant, Denied> {
        match action {
            Action::Publish => match principal {
                Principal::Publisher => Ok(Grant {
                    principal,
                    meta: None,
                }),
                // A user's token (or none) on a server-to-server route.
                Principal::Open => Err(Denied::Unauthorized(DenyReason::Missing)),
                Principal::User(_) => Err(Denied::Forbidden(DenyReason::NotGranted)),
            },
            Action::Send(session) => {
                let ok = match &principal {
                    Principal::Open => true,
                    Principal::Publisher => {
                        return Err(Denied::Forbidden(DenyReason::PublisherSend))
                    }
                    Principal::User(c) => c.sessions.iter().any(|s| s == session),
                };
                if !ok {
                    return Err(Denied::Forbidden(DenyReason::NotGranted));
                }
                // A run whose id equals the session but that belongs to
                // another session (or none) is not that session's chat run.
                let meta = self.store.meta(session).await.map_err(Denied::Store)?;
                if let (Principal::User(_), Some(m)) = (&principal, &meta) {
                    if m.session_id.as_deref() != Some(session) {
                        return Err(Denied::Forbidden(DenyReason::NotGranted));
                    }
                }
                Ok(Grant { principal, meta })
            }
            Action::Read(run_id) | Action::Cancel(run_id) => {
                let meta = self.store.meta(run_id).await.map_err(Denied::Store)?;
                if !principal.may_access_run(run_id, meta.as_ref()) {
                    return Err(Denied::Forbidden(DenyReason::NotGranted));
                }
                match meta {
                    Some(m) => Ok(Grant {
                        principal,
                        meta: Some(m),
                    }),
                    None => Err(Denied::NotFound),
                }
            }
        }
    }
}

/// Which action a route performs, read from its path parameters.
pub trait Rule: Send + Sync + 'static {
    /// The path parameter naming the run or session (`None` for the publish API).
    const PARAM: Option<&'static str>;
    /// The action on that id.
    fn action(id: &str) -> Action<'_>;
}

/// `GET /api/stream/runs/{run_id}`, `GET /api/runs/{run_id}/snapshot`.
pub struct ReadRun;
impl Rule for ReadRun {
    const PARAM: Option<&'static str> = Some("run_id");
    fn action(id: &str) -> Action<'_> {
        Action::Read(id)
    }
}

/// `POST /api/runs/{run_id}/cancel`.
pub struct CancelRun;
impl Rule for CancelRun {
    const PARAM: Option<&'static str> = Some("run_id");
    fn action(id: &str) -> Action<'_> {
        Action::Cancel(id)
    }
}

/// `POST /api/chat/{session_id}/messages`.
pub struct SendInto;
impl Rule for SendInto {
    const PARAM: Option<&'static str> = Some("session_id");
    fn action(id: &str) -> Action<'_> {
        Action::Send(id)
    }
}

/// `/api/publish/*`.
pub struct Publish;
impl Rule for Publish {
    const PARAM: Option<&'static str> = None;
    fn action(_: &str) -> Action<'_> {
        Action::Publish
    }
}

/// The extractor every protected route takes: the request is authenticated
/// and authorized for `R`'s action before the handler runs; a refusal is
/// answered here (401/403/404/503) and the handler never sees it.
pub struct Granted<R: Rule> {
    /// What the check found.
    pub grant: Grant,
    _rule: PhantomData<R>,
}

impl<R: Rule> FromRequestParts<crate::App> for Granted<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &crate::App) -> Result<Self, Response> {
        let id = match R::PARAM {
            Some(name) => {
                let Path(params) =
                    Path::<std::collections::HashMap<String, String>>::from_request_parts(
                        parts, app,
                    )
                    .await
                    .map_err(IntoResponse::into_response)?;
                params.get(name).cloned().unwrap_or_default()
            }
            None => String::new(),
        };
        let creds = Credentials::from_headers(&parts.headers);
        app.gate
            .check(creds, R::action(&id))
            .await
            .map(|grant| Self {
                grant,
                _rule: PhantomData,
            })
            .map_err(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_cookie_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(
            cookie("a=1; runstream_token=xyz; b=2", "runstream_token"),
            Some("xyz")
        );
        assert_eq!(cookie("xrunstream_token=1", "runstream_token"), None);
    }
}

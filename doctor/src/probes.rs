//! The probes: each reads the server the way a browser client does and
//! records findings in a [`Report`]. [`diagnose`] runs them concurrently
//! against one base URL.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runstream::core::state::{Parked, RunState};
use runstream_codec::envelope::decode_envelope;
use serde_json::{json, Value};

use crate::findings::{Id, Report, Severity};
use crate::net::{self, header, Ask, Base, Ev, OpenError, Resume, Sse};

/// What to check, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub run: Option<String>,
    pub token: Option<String>,
    pub publish_key: Option<String>,
    /// How long an idle stream is held (`--hold`, seconds).
    pub hold: Duration,
    /// The origin of the page that reads the stream (`--page-origin`); `None`: a made-up foreign origin.
    pub page_origin: Option<String>,
    /// The chat session the `send-idempotency` probe sends into (`--session`); default a fresh one.
    pub session: Option<String>,
    /// Extra trusted roots, PEM (`--ca-file`): an internal CA or a test's self-signed one.
    pub ca_pem: Option<Vec<u8>>,
    /// Whether this base is the origin of a `--origin` comparison (headers a proxy consumes are checked there).
    pub is_origin: bool,
}

/// Silence after which a missing heartbeat is a finding (SERVER.md §3: 20 s).
pub const HEARTBEAT_WITHIN: Duration = Duration::from_secs(20);
/// Tolerance on timers (scheduling on a loaded machine).
const SLACK: Duration = Duration::from_millis(750);
/// Spacing of the probe's live events (`buffering`).
const SPACING: Duration = Duration::from_millis(500);
/// A live event that arrives later than this after its append returned was held by a hop
/// (generous: a loaded machine delays a push by far less).
const LATE: Duration = Duration::from_secs(3);
/// Live events the probe appends for `buffering`.
const LIVE_EVENTS: usize = 6;
/// A stream with events to replay that has no response headers after this long is held by a hop.
const LIVE_HEADERS_WITHIN: Duration = Duration::from_secs(5);
/// Response headers later than this on a resume with nothing to replay are `headers-delayed`.
const HEADERS_WITHIN: Duration = Duration::from_secs(3);
/// Bound on the parked job-only events of the snapshot comparison (the gateway's `PARK_CAP`).
const PARK_CAP: usize = 4096;
/// A made-up page origin for the `cors` probe when `--page-origin` is not given.
const FOREIGN_ORIGIN: &str = "https://runstream-doctor.invalid";
/// Waits of single requests.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// Per-process unique suffix for the doctor's run ids, session ids and keys.
pub fn nonce() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t & 0xffff_ffff_ffff, std::process::id())
}

struct Ctx {
    http: reqwest::Client,
    base: Base,
    o: Options,
    nonce: String,
}

impl Ctx {
    /// Credentials that may read every run: the publish key, else the token.
    fn reader(&self) -> Option<&str> {
        self.o.publish_key.as_deref().or(self.o.token.as_deref())
    }
    fn ask(&self) -> Ask<'_> {
        Ask {
            auth: self.reader(),
            origin: None,
        }
    }
    async fn open(&self, run: &str, resume: Resume, wait: Duration) -> Result<Sse, OpenError> {
        net::open(&self.http, &self.base.stream(run), resume, self.ask(), wait).await
    }

    async fn post(
        &self,
        path: &str,
        auth: Option<&str>,
        idem: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let mut rq = self
            .http
            .post(self.base.at(path))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .timeout(REQUEST_WAIT);
        if let Some(a) = auth {
            rq = rq.header("Authorization", format!("Bearer {a}"));
        }
        if let Some(k) = idem {
            rq = rq.header("Idempotency-Key", k);
        }
        let r = rq.send().await.map_err(|e| net::why(&e))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| net::why(&e))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn get_json(&self, path: &str, auth: Option<&str>) -> Result<(u16, String), String> {
        let mut rq = self.http.get(self.base.at(path)).timeout(REQUEST_WAIT);
        if let Some(a) = auth {
            rq = rq.header("Authorization", format!("Bearer {a}"));
        }
        let r = rq.send().await.map_err(|e| net::why(&e))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| net::why(&e))?))
    }
}

/// Runs every probe against `base` and returns what it found.
pub async fn diagnose(base: Base, o: Options) -> Report {
    let http = match net::client(o.ca_pem.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let mut r = Report::default();
            r.error(Id::Unreachable, e);
            return r;
        }
    };
    let cx = Ctx {
        http,
        base,
        o,
        nonce: nonce(),
    };
    let mut report = Report::default();
    // Is anything there? (an unknown run's stream: the cheapest request with a known answer)
    let unknown = format!("doctor-unknown-{}", cx.nonce);
    match cx
        .open(&unknown, Resume::Start, REQUEST_WAIT)
        .await
        .map(|s| s.status)
    {
        Err(e) => {
            report.error(
                Id::Unreachable,
                format!("{}: {e}", cx.base.stream(&unknown)),
            );
            return report;
        }
        Ok(status) => status_unknown(&mut report, status),
    }
    let (a, b, c) = tokio::join!(websocket_basics(&cx), cors(&cx, &unknown), main_probes(&cx));
    report.merge(a);
    report.merge(b);
    report.merge(c);
    fold_symptoms(&mut report);
    report.settle();
    report
}

fn status_unknown(r: &mut Report, status: u16) {
    match status {
        404 | 403 => r.check(Id::StatusUnknown),
        s => r.error(
            Id::StatusUnknown,
            format!("a stream of an unknown run answered {s}, not 404 (or 403)"),
        ),
    }
}

/// A buffering hop also holds heartbeats, headers and compressed bytes: those
/// are reported as its symptoms (warn), not as errors of their own.
fn fold_symptoms(r: &mut Report) {
    if !r.has(Id::Buffering, Severity::Error) {
        return;
    }
    for f in &mut r.findings {
        if f.severity == Severity::Error
            && matches!(
                f.id,
                Id::Heartbeat | Id::HeadersDelayed | Id::Compression | Id::IdleTimeout
            )
        {
            f.severity = Severity::Warn;
            f.message.push_str(if f.id == Id::Compression {
                " (with `buffering` above: the compressor is probably the hop that holds the stream)"
            } else {
                " (probably a symptom of the `buffering` finding: fix that first)"
            });
        }
    }
}

/// The probes that need a run: the doctor's own probe runs (publish key) or `--run`.
async fn main_probes(cx: &Ctx) -> Report {
    let mut r = Report::default();
    if cx.o.publish_key.is_some() {
        let probe = match ProbeRuns::create(cx).await {
            Ok(p) => p,
            Err(e) => {
                r.error(Id::Publish, e);
                given_run_or_skip(cx, &mut r).await;
                return r;
            }
        };
        let (a, b, c, d, e) = tokio::join!(
            probe.live(cx),
            probe.idle(cx),
            auth(cx, &probe.run, probe.setup_last),
            send_idempotency(cx),
            async {
                match cx.o.run {
                    Some(_) => given_run(cx).await,
                    None => Report::default(),
                }
            }
        );
        for part in [a, b, c, d, e] {
            r.merge(part);
        }
    } else {
        let why = "needs --publish-key (the doctor's own probe run)";
        for id in [Id::Buffering, Id::SendIdempotency, Id::CancelIdempotency] {
            r.skip(id, why);
        }
        given_run_or_skip(cx, &mut r).await;
    }
    r
}

async fn given_run_or_skip(cx: &Ctx, r: &mut Report) {
    if cx.o.run.is_some() {
        r.merge(given_run(cx).await);
    } else {
        let why = "needs --run ID or --publish-key";
        for id in [
            Id::ContentType,
            Id::CacheControl,
            Id::Compression,
            Id::IdleTimeout,
            Id::Heartbeat,
            Id::HeadersDelayed,
            Id::MissingId,
            Id::IdNotDense,
            Id::Envelope,
            Id::ReplayHeader,
            Id::ReplayQuery,
            Id::StatusFinished,
            Id::Snapshot,
            Id::Auth,
            Id::Http1,
        ] {
            r.skip(id, why);
        }
    }
}

/// The doctor's probe runs: `run` gets live events, replays, a cancel and an
/// end; `idle` is held open with heartbeats only.
struct ProbeRuns {
    run: String,
    idle: String,
    key: String,
    /// The last id of `run` after its setup events.
    setup_last: u64,
    idle_last: u64,
}

impl ProbeRuns {
    async fn create(cx: &Ctx) -> Result<Self, String> {
        let key = cx.o.publish_key.clone().unwrap_or_default();
        let mk = |n: &str| format!("doctor-{}-{n}", cx.nonce);
        let (run, idle) = (mk("probe"), mk("idle"));
        for id in [&run, &idle] {
            let (status, body) = cx
                .post(
                    "/api/publish/runs",
                    Some(&key),
                    None,
                    &json!({ "run_id": id }),
                )
                .await
                .map_err(|e| format!("POST /api/publish/runs: {e}"))?;
            if status != 201 && status != 200 {
                return Err(format!(
                    "POST /api/publish/runs answered {status} {body} (expected 201)"
                ));
            }
        }
        let p = Self {
            setup_last: 0,
            idle_last: 0,
            run,
            idle,
            key,
        };
        let setup_last = p
            .append(
                cx,
                &p.run,
                "setup",
                json!([
                    {"type": "run.started", "payload": {"title": "runstream-doctor probe"}},
                    {"type": "message.created", "payload": {"message_id": "doctor-m1", "role": "assistant", "content": ""}}
                ]),
            )
            .await?;
        let idle_last = p
            .append(
                cx,
                &p.idle,
                "setup",
                json!([{"type": "run.started", "payload": {"title": "runstream-doctor idle probe"}}]),
            )
            .await?;
        Ok(Self {
            setup_last,
            idle_last,
            ..p
        })
    }

    /// Appends `events` to `run` with a fresh idempotency key; the last id.
    async fn append(&self, cx: &Ctx, run: &str, tag: &str, events: Value) -> Result<u64, String> {
        let path = format!("/api/publish/runs/{}/events", net::enc(run));
        let idem = format!("doctor-{}-{run}-{tag}", cx.nonce);
        let (status, body) = cx
            .post(
                &path,
                Some(&self.key),
                Some(&idem),
                &json!({ "events": events }),
            )
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        match (status, body.get("last_event_id").and_then(Value::as_u64)) {
            (200, Some(last)) => Ok(last),
            _ => Err(format!(
                "POST {path} answered {status} {body} (expected 200 {{first_event_id, last_event_id}})"
            )),
        }
    }

    /// Live events at a known spacing (`buffering`), headers, WebSocket,
    /// cancel, the end, framing, replays, statuses and the snapshot.
    async fn live(&self, cx: &Ctx) -> Report {
        let mut r = Report::default();
        let (live_last, held) = match self.live_events(cx, &mut r).await {
            Some(x) => x,
            None => return r,
        };
        self.after_live(cx, r, live_last, held).await
    }

    /// Opens the probe run's stream and appends `LIVE_EVENTS` while reading
    /// them: the last id appended, and whether a hop held the whole response.
    async fn live_events(&self, cx: &Ctx, r: &mut Report) -> Option<(u64, bool)> {
        let run = &self.run;
        let mut sse = match cx.open(run, Resume::Start, LIVE_HEADERS_WITHIN).await {
            Ok(s) => s,
            Err(OpenError::NoHeaders(s)) => {
                r.error(
                    Id::Buffering,
                    format!("a stream with events to replay got no response (not even its headers) within {s} s: a hop holds the whole response"),
                );
                let mut last = self.setup_last;
                for i in 0..LIVE_EVENTS {
                    let ev = json!([{"type": "message.delta", "payload": {"message_id": "doctor-m1", "delta": tick(i)}}]);
                    match self.append(cx, run, &format!("live-{i}"), ev).await {
                        Ok(id) => last = id,
                        Err(e) => {
                            r.error(Id::Publish, e);
                            return None;
                        }
                    }
                }
                return Some((last, true));
            }
            Err(e) => {
                r.error(Id::Unreachable, format!("the probe run's stream: {e}"));
                return None;
            }
        };
        if sse.status != 200 {
            r.error(
                Id::Auth,
                format!(
                    "the probe run's stream answered {} to the publish key (SERVER.md §1: the key may read every run)",
                    sse.status
                ),
            );
            return None;
        }
        response_headers(cx, r, &sse);

        // Live: append LIVE_EVENTS deltas SPACING apart while the stream reads them.
        let reader = async {
            let mut got: Vec<Ev> = Vec::new();
            let deadline = Instant::now() + SPACING * (LIVE_EVENTS as u32) + Duration::from_secs(6);
            let target = self.setup_last + LIVE_EVENTS as u64;
            let mut failed = None;
            loop {
                match sse.next(deadline).await {
                    net::Next::Event(e) => {
                        let done = delta_of(&e).as_deref() == Some(tick(LIVE_EVENTS - 1).as_str());
                        got.push(e);
                        if done || got.len() as u64 >= target {
                            break;
                        }
                    }
                    net::Next::Comment(_) => {}
                    net::Next::End => {
                        failed = Some("the server ended the stream of a live run".to_owned());
                        break;
                    }
                    net::Next::Timeout => break,
                    net::Next::Failed(f) => {
                        failed = Some(f);
                        break;
                    }
                }
            }
            (got, failed)
        };
        let writer = async {
            let mut sent: Vec<(u64, Instant)> = Vec::new();
            for i in 0..LIVE_EVENTS {
                if i > 0 {
                    tokio::time::sleep(SPACING).await;
                }
                let ev = json!([{"type": "message.delta", "payload": {"message_id": "doctor-m1", "delta": tick(i)}}]);
                match self.append(cx, run, &format!("live-{i}"), ev).await {
                    Ok(id) => sent.push((id, Instant::now())),
                    Err(e) => return Err(e),
                }
            }
            Ok(sent)
        };
        let ((got, failed), sent) = tokio::join!(reader, writer);
        drop(sse);
        let sent = match sent {
            Ok(s) => s,
            Err(e) => {
                r.error(Id::Publish, e);
                return None;
            }
        };
        buffering(r, &sent, &got, failed.as_deref());
        Some((
            sent.last().map(|(id, _)| *id).unwrap_or(self.setup_last),
            false,
        ))
    }

    /// WebSocket, cancel, the end, framing, replays, statuses and the snapshot.
    async fn after_live(&self, cx: &Ctx, mut r: Report, live_last: u64, held: bool) -> Report {
        let run = &self.run;

        // WebSocket on the live run: subscribe with a replay, then live.
        r.merge(
            websocket_run(
                cx,
                run,
                live_last.saturating_sub(3),
                live_last,
                Some(&self.key),
            )
            .await,
        );

        // Cancel twice with one client_request_id: one event.
        let crid = format!("doctor-cancel-{}", cx.nonce);
        let cancel = cancel_twice(cx, run, &crid).await;

        // The producer (the doctor) ends the run.
        if let Err(e) = self
            .append(
                cx,
                run,
                "end",
                json!([
                    {"type": "message.completed", "payload": {"message_id": "doctor-m1", "finish_reason": "cancelled"}},
                    {"type": "run.completed", "payload": {"status": "cancelled"}}
                ]),
            )
            .await
        {
            r.error(Id::Publish, e);
            return r;
        }

        // The whole log, from the start, of a finished run: framing, then everything that compares with it.
        let log = match read_all(cx, run, Resume::Start).await {
            Ok(l) => l,
            Err(e) => {
                r.error(
                    Id::Envelope,
                    format!("could not read the finished probe run from the start: {e}"),
                );
                return r;
            }
        };
        if held {
            // The headers were held with the events: judge them on the finished run's response.
            match cx.open(run, Resume::Start, REQUEST_WAIT).await {
                Ok(sse) => response_headers(cx, &mut r, &sse),
                Err(e) => r.error(
                    Id::Buffering,
                    format!("the finished probe run's stream: {e}"),
                ),
            }
        }
        let framing = framing(&mut r, run, &log.events, 0);
        if let Some(c) = cancel {
            cancel_result(&mut r, c, &framing, &crid);
        }
        if !log.ended {
            r.error(
                Id::StatusFinished,
                "the stream of a finished run did not end after its last event (PROTOCOL §2a: the server ends the response after the last event of a finished run)",
            );
        }
        exactness(cx, &mut r, run, &framing, true).await;
        r
    }

    /// Holds the idle run's stream (`idle-timeout`, `heartbeat`, `headers-delayed`).
    async fn idle(&self, cx: &Ctx) -> Report {
        let r = hold(cx, &self.idle, self.idle_last).await;
        // The idle run is the doctor's: end it.
        let _ = self
            .append(
                cx,
                &self.idle,
                "end",
                json!([{"type": "run.completed", "payload": {"status": "succeeded"}}]),
            )
            .await;
        r
    }
}

/// `content-type`, `cache-control`, `compression`, `http1` (and `X-Accel-Buffering` at the origin).
fn response_headers(cx: &Ctx, r: &mut Report, sse: &Sse) {
    let h = &sse.headers;
    let ct = header(h, "content-type").unwrap_or("");
    if ct
        .split(';')
        .next()
        .map(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        != Some(true)
    {
        r.error(
            Id::ContentType,
            format!("the stream answered `Content-Type: {ct}`, not text/event-stream"),
        );
    } else {
        r.check(Id::ContentType);
    }
    let cc = header(h, "cache-control")
        .unwrap_or("")
        .to_ascii_lowercase();
    let directives: Vec<&str> = cc.split(',').map(str::trim).collect();
    let has = |d: &str| directives.contains(&d);
    let cacheable = directives.iter().any(|d| {
        *d == "public"
            || d.strip_prefix("max-age=").is_some_and(|v| v != "0")
            || d.starts_with("s-maxage=")
    });
    if cc.is_empty() || cacheable || !(has("no-store") || has("no-cache")) {
        r.error(
            Id::CacheControl,
            format!(
                "the stream answered `Cache-Control: {}` (PROTOCOL §2a: `no-store, no-transform`): a cache or CDN may store or replay it",
                if cc.is_empty() { "(none)" } else { &cc }
            ),
        );
    } else if !has("no-transform") {
        r.warn(
            Id::CacheControl,
            format!("the stream answered `Cache-Control: {cc}` without `no-transform`: a proxy may compress or rewrite it"),
        );
    } else {
        r.check(Id::CacheControl);
    }
    match header(h, "content-encoding").map(str::trim) {
        None | Some("") | Some("identity") => r.check(Id::Compression),
        Some(enc) => r.error(
            Id::Compression,
            format!("the stream arrives with `Content-Encoding: {enc}` (asked with `Accept-Encoding: {}`, as a browser does): a compressor holds events until its buffer fills", net::ACCEPT_ENCODING),
        ),
    }
    let accel_no = header(h, "x-accel-buffering").map(|v| v.trim().eq_ignore_ascii_case("no"));
    if cx.o.is_origin && accel_no != Some(true) {
        r.warn(
            Id::Buffering,
            "the origin does not send `X-Accel-Buffering: no` on the stream: an nginx in front buffers it unless its location says `proxy_buffering off;`",
        );
    }
    http1(r, sse.version);
}

fn http1(r: &mut Report, v: reqwest::Version) {
    if v == reqwest::Version::HTTP_2 || v == reqwest::Version::HTTP_3 {
        r.check(Id::Http1);
    } else {
        r.warn(
            Id::Http1,
            format!("the browser-facing hop speaks {v:?}: a browser opens at most ~6 connections per origin, so a 7th stream or request waits"),
        );
    }
}

/// `buffering`: events sent `SPACING` apart must arrive apart.
fn buffering(r: &mut Report, sent: &[(u64, Instant)], got: &[Ev], failed: Option<&str>) {
    // Matched by content (the i-th delta says `tick i`), not by id: ids are judged by `framing`.
    let arrival = |i: usize| {
        got.iter()
            .find(|e| delta_of(e).as_deref() == Some(tick(i).as_str()))
            .map(|e| e.at)
    };
    let arrived: Vec<(u64, Instant, Option<Instant>)> = sent
        .iter()
        .enumerate()
        .map(|(i, (id, at))| (*id, *at, arrival(i)))
        .collect();
    let missing = arrived.iter().filter(|(_, _, a)| a.is_none()).count();
    let spacing_ms = SPACING.as_millis();
    if missing == arrived.len() {
        r.error(
            Id::Buffering,
            format!(
                "{} events sent {spacing_ms} ms apart: none arrived on the open stream within 6 s of the last{}: a hop holds the stream",
                arrived.len(),
                failed.map(|f| format!(" ({f})")).unwrap_or_default()
            ),
        );
        return;
    }
    // Consecutive events sent SPACING apart that arrived within SPACING/5 of each other.
    let mut together = 0;
    let mut pairs = 0;
    let mut late = Duration::ZERO;
    for w in arrived.windows(2) {
        if let [(_, _, Some(a)), (_, _, Some(b))] = w {
            pairs += 1;
            if b.saturating_duration_since(*a) < SPACING / 5 {
                together += 1;
            }
        }
    }
    for (_, s, a) in &arrived {
        if let Some(a) = a {
            late = late.max(a.saturating_duration_since(*s));
        }
    }
    if missing > 0 {
        r.error(
            Id::Buffering,
            format!(
                "{missing} of {} events sent {spacing_ms} ms apart did not arrive within 6 s{}",
                arrived.len(),
                failed.map(|f| format!(" ({f})")).unwrap_or_default()
            ),
        );
    } else if pairs > 0 && together * 2 > pairs {
        r.error(
            Id::Buffering,
            format!("events sent {spacing_ms} ms apart arrived together ({together} of {pairs} consecutive pairs within {} ms; the latest arrived {} ms after it was sent): a hop buffers", spacing_ms / 5, late.as_millis()),
        );
    } else if late > LATE {
        r.error(
            Id::Buffering,
            format!(
                "an event arrived {} ms after it was appended: a hop holds events",
                late.as_millis()
            ),
        );
    } else {
        r.check(Id::Buffering);
    }
}

/// The text of the probe's i-th live delta.
fn tick(i: usize) -> String {
    format!("tick {i} ")
}

/// The `payload.delta` of an event's envelope, if it has one.
fn delta_of(e: &Ev) -> Option<String> {
    let v: Value = serde_json::from_str(&e.data).ok()?;
    v.pointer("/payload/delta")?.as_str().map(str::to_owned)
}

/// What [`framing`] learned from a read of the log.
#[derive(Default)]
struct Framing {
    /// The envelopes by position (valid ones only), with their raw JSON.
    events: Vec<(u64, Value)>,
    /// Ids, envelopes and density all fine: the log can be compared with.
    ok: bool,
    last: u64,
    state: Option<RunState>,
}

/// `missing-id`, `id-not-dense`, `envelope` over events read after `after`.
fn framing(r: &mut Report, run: &str, evs: &[Ev], after: u64) -> Framing {
    let mut f = Framing {
        ok: true,
        last: after,
        ..Framing::default()
    };
    let mut state = RunState::new(run);
    let mut parked = Parked::default();
    let mut applied = Vec::new();
    let (mut missing, mut not_dense, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    let mut prev_line = String::new();
    for (i, e) in evs.iter().enumerate() {
        let env = match decode_envelope(&e.data, run) {
            Ok(env) => env,
            Err(err) => {
                bad.push(format!("event #{} ({}): {err}", i + 1, clip(&e.data)));
                prev_line.clone_from(&e.id);
                continue;
            }
        };
        let value: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        let ty = value.get("type").and_then(Value::as_str).unwrap_or("");
        let id = env.event_id;
        if e.id != id.to_string() {
            if e.id.is_empty() || e.id == prev_line {
                missing.push(id);
            } else {
                bad.push(format!("a frame with `id: {}` carries event_id {id}", e.id));
            }
        }
        if e.event_type != ty && !(e.event_type == "message" && ty.is_empty()) {
            bad.push(format!(
                "a frame with `event: {}` carries type {ty:?} (id {id})",
                e.event_type
            ));
        }
        if id != f.last + 1 {
            not_dense.push(format!("{} after {}", id, f.last));
        }
        f.last = f.last.max(id);
        prev_line.clone_from(&e.id);
        let _ = state.apply(id, env.kind, &mut parked, PARK_CAP, &mut applied);
        applied.clear();
        f.events.push((id, value));
    }
    let list = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if missing.is_empty() {
        r.check(Id::MissingId);
    } else {
        f.ok = false;
        r.error(
            Id::MissingId,
            format!(
                "{} of {} event frames carry no `id:` line (event_ids {:?}…): a client cannot resume from them",
                missing.len(),
                evs.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ),
        );
    }
    if not_dense.is_empty() {
        r.check(Id::IdNotDense);
    } else {
        f.ok = false;
        r.error(
            Id::IdNotDense,
            format!("event ids are not dense from {after}: {}", list(&not_dense)),
        );
    }
    if bad.is_empty() {
        r.check(Id::Envelope);
    } else {
        f.ok = false;
        r.error(
            Id::Envelope,
            format!("{} broken frame(s): {}", bad.len(), list(&bad)),
        );
    }
    f.state = Some(state);
    f
}

fn clip(s: &str) -> String {
    let mut t: String = s.chars().take(80).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Reads `run` from `resume` until the response ends (a finished run), or 3 s without an event (a live one).
async fn read_all(cx: &Ctx, run: &str, resume: Resume) -> Result<net::Read, String> {
    let mut sse = cx.open(run, resume, REQUEST_WAIT).await?;
    if sse.status != 200 {
        return Err(format!("answered {}", sse.status));
    }
    let read = sse
        .events(
            Some(Duration::from_secs(3)),
            Instant::now() + Duration::from_secs(20),
        )
        .await;
    if let Some(f) = &read.failed {
        return Err(f.clone());
    }
    Ok(read)
}

/// `replay-header`, `replay-query`, `status-finished` and `snapshot`, against a log read from the start.
async fn exactness(cx: &Ctx, r: &mut Report, run: &str, log: &Framing, finished: bool) {
    let why = "not judged: the log's framing is broken (see above)";
    if !log.ok {
        for id in [Id::ReplayHeader, Id::ReplayQuery, Id::Snapshot] {
            r.skip(id, why);
        }
    } else {
        for k in [log.last / 2, log.last.saturating_sub(1)] {
            for resume in [Resume::Header(k), Resume::Query(k)] {
                replay(cx, r, run, log, resume).await;
            }
        }
        snapshot(cx, r, run, log).await;
    }
    if finished {
        match cx.open(run, Resume::Header(log.last), REQUEST_WAIT).await {
            Err(e) => r.error(Id::StatusFinished, format!("a resume of a finished run at its last id: {e}")),
            Ok(s) if s.status == 204 => r.check(Id::StatusFinished),
            Ok(s) => r.error(
                Id::StatusFinished,
                format!("a resume of a finished run at its last id ({}) answered {}, not 204: clients reconnect to it", log.last, s.status),
            ),
        }
    }
}

async fn replay(cx: &Ctx, r: &mut Report, run: &str, log: &Framing, resume: Resume) {
    let (id, k, how) = match resume {
        Resume::Header(k) => (Id::ReplayHeader, k, format!("`Last-Event-ID: {k}`")),
        Resume::Query(k) => (Id::ReplayQuery, k, format!("`?last_event_id={k}`")),
        Resume::Start => return,
    };
    let read = match read_all(cx, run, resume).await {
        Ok(read) => read,
        Err(e) => {
            r.error(id, format!("a resume with {how}: {e}"));
            return;
        }
    };
    let expected: Vec<&(u64, Value)> = log.events.iter().filter(|(i, _)| *i > k).collect();
    let got: Vec<(u64, Value)> = read
        .events
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            (v.get("event_id").and_then(Value::as_u64).unwrap_or(0), v)
        })
        .collect();
    let got_ids: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    let want_ids: Vec<u64> = expected.iter().map(|(i, _)| *i).collect();
    if got_ids != want_ids {
        r.error(
            id,
            format!(
                "a resume with {how} replayed ids {} instead of {}",
                ranges(&got_ids),
                ranges(&want_ids)
            ),
        );
    } else if got
        .iter()
        .zip(expected.iter())
        .any(|((_, a), (_, b))| a != b)
    {
        r.error(
            id,
            format!("a resume with {how} replayed other envelopes than the log from the start"),
        );
    } else {
        r.check(id);
    }
}

/// `[3, 4, 5, 9]` as `3–5, 9`.
fn ranges(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "(none)".into();
    }
    let mut out: Vec<String> = Vec::new();
    let mut start = None::<(u64, u64)>;
    for &i in ids {
        start = match start {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}–{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = start {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}–{b}")
        });
    }
    out.join(", ")
}

/// `snapshot`: §2c shape, equal to the log replayed through the client's reducer.
async fn snapshot(cx: &Ctx, r: &mut Report, run: &str, log: &Framing) {
    let path = format!("/api/runs/{}/snapshot", net::enc(run));
    let (status, text) = match cx.get_json(&path, cx.reader()).await {
        Ok(x) => x,
        Err(e) => {
            r.error(Id::Snapshot, format!("GET {path}: {e}"));
            return;
        }
    };
    if status != 200 {
        r.error(Id::Snapshot, format!("GET {path} answered {status}"));
        return;
    }
    let body = match runstream::core::wire::SnapshotBody::decode(&text) {
        Ok(b) => b,
        Err(e) => {
            r.error(
                Id::Snapshot,
                format!("GET {path}: not a §2c body ({e}): {}", clip(&text)),
            );
            return;
        }
    };
    if body.run_id != run {
        r.error(
            Id::Snapshot,
            format!("the snapshot names run {:?}, not {run:?}", body.run_id),
        );
        return;
    }
    if body.event_id != log.last {
        r.error(
            Id::Snapshot,
            format!(
                "the snapshot of a finished run says event_id {}, its log ends at {}",
                body.event_id, log.last
            ),
        );
        return;
    }
    let theirs = match body.into_state() {
        Ok(s) => s.to_wire(),
        Err(e) => {
            r.error(
                Id::Snapshot,
                format!("the snapshot's state is not a §6 state: {}", e.message()),
            );
            return;
        }
    };
    let ours = match log.state.as_ref().map(|s| RunState::from_wire(s.to_wire())) {
        Some(Ok(s)) => s.to_wire(),
        _ => return,
    };
    if theirs == ours {
        r.check(Id::Snapshot);
    } else {
        r.error(
            Id::Snapshot,
            format!(
                "the snapshot's state differs from the log replayed: {}",
                first_difference(&theirs, &ours, "state")
            ),
        );
    }
}

/// Where two JSON values first differ, as `path: theirs ≠ ours`.
fn first_difference(a: &Value, b: &Value, path: &str) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) if w == v => {}
                    Some(w) => return first_difference(v, w, &format!("{path}.{k}")),
                    None => return format!("{path}.{k} is extra"),
                }
            }
            for k in y.keys() {
                if !x.contains_key(k) {
                    return format!("{path}.{k} is missing");
                }
            }
            format!("{path}: equal")
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if v != w {
                    return first_difference(v, w, &format!("{path}[{i}]"));
                }
            }
            format!("{path}: equal")
        }
        _ => format!(
            "{path}: {} ≠ {} (replayed)",
            clip(&a.to_string()),
            clip(&b.to_string())
        ),
    }
}

/// `idle-timeout`, `heartbeat`, `headers-delayed`: a resume with nothing to
/// replay, held for max(`--hold`, 20 s + slack).
async fn hold(cx: &Ctx, run: &str, last: u64) -> Report {
    let mut r = Report::default();
    // Long enough to see 20 s of silence past the tolerance.
    let duration = cx.o.hold.max(HEARTBEAT_WITHIN + SLACK * 2);
    let mut sse = match cx.open(run, Resume::Header(last), duration).await {
        Ok(s) => s,
        Err(e) => {
            r.error(
                Id::HeadersDelayed,
                format!("a resume with nothing to replay got no response headers: {e}"),
            );
            for id in [Id::IdleTimeout, Id::Heartbeat] {
                r.skip(id, "not judged: the idle stream got no response headers");
            }
            return r;
        }
    };
    if sse.status != 200 {
        r.error(
            Id::IdleTimeout,
            format!(
                "a resume of a live run with nothing to replay answered {}",
                sse.status
            ),
        );
        return r;
    }
    let headers_after = sse.headers_after();
    let end = sse.opened + duration;
    let mut last_byte = sse.headers_at;
    let mut max_silence = Duration::ZERO;
    let mut first_item: Option<Instant> = None;
    let mut cut: Option<(Duration, String)> = None;
    loop {
        match sse.next(end).await {
            net::Next::Event(e) => {
                first_item.get_or_insert(e.at);
                max_silence = max_silence.max(e.at.duration_since(last_byte));
                last_byte = e.at;
            }
            net::Next::Comment(at) => {
                first_item.get_or_insert(at);
                max_silence = max_silence.max(at.duration_since(last_byte));
                last_byte = at;
            }
            net::Next::Timeout => break,
            net::Next::End => {
                cut = Some((
                    sse.opened.elapsed(),
                    "the server or a proxy ended the response".into(),
                ));
                break;
            }
            net::Next::Failed(f) => {
                cut = Some((sse.opened.elapsed(), f));
                break;
            }
        }
    }
    let lived = match &cut {
        Some((t, _)) => *t,
        None => duration,
    };
    max_silence = max_silence.max((sse.opened + lived).saturating_duration_since(last_byte));
    if headers_after > HEADERS_WITHIN {
        let with_first = first_item
            .map(|f| f.saturating_duration_since(sse.headers_at) < Duration::from_millis(250))
            .unwrap_or(false);
        r.error(
            Id::HeadersDelayed,
            format!(
                "a resume with nothing to replay got its response headers after {:.1} s{}: clients time out waiting and reconnect in a loop",
                headers_after.as_secs_f64(),
                if with_first { ", together with the first heartbeat" } else { "" }
            ),
        );
    } else {
        r.check(Id::HeadersDelayed);
    }
    match &cut {
        Some((t, why)) if *t + SLACK < cx.o.hold => r.error(
            Id::IdleTimeout,
            format!(
                "an idle stream (heartbeats only) was cut after {:.1} s ({why}), before --hold {} s",
                t.as_secs_f64(),
                cx.o.hold.as_secs()
            ),
        ),
        _ => r.check(Id::IdleTimeout),
    }
    if max_silence > HEARTBEAT_WITHIN + SLACK {
        r.error(
            Id::Heartbeat,
            format!(
                "an idle stream had {:.1} s without a comment line (heartbeat) or event: clients and proxies take it for dead",
                max_silence.as_secs_f64()
            ),
        );
    } else if lived < HEARTBEAT_WITHIN {
        r.skip(
            Id::Heartbeat,
            format!(
                "not judged: the idle stream lived {:.1} s, less than 20 s",
                lived.as_secs_f64()
            ),
        );
    } else {
        r.check(Id::Heartbeat);
    }
    r
}

/// The outcome of two cancels with one `client_request_id`.
struct Cancelled {
    first: (u16, Value),
    second: (u16, Value),
}

async fn cancel_twice(cx: &Ctx, run: &str, crid: &str) -> Option<Result<Cancelled, String>> {
    let path = format!("/api/runs/{}/cancel", net::enc(run));
    let body = json!({"client_request_id": crid, "reason": "runstream-doctor probe"});
    let first = match cx.post(&path, cx.reader(), None, &body).await {
        Ok(x) => x,
        Err(e) => return Some(Err(format!("POST {path}: {e}"))),
    };
    let second = match cx.post(&path, cx.reader(), None, &body).await {
        Ok(x) => x,
        Err(e) => return Some(Err(format!("POST {path} (repeat): {e}"))),
    };
    Some(Ok(Cancelled { first, second }))
}

fn cancel_result(r: &mut Report, c: Result<Cancelled, String>, log: &Framing, crid: &str) {
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            r.error(Id::CancelIdempotency, e);
            return;
        }
    };
    if c.first.0 == 404 || c.first.0 == 405 {
        r.skip(
            Id::CancelIdempotency,
            format!("the cancel route answered {} (not served)", c.first.0),
        );
        return;
    }
    if c.first.0 != 202 || c.second.0 != 202 {
        r.error(
            Id::CancelIdempotency,
            format!(
                "two cancels with one client_request_id answered {} and {} (PROTOCOL §8: 202 both)",
                c.first.0, c.second.0
            ),
        );
        return;
    }
    let a = c.first.1.get("event_id");
    let b = c.second.1.get("event_id");
    let events = log
        .events
        .iter()
        .filter(|(_, v)| {
            v.get("type").and_then(Value::as_str) == Some("run.cancel_requested")
                && v.pointer("/payload/client_request_id")
                    .and_then(Value::as_str)
                    == Some(crid)
        })
        .count();
    if events != 1 {
        r.error(
            Id::CancelIdempotency,
            format!("two cancels with one client_request_id left {events} run.cancel_requested events in the log (PROTOCOL §8: one)"),
        );
    } else if a.is_none() || a != b {
        r.error(
            Id::CancelIdempotency,
            format!(
                "a repeated cancel answered event_id {} where the first answered {}",
                b.map(Value::to_string).unwrap_or_default(),
                a.map(Value::to_string).unwrap_or_default()
            ),
        );
    } else {
        r.check(Id::CancelIdempotency);
    }
}

/// `send-idempotency`: one send twice into a fresh session of the doctor's.
async fn send_idempotency(cx: &Ctx) -> Report {
    let mut r = Report::default();
    let session =
        cx.o.session
            .clone()
            .unwrap_or_else(|| format!("doctor-{}-chat", cx.nonce));
    let crid = format!("doctor-send-{}", cx.nonce);
    let path = format!("/api/chat/{}/messages", net::enc(&session));
    let body =
        json!({"client_request_id": crid, "content": "runstream-doctor probe (a repeated send)"});
    let user = cx.o.token.as_deref();
    let mut first = cx.post(&path, user, None, &body).await;
    if let Ok((404, _)) = first {
        // A server whose sessions are created by its backend: create it through the publish API.
        if let Some(key) = &cx.o.publish_key {
            let _ = cx
                .post(
                    "/api/publish/runs",
                    Some(key),
                    None,
                    &json!({"run_id": session, "session_id": session}),
                )
                .await;
            first = cx.post(&path, user, None, &body).await;
        }
    }
    let first = match first {
        Ok(x) => x,
        Err(e) => {
            r.error(Id::SendIdempotency, format!("POST {path}: {e}"));
            return r;
        }
    };
    if first.0 == 401 || first.0 == 403 {
        r.skip(
            Id::SendIdempotency,
            format!(
                "a send into session {session} answered {}: give --token with a user's token whose `sessions` claim names the session given with --session",
                first.0
            ),
        );
        return r;
    }
    if first.0 != 202 {
        r.error(
            Id::SendIdempotency,
            format!("a send answered {} {} (PROTOCOL §5: 202)", first.0, first.1),
        );
        return r;
    }
    let second = match cx.post(&path, user, None, &body).await {
        Ok(x) => x,
        Err(e) => {
            r.error(Id::SendIdempotency, format!("POST {path} (repeat): {e}"));
            return r;
        }
    };
    if second.0 != 202 || second.1.get("message_id") != first.1.get("message_id") {
        r.error(
            Id::SendIdempotency,
            format!(
                "a repeated client_request_id answered {} {} where the first send answered {}",
                second.0, second.1, first.1
            ),
        );
        return r;
    }
    // The log must hold one message for it.
    let chat_run = first
        .1
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or(&session)
        .to_owned();
    let spath = format!("/api/runs/{}/snapshot", net::enc(&chat_run));
    match cx.get_json(&spath, cx.reader()).await {
        Ok((200, text)) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let n = v
                .pointer("/state/messages")
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter(|m| {
                            m.get("client_request_id").and_then(Value::as_str)
                                == Some(crid.as_str())
                        })
                        .count()
                })
                .unwrap_or(0);
            if n > 1 {
                r.error(
                    Id::SendIdempotency,
                    format!("a repeated client_request_id made {n} messages in the session's run"),
                );
            } else {
                r.check(Id::SendIdempotency);
            }
        }
        _ => r.check(Id::SendIdempotency),
    }
    r
}

/// `auth`: the routes of one run without credentials (and with a bad token, and `--token`).
async fn auth(cx: &Ctx, run: &str, last: u64) -> Report {
    let mut r = Report::default();
    let mut open_routes = Vec::new();
    let mut closed_routes = Vec::new();
    let stream = net::open(
        &cx.http,
        &cx.base.stream(run),
        Resume::Header(last),
        Ask::default(),
        REQUEST_WAIT,
    )
    .await
    .map(|s| s.status)
    .map_err(String::from);
    let snap = cx
        .get_json(&format!("/api/runs/{}/snapshot", net::enc(run)), None)
        .await
        .map(|(s, _)| s);
    for (route, status) in [("stream", stream), ("snapshot", snap)] {
        match status {
            Ok(s) if s == 401 || s == 403 => closed_routes.push(format!("{route} {s}")),
            Ok(s) if s < 400 => open_routes.push(format!("{route} {s}")),
            Ok(s) => closed_routes.push(format!("{route} {s}")),
            // Held by a hop (`buffering` says so) or failed: this route is not judged.
            Err(_) => {}
        }
    }
    match ws_subscribe_code(cx, run, last, None).await {
        Ok(code) if code == "unauthorized" || code == "forbidden" => {
            closed_routes.push(format!("websocket subscribe error {code}"))
        }
        Ok(code) => open_routes.push(format!("websocket subscribe {code}")),
        Err(_) => {} // no WebSocket: the `websocket` probe says so
    }
    if !open_routes.is_empty() && !closed_routes.is_empty() {
        r.error(
            Id::Auth,
            format!(
                "without credentials some routes answer ({}) where others ask for them ({})",
                open_routes.join(", "),
                closed_routes.join(", ")
            ),
        );
    } else if closed_routes.is_empty() {
        r.info(
            Id::Auth,
            "no route asks for credentials (a server without authorization: fine for development, not in production)",
        );
    } else if closed_routes.iter().any(|c| c.contains(" 403")) {
        r.warn(
            Id::Auth,
            format!("without any credentials a route answers 403 ({}): PROTOCOL §7 says 401, so a client refreshes its token", closed_routes.join(", ")),
        );
    } else {
        r.check(Id::Auth);
        // A bad token must be refused like none.
        let bad = net::open(
            &cx.http,
            &cx.base.stream(run),
            Resume::Header(last),
            Ask {
                auth: Some("not.a.valid-token"),
                origin: None,
            },
            REQUEST_WAIT,
        )
        .await
        .map(|s| s.status);
        if let Ok(s) = bad {
            if s < 400 {
                r.error(
                    Id::Auth,
                    format!("the stream answered {s} to an invalid bearer token"),
                );
            }
        }
    }
    r
}

/// The `code` of the answer to a subscribe of `run` (or `"subscribed"`).
async fn ws_subscribe_code(
    cx: &Ctx,
    run: &str,
    last: u64,
    auth: Option<&str>,
) -> Result<String, String> {
    let mut ws = net::websocket(&cx.base, None, cx.o.ca_pem.as_deref()).await?;
    let sub = subscribe_frame(run, last, auth);
    net::ws_send(&mut ws, sub.to_string()).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = net::ws_next(&mut ws, deadline).await?;
        match f.get("op").and_then(Value::as_str) {
            Some("subscribed") => return Ok("subscribed".into()),
            Some("error") => {
                return Ok(f
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned())
            }
            _ => {}
        }
    }
}

/// A `subscribe` frame, with the credentials in its `headers` (PROTOCOL §7).
fn subscribe_frame(run: &str, last: u64, auth: Option<&str>) -> Value {
    let mut sub = serde_json::Map::new();
    sub.insert("op".into(), json!("subscribe"));
    sub.insert("run_id".into(), json!(run));
    sub.insert("last_event_id".into(), json!(last));
    if let Some(a) = auth {
        sub.insert(
            "headers".into(),
            json!({"Authorization": format!("Bearer {a}")}),
        );
    }
    Value::Object(sub)
}

/// `websocket` on a run: subscribe with a replay from `after`, up to `last`.
async fn websocket_run(cx: &Ctx, run: &str, after: u64, last: u64, auth: Option<&str>) -> Report {
    let mut r = Report::default();
    let mut ws = match net::websocket(&cx.base, None, cx.o.ca_pem.as_deref()).await {
        Ok(ws) => ws,
        Err(e) => {
            r.warn(Id::Websocket, format!("no WebSocket at /api/ws ({e}): clients with transport \"websocket\" cannot connect"));
            return r;
        }
    };
    let sub = subscribe_frame(run, after, auth);
    if let Err(e) = net::ws_send(&mut ws, sub.to_string()).await {
        r.error(Id::Websocket, e);
        return r;
    }
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut subscribed = None;
    let mut ids = Vec::new();
    while ids.last().copied().unwrap_or(after) < last {
        let f = match net::ws_next(&mut ws, deadline).await {
            Ok(f) => f,
            Err(e) => {
                r.error(
                    Id::Websocket,
                    format!(
                        "subscribe from {after}: {e} (got {}, expected {}–{last})",
                        ranges(&ids),
                        after + 1
                    ),
                );
                return r;
            }
        };
        match f.get("op").and_then(Value::as_str) {
            Some("subscribed") => subscribed = f.get("replay_from").and_then(Value::as_u64),
            Some("event") => {
                let text = f.get("event").map(Value::to_string).unwrap_or_default();
                match decode_envelope(&text, run) {
                    Ok(env) => ids.push(env.event_id),
                    Err(e) => {
                        r.error(
                            Id::Websocket,
                            format!("an event frame with a broken envelope: {e}"),
                        );
                        return r;
                    }
                }
            }
            Some("error") => {
                r.error(Id::Websocket, format!("subscribe answered {f}"));
                return r;
            }
            _ => {}
        }
    }
    let want: Vec<u64> = (after + 1..=last).collect();
    if subscribed != Some(after + 1) {
        r.error(
            Id::Websocket,
            format!("subscribe from {after} was answered `subscribed` with replay_from {subscribed:?}, not {}", after + 1),
        );
    } else if ids != want {
        r.error(
            Id::Websocket,
            format!(
                "subscribe from {after} delivered ids {} instead of {}",
                ranges(&ids),
                ranges(&want)
            ),
        );
    } else {
        r.check(Id::Websocket);
    }
    r
}

/// `websocket` without a run: ping/pong, an unknown run, a bad frame.
async fn websocket_basics(cx: &Ctx) -> Report {
    let mut r = Report::default();
    let mut ws = match net::websocket(&cx.base, None, cx.o.ca_pem.as_deref()).await {
        Ok(ws) => ws,
        Err(e) => {
            r.warn(Id::Websocket, format!("no WebSocket at /api/ws ({e}): clients with transport \"websocket\" cannot connect"));
            return r;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let unknown = format!("doctor-unknown-{}", cx.nonce);
    let steps: [(String, &str); 3] = [
        (json!({"op": "ping", "t": 4242}).to_string(), "ping"),
        (
            subscribe_frame(&unknown, 0, cx.reader()).to_string(),
            "unknown",
        ),
        ("{not json".to_owned(), "bad"),
    ];
    for (frame, what) in steps {
        if let Err(e) = net::ws_send(&mut ws, frame).await {
            r.error(Id::Websocket, e);
            return r;
        }
        let answer = loop {
            match net::ws_next(&mut ws, deadline).await {
                Ok(f) => match (what, f.get("op").and_then(Value::as_str)) {
                    ("ping", Some("pong"))
                    | (_, Some("error"))
                    | ("unknown", Some("subscribed")) => break Ok(f),
                    _ => {}
                },
                Err(e) => break Err(e),
            }
        };
        let f = match answer {
            Ok(f) => f,
            Err(e) => {
                r.error(Id::Websocket, format!("after a {what} frame: {e}"));
                return r;
            }
        };
        let code = f.get("code").and_then(Value::as_str).unwrap_or("");
        let bad = match what {
            "ping" if f.get("t").and_then(Value::as_u64) != Some(4242) => Some(format!("ping {{t: 4242}} was answered {f}")),
            "unknown" if !(code == "not_found" || code == "forbidden") => {
                Some(format!("a subscribe of an unknown run was answered {f}, not an error `not_found` (or `forbidden`)"))
            }
            "bad" if code != "bad_request" => Some(format!("an unparseable frame was answered {f}, not an error `bad_request`")),
            _ => None,
        };
        if let Some(b) = bad {
            r.error(Id::Websocket, b);
            return r;
        }
    }
    // The socket must still work after the bad frame.
    let still = async {
        net::ws_send(&mut ws, json!({"op": "ping", "t": 7}).to_string()).await?;
        loop {
            let f = net::ws_next(&mut ws, deadline).await?;
            if f.get("op").and_then(Value::as_str) == Some("pong") {
                return Ok::<(), String>(());
            }
        }
    };
    match still.await {
        Ok(()) => r.check(Id::Websocket),
        Err(e) => r.error(
            Id::Websocket,
            format!("after an unparseable frame the socket did not answer a ping: {e}"),
        ),
    }
    r
}

/// `cors`: a page on another origin reads the stream with `Last-Event-ID` and `Authorization`.
async fn cors(cx: &Ctx, run: &str) -> Report {
    let mut r = Report::default();
    let origin = cx.o.page_origin.as_deref().unwrap_or(FOREIGN_ORIGIN);
    let url = cx.base.stream(run);
    let pre = cx
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization,last-event-id",
        )
        .timeout(REQUEST_WAIT)
        .send()
        .await;
    let get = net::open(
        &cx.http,
        &url,
        Resume::Start,
        Ask {
            auth: cx.reader(),
            origin: Some(origin),
        },
        REQUEST_WAIT,
    )
    .await;
    let (pre, get) = match (pre, get) {
        (Ok(p), Ok(g)) => (p, g),
        (Err(e), _) => {
            r.error(
                Id::Cors,
                format!("preflight OPTIONS {url}: {}", net::why(&e)),
            );
            return r;
        }
        (_, Err(e)) => {
            r.error(Id::Cors, format!("GET {url} with Origin: {e}"));
            return r;
        }
    };
    let allows = |h: &reqwest::header::HeaderMap| {
        header(h, "access-control-allow-origin").is_some_and(|v| v == "*" || v == origin)
    };
    let get_ok = allows(&get.headers);
    let pre_ok = pre.status().is_success() && allows(pre.headers()) && {
        let allowed = header(pre.headers(), "access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        allowed.trim() == "*"
            || (allowed.contains("authorization") && allowed.contains("last-event-id"))
    };
    if !get_ok && !pre_ok {
        if cx.o.page_origin.is_some() {
            r.error(
                Id::Cors,
                format!("a page on {origin} cannot read the stream: no `Access-Control-Allow-Origin` for it (preflight {})", pre.status().as_u16()),
            );
        } else {
            r.info(
                Id::Cors,
                "the stream is same-origin only (no CORS headers for a foreign origin); give --page-origin to check the origin of your pages",
            );
        }
    } else if !pre_ok {
        r.error(
            Id::Cors,
            format!("{origin} may read the stream, but the preflight of a resume (`Last-Event-ID`, `Authorization` headers) answered {} without allowing them: the fetch transport cannot resume", pre.status().as_u16()),
        );
    } else if !get_ok {
        r.error(Id::Cors, format!("the preflight allows {origin}, the stream response itself has no `Access-Control-Allow-Origin` for it"));
    } else {
        r.check(Id::Cors);
    }
    r
}

/// The checks on `--run` (a run of the team's): framing, replays, snapshot, the idle hold, WebSocket, `--token`.
async fn given_run(cx: &Ctx) -> Report {
    let mut r = Report::default();
    let Some(run) = cx.o.run.as_deref() else {
        return r;
    };
    let mut sse = match cx.open(run, Resume::Start, REQUEST_WAIT).await {
        Ok(s) => s,
        Err(OpenError::NoHeaders(s)) => {
            r.error(
                Id::Buffering,
                format!("a stream of --run {run} from the start got no response headers within {s} s: a hop holds the response (or, if the run has no events yet, the server holds its headers: headers-delayed)"),
            );
            return r;
        }
        Err(e) => {
            r.error(Id::Unreachable, format!("--run {run}: {e}"));
            return r;
        }
    };
    if sse.status == 404 || sse.status == 401 || sse.status == 403 {
        r.error(
            Id::Auth,
            format!(
                "--run {run}: the stream answered {}{}",
                sse.status,
                if cx.reader().is_none() {
                    " (give --token)"
                } else {
                    ""
                }
            ),
        );
        return r;
    }
    if sse.status == 204 {
        r.skip(
            Id::ContentType,
            format!("--run {run} answered 204 from the start (finished and empty)"),
        );
        return r;
    }
    response_headers(cx, &mut r, &sse);
    let read = sse
        .events(
            Some(Duration::from_secs(3)),
            Instant::now() + Duration::from_secs(20),
        )
        .await;
    drop(sse);
    let log = framing(&mut r, run, &read.events, 0);
    let finished = read.ended;
    if finished {
        exactness(cx, &mut r, run, &log, true).await;
    } else {
        r.skip(Id::StatusFinished, format!("--run {run} is live"));
        r.skip(
            Id::Snapshot,
            format!("--run {run} is live (its snapshot is compared once it is finished)"),
        );
        for id in [Id::ReplayHeader, Id::ReplayQuery] {
            r.skip(id, format!("--run {run} is live"));
        }
    }
    let token_checks = async {
        let mut t = Report::default();
        if let Some(token) = cx.o.token.as_deref() {
            let url = cx.base.stream(run);
            let with = net::open(
                &cx.http,
                &url,
                Resume::Header(log.last),
                Ask {
                    auth: Some(token),
                    origin: None,
                },
                REQUEST_WAIT,
            )
            .await
            .map(|s| s.status);
            let without = net::open(
                &cx.http,
                &url,
                Resume::Header(log.last),
                Ask::default(),
                REQUEST_WAIT,
            )
            .await
            .map(|s| s.status);
            let bad = net::open(
                &cx.http,
                &url,
                Resume::Header(log.last),
                Ask {
                    auth: Some("not.a.valid-token"),
                    origin: None,
                },
                REQUEST_WAIT,
            )
            .await
            .map(|s| s.status);
            match (with, without, bad) {
                (Ok(w), Ok(n), Ok(b)) => {
                    if w >= 400 {
                        t.error(Id::Auth, format!("--token is refused on --run {run} ({w})"));
                    } else if n < 400 {
                        t.info(Id::Auth, format!("--run {run} answers without credentials ({n}): the server asks for none"));
                    } else if n != 401 || b != 401 {
                        t.error(Id::Auth, format!("without credentials the stream answered {n}, with an invalid token {b} (PROTOCOL §7: 401 both)"));
                    } else {
                        t.check(Id::Auth);
                    }
                }
                (a, b, c) => t.error(
                    Id::Auth,
                    format!("--token checks failed: {a:?} {b:?} {c:?}"),
                ),
            }
        } else if cx.o.publish_key.is_none() {
            // Without credentials of any kind: are the routes of --run consistently open or closed?
            t.merge(auth(cx, run, log.last).await);
        }
        t
    };
    let (a, b, c) = tokio::join!(
        async {
            if finished {
                Report::default()
            } else {
                hold(cx, run, log.last).await
            }
        },
        websocket_run(cx, run, log.last.saturating_sub(3), log.last, cx.reader()),
        token_checks
    );
    if finished {
        for id in [Id::IdleTimeout, Id::Heartbeat, Id::HeadersDelayed] {
            r.skip(
                id,
                format!("--run {run} is finished (give a live run, or --publish-key)"),
            );
        }
    }
    r.merge(a);
    r.merge(b);
    r.merge(c);
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ev(at: Instant, id: &str, ty: &str, data: Value) -> Ev {
        Ev {
            at,
            event_type: ty.into(),
            data: data.to_string(),
            id: id.into(),
        }
    }
    fn env(id: u64, ty: &str, payload: Value) -> Value {
        json!({"event_id": id, "run_id": "r", "type": ty, "timestamp": "2026-12-07T12:00:00.000Z", "payload": payload})
    }
    fn delta(at: Instant, id: u64, i: usize) -> Ev {
        ev(
            at,
            &id.to_string(),
            "message.delta",
            env(
                id,
                "message.delta",
                json!({"message_id": "m", "delta": tick(i)}),
            ),
        )
    }
    fn errors(r: &Report) -> Vec<Id> {
        r.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.id)
            .collect()
    }

    #[test]
    fn events_that_arrive_as_they_were_sent_are_not_buffering() {
        let t0 = Instant::now();
        let sent: Vec<(u64, Instant)> = (0..6).map(|i| (i + 1, t0 + SPACING * i as u32)).collect();
        let got: Vec<Ev> = (0..6)
            .map(|i| {
                delta(
                    t0 + SPACING * i as u32 + Duration::from_millis(5),
                    i as u64 + 1,
                    i,
                )
            })
            .collect();
        let mut r = Report::default();
        buffering(&mut r, &sent, &got, None);
        assert_eq!(errors(&r), vec![]);
        assert!(r.checked.contains(&Id::Buffering));
    }

    #[test]
    fn events_sent_apart_that_arrive_together_are_buffering() {
        let t0 = Instant::now();
        let sent: Vec<(u64, Instant)> = (0..6).map(|i| (i + 1, t0 + SPACING * i as u32)).collect();
        let end = t0 + SPACING * 6;
        let got: Vec<Ev> = (0..6).map(|i| delta(end, i as u64 + 1, i)).collect();
        let mut r = Report::default();
        buffering(&mut r, &sent, &got, None);
        assert_eq!(errors(&r), vec![Id::Buffering]);
        // And none at all.
        let mut r = Report::default();
        buffering(&mut r, &sent, &[], None);
        assert_eq!(errors(&r), vec![Id::Buffering]);
    }

    #[test]
    fn events_that_keep_their_spacing_but_arrive_late_are_buffering() {
        let t0 = Instant::now();
        let sent: Vec<(u64, Instant)> = (0..6).map(|i| (i + 1, t0 + SPACING * i as u32)).collect();
        let got: Vec<Ev> = (0..6)
            .map(|i| delta(t0 + SPACING * i as u32 + LATE + SPACING, i as u64 + 1, i))
            .collect();
        let mut r = Report::default();
        buffering(&mut r, &sent, &got, None);
        assert_eq!(errors(&r), vec![Id::Buffering]);
    }

    #[test]
    fn framing_reports_missing_ids_gaps_and_broken_envelopes_each_by_its_id() {
        let t = Instant::now();
        let good = |id: u64| {
            ev(
                t,
                &id.to_string(),
                "run.started",
                env(id, "run.started", json!({})),
            )
        };
        let mut r = Report::default();
        let f = framing(&mut r, "r", &[good(1), good(2), good(3)], 0);
        assert!(f.ok && f.last == 3 && errors(&r).is_empty());

        let mut r = Report::default();
        let no_id = ev(t, "1", "run.started", env(2, "run.started", json!({})));
        let f = framing(&mut r, "r", &[good(1), no_id], 0);
        assert!(!f.ok);
        assert_eq!(errors(&r), vec![Id::MissingId]);

        let mut r = Report::default();
        framing(&mut r, "r", &[good(1), good(3)], 0);
        assert_eq!(errors(&r), vec![Id::IdNotDense]);

        let mut r = Report::default();
        let other_run = ev(
            t,
            "2",
            "run.started",
            json!({"event_id": 2, "run_id": "x", "type": "run.started", "timestamp": "2026-12-07T12:00:00Z", "payload": {}}),
        );
        framing(&mut r, "r", &[good(1), other_run], 0);
        assert_eq!(errors(&r), vec![Id::Envelope]);

        let mut r = Report::default();
        let wrong_type_line = ev(t, "2", "message", env(2, "run.started", json!({})));
        framing(&mut r, "r", &[good(1), wrong_type_line], 0);
        assert_eq!(errors(&r), vec![Id::Envelope]);
    }

    #[test]
    fn framing_replays_the_log_through_the_clients_reducer() {
        let t = Instant::now();
        let evs = [
            ev(t, "1", "run.started", env(1, "run.started", json!({}))),
            ev(
                t,
                "2",
                "message.created",
                env(
                    2,
                    "message.created",
                    json!({"message_id": "m", "role": "assistant"}),
                ),
            ),
            delta(t, 3, 0),
        ];
        let mut r = Report::default();
        let f = framing(&mut r, "r", &evs, 0);
        let state = f.state.unwrap().to_wire();
        assert_eq!(state["status"], "running");
        assert_eq!(state["messages"][0]["content"], tick(0));
        assert_eq!(state["cursor"], 3);
    }

    #[test]
    fn buffering_folds_its_symptoms_into_warnings() {
        let mut r = Report::default();
        r.error(Id::Buffering, "held");
        r.error(Id::Heartbeat, "silent");
        r.error(Id::Compression, "gzip");
        r.error(Id::Snapshot, "differs");
        fold_symptoms(&mut r);
        assert_eq!(errors(&r), vec![Id::Buffering, Id::Snapshot]);
        let mut r = Report::default();
        r.error(Id::Compression, "gzip");
        fold_symptoms(&mut r);
        assert_eq!(errors(&r), vec![Id::Compression]);
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[3, 4, 5, 9]), "3–5, 9");
        assert_eq!(ranges(&[]), "(none)");
        assert_eq!(ranges(&[1]), "1");
    }
}

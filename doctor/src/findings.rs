//! Finding ids (SERVER.md §3's table, a contract), severities, the fix each
//! finding prints, and the report with its human and `--json` forms.

use std::fmt::Write as _;

/// A stable finding id (SERVER.md §3). `Unreachable` and `Publish` are
/// additions: the base URL answered nothing, or the publish API refused the
/// probe, so the probes that need it could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(clippy::enum_variant_names)] // `MissingId`, `IdNotDense`: the contract's names
pub enum Id {
    ContentType,
    CacheControl,
    Compression,
    Buffering,
    IdleTimeout,
    Heartbeat,
    HeadersDelayed,
    MissingId,
    IdNotDense,
    Envelope,
    ReplayHeader,
    ReplayQuery,
    StatusFinished,
    StatusUnknown,
    Snapshot,
    SendIdempotency,
    CancelIdempotency,
    Auth,
    Cors,
    Http1,
    Websocket,
    Unreachable,
    Publish,
}

impl Id {
    /// The id as SERVER.md §3 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Id::ContentType => "content-type",
            Id::CacheControl => "cache-control",
            Id::Compression => "compression",
            Id::Buffering => "buffering",
            Id::IdleTimeout => "idle-timeout",
            Id::Heartbeat => "heartbeat",
            Id::HeadersDelayed => "headers-delayed",
            Id::MissingId => "missing-id",
            Id::IdNotDense => "id-not-dense",
            Id::Envelope => "envelope",
            Id::ReplayHeader => "replay-header",
            Id::ReplayQuery => "replay-query",
            Id::StatusFinished => "status-finished",
            Id::StatusUnknown => "status-unknown",
            Id::Snapshot => "snapshot",
            Id::SendIdempotency => "send-idempotency",
            Id::CancelIdempotency => "cancel-idempotency",
            Id::Auth => "auth",
            Id::Cors => "cors",
            Id::Http1 => "http1",
            Id::Websocket => "websocket",
            Id::Unreachable => "unreachable",
            Id::Publish => "publish",
        }
    }

    /// The change a person applies (the config line, or the header the server must send).
    pub fn fix(self) -> &'static str {
        match self {
            Id::ContentType => "the server must answer the stream with `Content-Type: text/event-stream`; a proxy must not rewrite it (nginx: no `default_type`/`add_header Content-Type` in the /api/stream/ location)",
            Id::CacheControl => "the server must send `Cache-Control: no-store, no-transform` on the stream and the proxy must pass it unchanged (nginx: remove `proxy_hide_header Cache-Control;` / `add_header Cache-Control …` and `expires` from the /api/stream/ location; Caddy: remove `header Cache-Control …`)",
            Id::Compression => "do not compress the stream: nginx `gzip off;` in the /api/stream/ location (and `text/event-stream` out of `gzip_types`); Caddy: no `encode` for /api/stream/*; a server must not send `Content-Encoding` on text/event-stream",
            Id::Buffering => "nginx: `proxy_buffering off;` and `gzip off;` in the /api/stream/ location (the server's `X-Accel-Buffering: no` is ignored when `proxy_ignore_headers X-Accel-Buffering` is set); Caddy: `flush_interval -1` in the reverse_proxy of /api/stream/*; a CDN: bypass caching/buffering for /api/stream/",
            Id::IdleTimeout => "raise the proxy's idle timeout well above the heartbeat (15 s): nginx `proxy_read_timeout 1h;` and `proxy_send_timeout 1h;` in the /api/stream/ and /api/ws locations; a load balancer: idle timeout ≥ 60 s",
            Id::Heartbeat => "the server must write a comment line (`: hb`) at least every 15 s while a stream is idle (gateway: `--heartbeat-ms 15000`; TypeScript kit: `heartbeatMs: 15000`)",
            Id::HeadersDelayed => "flush the response headers at once: `res.flushHeaders()` after `res.writeHead(...)` in Node, or write `: open\\n\\n` as soon as the stream opens",
            Id::MissingId => "every event frame must carry `id: <event_id>` (PROTOCOL §2a): `id: N`, `event: <type>`, `data: <envelope JSON>`",
            Id::IdNotDense => "event ids must be dense per run: the n-th event of the run's log has id n, with no gaps or repeats (PROTOCOL §1)",
            Id::Envelope => "each `data:` must be one PROTOCOL §1 envelope (`event_id`, `run_id`, `type`, `timestamp`, `payload`) whose `event_id` equals the frame's `id:` and whose type and payload follow §4",
            Id::ReplayHeader => "on `Last-Event-ID: N` the server must replay every logged event with id > N, in order, then go live (PROTOCOL §2a); a proxy must forward the `Last-Event-ID` header",
            Id::ReplayQuery => "on `?last_event_id=N` the server must replay exactly like `Last-Event-ID: N` (native EventSource on a fresh page cannot set headers); a proxy must keep the query string",
            Id::StatusFinished => "answer `204 No Content` to a stream request of a finished run with nothing left to replay (PROTOCOL §2a), so clients stop instead of reconnecting",
            Id::StatusUnknown => "answer `404` to a stream request of an unknown run (`403` to a caller without the right, PROTOCOL §7), never 200 or 5xx",
            Id::Snapshot => "`GET /api/runs/{run_id}/snapshot` must answer `{\"run_id\",\"event_id\",\"state\"}` with the §6 state equal to the log replayed up to `event_id` (use the same reducer as the client)",
            Id::SendIdempotency => "persist each send's `client_request_id` and answer a repeat with the first answer, appending nothing (PROTOCOL §5)",
            Id::CancelIdempotency => "answer a repeated cancel of a target already asked to stop with `202` and the first request's `event_id`, appending nothing (PROTOCOL §8)",
            Id::Auth => "check credentials on every browser route (stream, snapshot, WebSocket subscribe/send/cancel, send, cancel): 401 without or with invalid credentials, 403 without the right (PROTOCOL §7)",
            Id::Cors => "for pages on another origin: answer the preflight (OPTIONS) and the stream with `Access-Control-Allow-Origin: <page origin>`, allow the request headers `Last-Event-ID`, `Authorization` and `Content-Type` (gateway: `--cors-origin https://app.example`)",
            Id::Http1 => "serve browsers over HTTP/2: nginx `listen 443 ssl http2;` (nginx ≥ 1.25.1: `listen 443 ssl;` + `http2 on;`); Caddy serves HTTP/2 on HTTPS by default",
            Id::Websocket => "serve PROTOCOL §2b at /api/ws: text frames, `subscribe` answered by `subscribed` then the replay, `ping` by `pong` with the same `t`, an unknown run by `error` `not_found`/`forbidden`, a bad frame by `error` `bad_request` without closing; behind nginx: `proxy_set_header Upgrade $http_upgrade;` and `Connection $connection_upgrade`",
            Id::Unreachable => "check the base URL (scheme, host, port, path prefix before /api) and that the server is running",
            Id::Publish => "give the publish key the server was started with (gateway: the content of `--publish-key-file`; TypeScript kit: `publishKey`), and route /api/publish/ to the server",
        }
    }
}

/// How bad a finding is: `error` makes the exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warn,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warn => "warn",
            Severity::Info => "info",
        }
    }
}

/// One finding: what was seen, and the fix.
#[derive(Debug, Clone)]
pub struct Finding {
    pub id: Id,
    pub severity: Severity,
    pub message: String,
}

/// What one diagnosis (of one base URL) found, checked and skipped.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub checked: Vec<Id>,
    /// Ids not judged, with the reason.
    pub skipped: Vec<(Id, String)>,
}

impl Report {
    pub fn error(&mut self, id: Id, message: impl Into<String>) {
        self.add(id, Severity::Error, message);
    }
    pub fn warn(&mut self, id: Id, message: impl Into<String>) {
        self.add(id, Severity::Warn, message);
    }
    pub fn info(&mut self, id: Id, message: impl Into<String>) {
        self.add(id, Severity::Info, message);
    }
    pub fn add(&mut self, id: Id, severity: Severity, message: impl Into<String>) {
        self.check(id);
        self.findings.push(Finding {
            id,
            severity,
            message: message.into(),
        });
    }
    /// Marks `id` as checked (whether or not something was found).
    pub fn check(&mut self, id: Id) {
        if !self.checked.contains(&id) {
            self.checked.push(id);
        }
    }
    pub fn skip(&mut self, id: Id, reason: impl Into<String>) {
        if !self.checked.contains(&id) && !self.skipped.iter().any(|(s, _)| *s == id) {
            self.skipped.push((id, reason.into()));
        }
    }
    pub fn has(&self, id: Id, at_least: Severity) -> bool {
        self.findings
            .iter()
            .any(|f| f.id == id && f.severity <= at_least)
    }
    pub fn merge(&mut self, other: Report) {
        for f in other.findings {
            self.check(f.id);
            self.findings.push(f);
        }
        for id in other.checked {
            self.check(id);
        }
        for (id, why) in other.skipped {
            self.skip(id, why);
        }
    }
    /// Drops skips of ids that were checked after all (another probe judged them).
    pub fn settle(&mut self) {
        let checked = self.checked.clone();
        self.skipped.retain(|(id, _)| !checked.contains(id));
        self.findings.sort_by_key(|f| f.severity);
        self.checked.sort();
    }
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    /// The `--json` form: `{"findings":[{"id","severity","message","fix"}],"checked":[ids],"skipped":[{"id","reason"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "id": f.id.as_str(),
                "severity": f.severity.as_str(),
                "message": f.message,
                "fix": f.id.fix(),
            })).collect::<Vec<_>>(),
            "checked": self.checked.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(i, why)| serde_json::json!({"id": i.as_str(), "reason": why})).collect::<Vec<_>>(),
        })
    }

    /// The human form: each finding with its fix, then what was checked and skipped.
    pub fn to_text(&self, header: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{header}");
        if self.findings.is_empty() {
            let _ = writeln!(s, "\nno findings");
        }
        for f in &self.findings {
            let _ = writeln!(
                s,
                "\n{:<5} {}: {}\n      fix: {}",
                f.severity.as_str().to_uppercase(),
                f.id.as_str(),
                f.message,
                f.id.fix()
            );
        }
        let ids = |v: Vec<&str>| v.join(", ");
        let _ = writeln!(
            s,
            "\nchecked: {}",
            ids(self.checked.iter().map(|i| i.as_str()).collect())
        );
        for (id, why) in &self.skipped {
            let _ = writeln!(s, "skipped: {} ({why})", id.as_str());
        }
        let count = |sev: Severity| self.findings.iter().filter(|f| f.severity == sev).count();
        let _ = writeln!(
            s,
            "\n{} error(s), {} warning(s), {} note(s)",
            count(Severity::Error),
            count(Severity::Warn),
            count(Severity::Info)
        );
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contract_shape_and_every_finding_its_fix() {
        let mut r = Report::default();
        r.warn(Id::Http1, "HTTP/1.1");
        r.error(Id::Buffering, "held");
        r.check(Id::Snapshot);
        r.skip(Id::SendIdempotency, "no token");
        r.skip(Id::Snapshot, "judged after all");
        r.settle();
        let j = r.to_json();
        assert_eq!(j["findings"][0]["id"], "buffering");
        assert_eq!(j["findings"][0]["severity"], "error");
        assert_eq!(j["findings"][0]["message"], "held");
        assert!(j["findings"][0]["fix"]
            .as_str()
            .unwrap()
            .contains("proxy_buffering off;"));
        assert_eq!(j["findings"][1]["severity"], "warn");
        assert_eq!(j["checked"], json_ids(&["buffering", "snapshot", "http1"]));
        assert_eq!(j["skipped"][0]["id"], "send-idempotency");
        assert_eq!(j["skipped"].as_array().unwrap().len(), 1);
        assert_eq!(r.errors(), 1);
    }

    fn json_ids(ids: &[&str]) -> serde_json::Value {
        serde_json::json!(ids)
    }

    #[test]
    fn fixes_name_the_config_lines_of_the_issue() {
        assert!(Id::Compression.fix().contains("gzip off;"));
        assert!(Id::IdleTimeout.fix().contains("proxy_read_timeout"));
        assert!(Id::Http1.fix().contains("http2"));
        assert!(Id::HeadersDelayed.fix().contains("flushHeaders()"));
        assert!(Id::CacheControl
            .fix()
            .contains("Cache-Control: no-store, no-transform"));
    }
}

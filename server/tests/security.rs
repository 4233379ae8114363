//! The gateway's security suite (SERVER.md §1, PROTOCOL §7), on both stores:
//! every browser route (SSE stream, snapshot, send, WebSocket subscribe and
//! send) with no token, a forged signature, `alg: none`, another algorithm,
//! an expired token, one without `exp`, another run's and another session's
//! token, and an unknown run. Each gets its §7 answer, a denial carries no
//! content, and the logs are byte-for-byte the same afterwards. Test routes
//! are 404 without `--dev`; a 20 MB body is 413 and the server keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use runstream_server::auth::{AuthMode, JwtConfig, JwtOptions};
use runstream_server::{Limits, Replies, Settings};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{http, sse_frames, start_settings, Backend};

const SECRET: &[u8] = b"a-test-secret-of-the-security-suite";
const PUBLISH_KEY: &str = "publish-key-of-the-security-suite";
/// The one origin allowed cross-origin (`--cors-origin`).
const APP_ORIGIN: &str = "https://app.example";
/// Text only the runs' events hold: a denial must never show it.
const CONTENT: &str = "confidential-content-7f3a";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn token(runs: &[&str], sessions: &[&str]) -> String {
    sign(json!({"sub": "u1", "exp": now() + 600, "runs": runs, "sessions": sessions}))
}

fn b64(v: &Value) -> String {
    use std::fmt::Write;
    // base64url without padding, by hand (the test's own, independent of the crate under test).
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = v.to_string().into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = write!(out, "{}", A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every kind of bad credential, with a name for the failure message.
fn bad_tokens(run: &str) -> Vec<(&'static str, Option<String>)> {
    let claims = json!({"sub": "u1", "exp": now() + 600, "runs": [run], "sessions": ["sess_a"]});
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"another secret entirely"),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let other_alg = encode(
        &Header::new(Algorithm::HS384),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let expired =
        sign(json!({"sub": "u1", "exp": now() - 120, "runs": [run], "sessions": ["sess_a"]}));
    let no_exp = sign(json!({"sub": "u1", "runs": [run], "sessions": ["sess_a"]}));
    vec![
        ("no token", None),
        ("forged signature", Some(forged)),
        ("alg none", Some(alg_none)),
        ("another algorithm (HS384)", Some(other_alg)),
        ("expired", Some(expired)),
        ("no exp", Some(no_exp)),
        ("not a JWT", Some("hello".into())),
    ]
}

struct Fixture {
    addr: String,
    /// A finished task run published with session `sess_a`.
    run_a: String,
    /// A finished task run of nobody's session.
    run_b: String,
}

fn settings(b: &Backend, store: Arc<dyn runstream_server::store::Store>) -> Settings {
    let _ = b;
    Settings {
        store,
        www: "www".into(),
        pkg: "pkg".into(),
        heartbeat_ms: 200,
        replies: Replies::None,
        record_frames: 0,
        auth: Arc::new(AuthMode::Jwt(Box::new(JwtConfig::new(
            DecodingKey::from_secret(SECRET),
            Algorithm::HS256,
            JwtOptions::default(),
        )))),
        publish_key: Some(PUBLISH_KEY.as_bytes().to_vec()),
        dev: false,
        limits: Limits::default(),
        cancel_grace_ms: 30_000,
        cors_origins: vec![APP_ORIGIN.into()],
    }
}

async fn publish(addr: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let (st, _, b) = http(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &format!("Bearer {PUBLISH_KEY}")),
            ("Idempotency-Key", key),
        ],
        Some(&body.to_string()),
    )
    .await;
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn fixture(b: &Backend) -> Fixture {
    let addr = start_settings(settings(b, b.store().await)).await;
    let mut ids = Vec::new();
    for (i, session) in [Some("sess_a"), None].into_iter().enumerate() {
        let body = match session {
            Some(s) => json!({"run_id": format!("run_sec_{i}"), "session_id": s}),
            None => json!({"run_id": format!("run_sec_{i}")}),
        };
        let (st, v) = publish(&addr, "/api/publish/runs", "c", body).await;
        assert_eq!(st, 201, "{v}");
        let run = v["run_id"].as_str().unwrap().to_owned();
        let (st, v) = publish(
            &addr,
            &format!("/api/publish/runs/{run}/events"),
            "batch-1",
            json!({"events": [
                {"type": "run.started", "payload": {"title": CONTENT}},
                {"type": "worker.started", "payload": {"worker_id": "w1", "name": CONTENT}},
                {"type": "run.completed", "payload": {"status": "succeeded"}},
            ]}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v, json!({"first_event_id": 1, "last_event_id": 3}));
        ids.push(run);
    }
    // The session's chat run, created by a user's send.
    let t = token(&[], &["sess_a"]);
    let (st, _, body) = http(
        &addr,
        "POST",
        "/api/chat/sess_a/messages",
        &[("Authorization", &format!("Bearer {t}"))],
        Some(&json!({"client_request_id": "c1", "content": CONTENT}).to_string()),
    )
    .await;
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&body));
    Fixture {
        addr,
        run_a: ids[0].clone(),
        run_b: ids[1].clone(),
    }
}

/// Every run's full log and snapshot, read with the publish key (it reads every run).
async fn logs(f: &Fixture) -> Vec<String> {
    let auth = format!("Bearer {PUBLISH_KEY}");
    let mut out = Vec::new();
    for run in [&f.run_a, &f.run_b, "sess_a", "sess_b", "ghost"] {
        // The chat run never finishes: its frames, read for a moment.
        let (st, _, b) = support::http_for(
            &f.addr,
            "GET",
            &format!("/api/stream/runs/{run}"),
            &[("Authorization", &auth)],
            None,
            Duration::from_millis(700),
        )
        .await;
        out.push(format!("{run} stream {st} {}", sse_frames(&b).join("\n")));
        let (st, _, s) = http(
            &f.addr,
            "GET",
            &format!("/api/runs/{run}/snapshot"),
            &[("Authorization", &auth)],
            None,
        )
        .await;
        out.push(format!(
            "{run} snapshot {st} {}",
            String::from_utf8_lossy(&s)
        ));
    }
    out
}

fn bearer(t: &Option<String>) -> Vec<(&'static str, String)> {
    t.iter()
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .collect()
}

async fn get(addr: &str, path: &str, t: &Option<String>) -> (u16, String) {
    let h = bearer(t);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, _, b) = support::http_for(addr, "GET", path, &h, None, Duration::from_secs(2)).await;
    (st, String::from_utf8_lossy(&b).into_owned())
}

async fn post(addr: &str, path: &str, t: &Option<String>, body: Value) -> (u16, String) {
    let h = bearer(t);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, _, b) = http(addr, "POST", path, &h, Some(&body.to_string())).await;
    (st, String::from_utf8_lossy(&b).into_owned())
}

/// One WebSocket frame's answer: the first text frame after sending `op`.
async fn ws_answer(addr: &str, op: Value) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .expect("the upgrade is never refused for auth");
    ws.send(Message::text(op.to_string())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn ws_headers(t: &Option<String>) -> Value {
    match t {
        Some(t) => json!({"Authorization": format!("Bearer {t}")}),
        None => json!({}),
    }
}

/// Each route, one credential: the expected HTTP status and WebSocket code.
async fn expect_all(
    f: &Fixture,
    name: &str,
    t: &Option<String>,
    run: &str,
    session: &str,
    http_st: u16,
    send_st: u16,
) {
    let code = |st: u16| match st {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        _ => "",
    };
    let (st, b) = get(&f.addr, &format!("/api/stream/runs/{run}"), t).await;
    assert_eq!(st, http_st, "{name}: stream of {run}: {b}");
    assert!(!b.contains(CONTENT), "{name}: a denial leaked content");
    let (st, b) = get(&f.addr, &format!("/api/runs/{run}/snapshot"), t).await;
    assert_eq!(st, http_st, "{name}: snapshot of {run}: {b}");
    assert!(!b.contains(CONTENT), "{name}: a denial leaked content");
    let crid = format!("attack-{}", name.replace(' ', "-"));
    let (st, b) = post(
        &f.addr,
        &format!("/api/chat/{session}/messages"),
        t,
        json!({"client_request_id": crid, "content": "injected"}),
    )
    .await;
    assert_eq!(st, send_st, "{name}: send into {session}: {b}");
    let v = ws_answer(
        &f.addr,
        json!({"op": "subscribe", "run_id": run, "headers": ws_headers(t)}),
    )
    .await;
    assert_eq!(v["op"], "error", "{name}: ws subscribe: {v}");
    assert_eq!(v["code"], code(http_st), "{name}: ws subscribe: {v}");
    assert_eq!(v["run_id"], run, "{name}: {v}");
    assert!(!v.to_string().contains(CONTENT));
    let (st, b) = post(
        &f.addr,
        &format!("/api/runs/{run}/cancel"),
        t,
        json!({"client_request_id": crid}),
    )
    .await;
    assert_eq!(st, http_st, "{name}: cancel of {run}: {b}");
    let v = ws_answer(
        &f.addr,
        json!({"op": "cancel", "run_id": run, "client_request_id": crid, "headers": ws_headers(t)}),
    )
    .await;
    assert_eq!(v["op"], "error", "{name}: ws cancel: {v}");
    assert_eq!(v["code"], code(http_st), "{name}: ws cancel: {v}");
    assert_eq!(v["client_request_id"], crid.as_str());
    let v = ws_answer(
        &f.addr,
        json!({"op": "send", "session_id": session, "client_request_id": crid, "content": "injected", "headers": ws_headers(t)}),
    )
    .await;
    assert_eq!(v["op"], "error", "{name}: ws send: {v}");
    assert_eq!(v["code"], code(send_st), "{name}: ws send: {v}");
    assert_eq!(v["client_request_id"], crid.as_str());
}

async fn every_route_refuses_bad_credentials_and_changes_nothing(b: Backend) {
    let f = fixture(&b).await;
    let before = logs(&f).await;
    assert!(
        before.iter().any(|l| l.contains(CONTENT)),
        "the fixture holds content: {before:?}"
    );
    for (name, t) in bad_tokens(&f.run_a) {
        expect_all(&f, name, &t, &f.run_a, "sess_a", 401, 401).await;
    }
    // Valid credentials without the right: another run's token, another session's token.
    let other_run = Some(token(&[&f.run_b], &[]));
    expect_all(
        &f,
        "another run's token",
        &other_run,
        &f.run_a,
        "sess_a",
        403,
        403,
    )
    .await;
    let other_session = Some(token(&[], &["sess_b"]));
    expect_all(
        &f,
        "another session's token",
        &other_session,
        &f.run_a,
        "sess_a",
        403,
        403,
    )
    .await;
    // A run whose id equals a session but that belongs to another session
    // (published with session_id "sess_a") is not that session's chat run.
    let (st, _) = publish(
        &f.addr,
        "/api/publish/runs",
        "c",
        json!({"run_id": "sess_c", "session_id": "sess_a"}),
    )
    .await;
    assert_eq!(st, 201);
    let sess_c = Some(token(&[], &["sess_c"]));
    let (st, _) = get(&f.addr, "/api/runs/sess_c/snapshot", &sess_c).await;
    assert_eq!(
        st, 403,
        "the id equals the claimed session, the run is sess_a's"
    );
    let (st, _) = post(
        &f.addr,
        "/api/chat/sess_c/messages",
        &sess_c,
        json!({"client_request_id": "x1", "content": "into another session's run"}),
    )
    .await;
    assert_eq!(st, 403);
    // The session's own chat run is not another session's.
    expect_all(
        &f,
        "another session's token (chat run)",
        &other_session,
        "sess_a",
        "sess_a",
        403,
        403,
    )
    .await;
    // Unknown runs: 404 to a caller whose token names the id, 403 to anyone else, 401 without a token.
    let names_ghost = Some(token(&["ghost"], &["sess_b"]));
    let (st, _) = get(&f.addr, "/api/stream/runs/ghost", &names_ghost).await;
    assert_eq!(st, 404);
    let (st, _) = get(&f.addr, "/api/runs/ghost/snapshot", &names_ghost).await;
    assert_eq!(st, 404);
    let v = ws_answer(
        &f.addr,
        json!({"op": "subscribe", "run_id": "ghost", "headers": ws_headers(&names_ghost)}),
    )
    .await;
    assert_eq!(v["code"], "not_found", "{v}");
    let not_ghost = Some(token(&[&f.run_a], &["sess_a"]));
    let (st, _) = get(&f.addr, "/api/stream/runs/ghost", &not_ghost).await;
    assert_eq!(st, 403, "an unknown run looks like another user's run");
    let (st, _) = get(&f.addr, "/api/runs/ghost/snapshot", &not_ghost).await;
    assert_eq!(st, 403);
    let v = ws_answer(
        &f.addr,
        json!({"op": "subscribe", "run_id": "ghost", "headers": ws_headers(&not_ghost)}),
    )
    .await;
    assert_eq!(v["code"], "forbidden", "{v}");
    let (st, _) = get(&f.addr, "/api/stream/runs/ghost", &None).await;
    assert_eq!(st, 401);
    // The publish key reads, but a send with it is 403 (sends are a user's).
    let key = Some(PUBLISH_KEY.to_owned());
    let (st, _) = post(
        &f.addr,
        "/api/chat/sess_a/messages",
        &key,
        json!({"client_request_id": "k1", "content": "x"}),
    )
    .await;
    assert_eq!(st, 403);
    // The publish API refuses users and strangers.
    for (t, st_expected) in [
        (None, 401),
        (not_ghost.clone(), 403),
        (Some("wrong-key".to_owned()), 401),
    ] {
        let (st, _) = post(
            &f.addr,
            "/api/publish/runs",
            &t,
            json!({"run_id": "intruder"}),
        )
        .await;
        assert_eq!(st, st_expected, "publish create with {t:?}");
        let (st, _) = post(
            &f.addr,
            &format!("/api/publish/runs/{}/events", f.run_a),
            &t,
            json!({"events": [{"type": "run.started", "payload": {}}]}),
        )
        .await;
        assert_eq!(st, st_expected, "publish append with {t:?}");
        let (st, _) = get(&f.addr, "/api/publish/sends", &t).await;
        assert_eq!(st, st_expected, "publish sends with {t:?}");
    }
    // Nothing changed: every log and snapshot as before, no session created by a refused send.
    let after = logs(&f).await;
    assert_eq!(before, after);
    assert!(
        after.iter().any(|l| l == "sess_b snapshot 404 unknown run"),
        "{after:?}"
    );
}

async fn granted_credentials_get_the_run_on_every_route(b: Backend) {
    let f = fixture(&b).await;
    for (name, t) in [
        ("run token", token(&[&f.run_a], &[])),
        (
            "session token (published with session_id)",
            token(&[], &["sess_a"]),
        ),
    ] {
        let t = Some(t);
        let (st, body) = get(&f.addr, &format!("/api/stream/runs/{}", f.run_a), &t).await;
        assert_eq!(st, 200, "{name}");
        assert_eq!(
            support::ids(&sse_frames(body.as_bytes())),
            vec![1, 2, 3],
            "{name}"
        );
        let (st, body) = get(&f.addr, &format!("/api/runs/{}/snapshot", f.run_a), &t).await;
        assert_eq!(st, 200, "{name}");
        assert!(body.contains(CONTENT));
        let v = ws_answer(
            &f.addr,
            json!({"op": "subscribe", "run_id": f.run_a, "headers": ws_headers(&t)}),
        )
        .await;
        assert_eq!(v["op"], "subscribed", "{name}: {v}");
    }
    // Granted cancels get past authorization: the run is finished, so 409.
    let t = Some(token(&[&f.run_a], &[]));
    let (st, b) = post(
        &f.addr,
        &format!("/api/runs/{}/cancel", f.run_a),
        &t,
        json!({"client_request_id": "ok1"}),
    )
    .await;
    assert_eq!(st, 409, "{b}");
    let key = Some(PUBLISH_KEY.to_owned());
    let (st, b) = post(
        &f.addr,
        &format!("/api/runs/{}/cancel", f.run_b),
        &key,
        json!({"client_request_id": "ok2"}),
    )
    .await;
    assert_eq!(st, 409, "the publish key may cancel: {b}");
    // The cookie carries the same token (native EventSource's only way).
    let t = token(&[&f.run_a], &[]);
    let (st, _, _) = http(
        &f.addr,
        "GET",
        &format!("/api/runs/{}/snapshot", f.run_a),
        &[("Cookie", &format!("theme=dark; runstream_token={t}"))],
        None,
    )
    .await;
    assert_eq!(st, 200);
    // A token within the 30 s leeway is still valid.
    let leeway = Some(sign(json!({"exp": now() - 10, "runs": [f.run_a]})));
    let (st, _) = get(&f.addr, &format!("/api/runs/{}/snapshot", f.run_a), &leeway).await;
    assert_eq!(st, 200);
}

/// POSTs a large body as a browser would; the server may answer and close
/// before it is all written (that write error is expected). Returns the status.
async fn post_big(addr: &str, path: &str, bearer: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {bearer}\r\nIdempotency-Key: big\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// PROTOCOL §7: when a subscribed run's token expires, the server sends that
/// run an `unauthorized` error and stops its events (the socket stays up).
async fn websocket_token_expiry_mid_stream_is_a_per_run_unauthorized(b: Backend) {
    let f = fixture(&b).await;
    // Valid for about 2 s more (exp 28 s ago, 30 s leeway).
    let short = sign(json!({"exp": now() - 28, "sessions": ["sess_a"]}));
    let long = token(&[], &["sess_a"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", f.addr))
        .await
        .unwrap();
    ws.send(Message::text(json!({"op": "subscribe", "run_id": "sess_a", "headers": {"authorization": format!("Bearer {short}")}}).to_string())).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut got_unauthorized = None;
    while t0.elapsed() < Duration::from_secs(8) {
        let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_secs(8), ws.next()).await
        else {
            break;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["op"] == "error" {
            got_unauthorized = Some((v, t0.elapsed()));
            break;
        }
    }
    let (v, at) = got_unauthorized.expect("an error op when the token expires");
    assert_eq!(v["code"], "unauthorized", "{v}");
    assert_eq!(v["run_id"], "sess_a");
    assert!(
        at >= Duration::from_millis(500),
        "not before the expiry: {at:?}"
    );
    // The socket is still up: a resubscribe with fresh headers replays.
    ws.send(Message::text(json!({"op": "subscribe", "run_id": "sess_a", "last_event_id": 0, "headers": {"Authorization": format!("Bearer {long}")}}).to_string())).await.unwrap();
    let mut saw = Vec::new();
    while saw.len() < 2 {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        else {
            panic!("socket closed")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        saw.push(v["op"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(saw, ["subscribed", "event"]);
}

async fn test_routes_exist_only_with_dev_and_bodies_are_bounded(b: Backend) {
    let f = fixture(&b).await;
    let key = Some(PUBLISH_KEY.to_owned());
    for (m, p) in [
        ("POST", "/api/admin/runs"),
        ("POST", "/api/admin/restart"),
        ("GET", "/api/admin/frames"),
        ("GET", "/api/admin/connections"),
        ("GET", "/api/admin/store"),
        ("POST", "/api/admin/runs/run_sec_0/append"),
        ("POST", "/api/admin/runs/run_sec_0/prune"),
        ("POST", "/api/admin/runs/run_sec_0/chaos"),
        ("GET", "/api/chaos/stats/x"),
        ("GET", "/api/chaos/hang/x"),
    ] {
        let (st, _) = if m == "GET" {
            get(&f.addr, p, &key).await
        } else {
            post(&f.addr, p, &key, json!({})).await
        };
        assert_eq!(st, 404, "{m} {p} without --dev");
    }
    // 20 MB: 413, and the server keeps serving.
    let big = format!(
        "{{\"client_request_id\":\"big\",\"content\":\"{}\"}}",
        "x".repeat(20 << 20)
    );
    let t = token(&[], &["sess_a"]);
    let st = post_big(&f.addr, "/api/chat/sess_a/messages", &t, &big).await;
    assert_eq!(st, 413);
    let st = post_big(
        &f.addr,
        "/api/publish/runs/run_sec_0/events",
        PUBLISH_KEY,
        &big,
    )
    .await;
    assert_eq!(st, 413);
    let (st, _) = get(&f.addr, "/healthz", &None).await;
    assert_eq!(st, 200);
    let (st, _) = get(&f.addr, "/readyz", &None).await;
    assert_eq!(st, 200);
    let (st, body) = get(&f.addr, "/metrics", &None).await;
    assert_eq!(st, 200);
    assert!(body.contains("runstream_open_connections"), "{body}");
    assert!(body.contains("runstream_store_latency_seconds"), "{body}");
}

/// Cross-origin: only the `--cors-origin` list gets CORS headers (with
/// credentials), and a WebSocket upgrade from any other origin gets no cookie
/// credentials (cross-site WebSocket hijacking), while its frames' own headers
/// still work.
async fn only_listed_origins_get_cors_and_cookie_websockets(b: Backend) {
    let f = fixture(&b).await;
    let t = token(&[&f.run_a], &[]);
    let path = format!("/api/runs/{}/snapshot", f.run_a);
    let cookie = format!("runstream_token={t}");
    let (st, head, _) = http(
        &f.addr,
        "GET",
        &path,
        &[("Origin", APP_ORIGIN), ("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(st, 200);
    let h = head.to_ascii_lowercase();
    assert!(
        h.contains(&format!("access-control-allow-origin: {APP_ORIGIN}")),
        "{head}"
    );
    assert!(
        h.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    let (_, head, _) = http(
        &f.addr,
        "GET",
        &path,
        &[("Origin", "https://evil.example"), ("Cookie", &cookie)],
        None,
    )
    .await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "a foreign origin gets no CORS headers: {head}"
    );
    let ws_with = |origin: &'static str, cookie: String| {
        let addr = f.addr.clone();
        let run = f.run_a.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = format!("ws://{addr}/api/ws").into_client_request().unwrap();
            req.headers_mut().insert("Origin", origin.parse().unwrap());
            req.headers_mut().insert("Cookie", cookie.parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            ws.send(Message::text(
                json!({"op": "subscribe", "run_id": run}).to_string(),
            ))
            .await
            .unwrap();
            loop {
                if let Message::Text(t) = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
                {
                    return serde_json::from_str::<Value>(&t).unwrap();
                }
            }
        }
    };
    let v = ws_with(APP_ORIGIN, cookie.clone()).await;
    assert_eq!(
        v["op"], "subscribed",
        "the listed origin's cookie authenticates the socket: {v}"
    );
    let v = ws_with("https://evil.example", cookie.clone()).await;
    assert_eq!(
        (v["op"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "a foreign page's socket carries no cookie: {v}"
    );
}

/// Publishes run `run` with `batches` batches of `per_batch` events of 64 KB each.
async fn publish_blobs(addr: &str, run: &str, batches: usize, per_batch: usize) {
    let (st, _) = publish(addr, "/api/publish/runs", "c", json!({"run_id": run})).await;
    assert_eq!(st, 201);
    let blob = "x".repeat(64 * 1024);
    for i in 0..batches {
        let events: Vec<Value> = (0..per_batch)
            .map(|j| json!({"type": "worker.started", "payload": {"worker_id": format!("w{i}-{j}"), "name": blob}}))
            .collect();
        let (st, v) = publish(
            addr,
            &format!("/api/publish/runs/{run}/events"),
            &format!("b{i}"),
            json!({"events": events}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
}

/// A client that stops reading is disconnected after `--slow-client-ms`,
/// never buffered without bound (SSE and WebSocket).
async fn a_client_that_stops_reading_is_dropped(b: Backend) {
    let store = b.store().await;
    let mut settings = settings(&b, store);
    settings.auth = Arc::new(AuthMode::None);
    settings.limits.slow_client_ms = 500;
    settings.limits.client_buffer = 8;
    let addr = start_settings(settings).await;
    // A run of big events: 4 MB of log, far beyond the socket buffers.
    publish_blobs(&addr, "big", 64, 1).await;
    let metrics = || async {
        let (_, body) = get(&addr, "/metrics", &None).await;
        body.lines()
            .filter(|l| {
                l.starts_with("runstream_clients_dropped_total{reason=\"slow_client\"}")
                    || l.starts_with("runstream_clients_dropped_total{reason=\"write_stall\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let open = || async {
        let (_, body) = get(&addr, "/metrics", &None).await;
        body.lines()
            .filter(|l| l.starts_with("runstream_open_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    // SSE: the request is sent, then nothing is read.
    use tokio::io::AsyncWriteExt;
    let mut sse = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sse.write_all(b"GET /api/stream/runs/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // WebSocket: subscribed, then nothing is read.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": "big"}).to_string(),
    ))
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if metrics().await >= 2 && open().await == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "both stalled clients dropped (dropped {}, open {})",
            metrics().await,
            open().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server keeps serving.
    let (st, _) = get(&addr, "/healthz", &None).await;
    assert_eq!(st, 200);
    drop((sse, ws));
}

/// A WebSocket's queue is bounded in bytes (`--client-buffer-bytes`), not only in
/// frames: a subscriber that stops reading a run of 64 KB events holds at most the
/// budget (or one frame) in the server, not `--client-buffer` frames of them.
#[tokio::test]
async fn a_websocket_queues_at_most_its_byte_budget() {
    let b = Backend::new(support::Kind::Memory).await.unwrap();
    let store = b.store().await;
    let mut settings = settings(&b, store);
    settings.auth = Arc::new(AuthMode::None);
    settings.limits.slow_client_ms = 4000;
    settings.limits.client_buffer_bytes = 256 * 1024;
    let addr = start_settings(settings).await;
    // 12 MB of log: beyond what the loopback socket buffers take.
    publish_blobs(&addr, "wide", 24, 8).await;
    let gauge = |name: &'static str| {
        let addr = addr.clone();
        async move {
            let (_, body) = get(&addr, "/metrics", &None).await;
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<i64>().ok())
                .unwrap_or(-1)
        }
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": "wide"}).to_string(),
    ))
    .await
    .unwrap();
    // Nothing is read. The queue fills while the socket buffers are full; sampled
    // until the client is dropped (--slow-client-ms).
    let mut peak = 0;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(3000) {
        peak = peak.max(gauge("runstream_websocket_queued_bytes ").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frame = 64 * 1024 + 512;
    assert!(
        peak > 0 && peak <= 256 * 1024 + frame,
        "queued bytes peaked at {peak}, budget 262144 (+ one frame)"
    );
    drop(ws);
    let t0 = std::time::Instant::now();
    while gauge("runstream_websocket_queued_bytes ").await != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the dropped socket's bytes return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_stores!(
    only_listed_origins_get_cors_and_cookie_websockets,
    a_client_that_stops_reading_is_dropped,
    every_route_refuses_bad_credentials_and_changes_nothing,
    granted_credentials_get_the_run_on_every_route,
    websocket_token_expiry_mid_stream_is_a_per_run_unauthorized,
    test_routes_exist_only_with_dev_and_bodies_are_bounded,
);

/// Generates a key pair with openssl: (private PKCS#8 PEM, public PEM path).
fn keypair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, String) {
    let private = dir.join(format!("{kind}.pem"));
    let public = dir.join(format!("{kind}.pub"));
    let gen: &[&str] = if kind.starts_with("ec") {
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]
    } else {
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]
    };
    let ok = std::process::Command::new("openssl")
        .args(gen)
        .arg("-out")
        .arg(&private)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    (
        std::fs::read(&private).unwrap(),
        public.to_string_lossy().into_owned(),
    )
}

/// `--jwt-public-key-file`: the key's type decides RS256 or ES256, and a
/// token of any other algorithm is refused, including the classic confusion
/// (HS256 signed with the public key's PEM as the secret).
#[tokio::test]
async fn public_key_files_pick_rs256_or_es256_and_refuse_every_other_algorithm() {
    use runstream_server::auth::{Credentials, DenyReason, Gate};
    let dir = std::env::temp_dir().join(format!("runstream-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ec_private, ec_public) = keypair(&dir, "ec");
    let (rsa_private, rsa_public) = keypair(&dir, "rsa");
    let claims = json!({"exp": now() + 600, "runs": ["r1"]});
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
    )
    .unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    let confused = |public: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&std::fs::read(public).unwrap()),
        )
        .unwrap()
    };
    let store: Arc<dyn runstream_server::store::Store> =
        Arc::new(runstream_server::store::memory::MemoryStore::new(100));
    let metrics = Arc::new(runstream_server::metrics::Metrics::new());
    let gate = |path: &str| {
        let cfg = JwtConfig::public_key_file(path, JwtOptions::default()).unwrap();
        Gate::new(
            Arc::new(AuthMode::Jwt(Box::new(cfg))),
            None,
            store.clone(),
            metrics.clone(),
        )
    };
    let auth = |g: &Gate, t: &str| {
        g.authenticate(Credentials {
            bearer: Some(t),
            cookies: None,
        })
        .map(|_| ())
    };
    let ec_gate = gate(&ec_public);
    let rsa_gate = gate(&rsa_public);
    assert_eq!(auth(&ec_gate, &es), Ok(()));
    assert_eq!(auth(&rsa_gate, &rs), Ok(()));
    assert_eq!(auth(&ec_gate, &rs), Err(DenyReason::WrongAlgorithm));
    assert_eq!(auth(&rsa_gate, &es), Err(DenyReason::WrongAlgorithm));
    assert_eq!(
        auth(&ec_gate, &confused(&ec_public)),
        Err(DenyReason::WrongAlgorithm)
    );
    assert_eq!(
        auth(&rsa_gate, &confused(&rsa_public)),
        Err(DenyReason::WrongAlgorithm)
    );
    // A token signed by another EC key: a bad signature.
    let (other_private, _) = keypair(&dir, "ec2");
    let other = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&other_private).unwrap(),
    )
    .unwrap();
    assert_eq!(auth(&ec_gate, &other), Err(DenyReason::BadSignature));
    // A secret file's content is not a public key.
    std::fs::write(dir.join("secret"), "not a key").unwrap();
    assert!(JwtConfig::public_key_file(
        dir.join("secret").to_str().unwrap(),
        JwtOptions::default()
    )
    .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

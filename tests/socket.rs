//! One WebSocket shared by many engines ([`runstream::core::socket`]), on a
//! virtual clock: a page of engines wired to one `Socket` the way the browser
//! shell wires them, against a fake server that speaks PROTOCOL §2b.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use runstream::core::engine::{Action, CloseCause, Config, Connection, Engine, Ms, Transport};
use runstream::core::socket::{Socket, SocketAction, SocketConfig, SocketState, RECHECK_GRACE_MS};
use runstream::core::wire::ClientOp;
use serde_json::json;

fn run_id(i: usize) -> String {
    format!("run_{i}")
}

/// Event `id` of run `rid`: `run.started` first, then one worker each.
fn event(rid: &str, id: u64) -> String {
    let (ty, payload) = if id == 1 {
        ("run.started", json!({"title": "t"}))
    } else {
        ("worker.started", json!({"worker_id": format!("w{id}")}))
    };
    json!({"op": "event", "event": {
        "event_id": id, "run_id": rid, "type": ty,
        "timestamp": "2026-11-22T12:00:00.000Z", "payload": payload
    }})
    .to_string()
}

/// The server's side of one socket: what it received, and each run's log length.
#[derive(Default)]
struct Server {
    /// Every frame received, with the socket it came on.
    frames: Vec<(u64, ClientOp)>,
    /// Events logged per run (ids 1..=n).
    logged: BTreeMap<String, u64>,
    /// Subscriptions live on the current socket.
    subs: BTreeMap<String, u64>,
    /// Frames to deliver on the current socket.
    outbox: Vec<String>,
    /// Refuse every send with a `bad_request` error that names no run
    /// (the reference server's send errors carry only the send's id).
    refuse_sends: bool,
    /// With `refuse_sends`: the refusal's code (default `bad_request`) and
    /// the run it names (default none).
    refusal: Option<(&'static str, Option<&'static str>)>,
}

struct Page {
    now: Ms,
    sock: Socket,
    engines: Vec<Engine>,
    /// Each engine's connection number while attached.
    attached: Vec<Option<u64>>,
    server: Server,
    /// The socket the server accepts (set when the shell opens one).
    pending_open: Option<u64>,
    live: Option<u64>,
    /// Sockets the shell was asked to close.
    closed: Vec<u64>,
}

impl Page {
    fn new(n: usize) -> Self {
        let mut cfg = Config::new("x");
        cfg.transport = Transport::WebSocket;
        cfg.shared_socket = true;
        let engines = (0..n)
            .map(|i| {
                let mut c = cfg.clone();
                c.run_id = run_id(i);
                c.session_id = run_id(i);
                c.can_send = true;
                Engine::new(c, [i as u64, 1], None)
            })
            .collect();
        Self {
            now: 0.0,
            sock: Socket::new(SocketConfig::from(&cfg)),
            engines,
            attached: vec![None; n],
            server: Server::default(),
            pending_open: None,
            live: None,
            closed: Vec::new(),
        }
    }

    fn start(&mut self) {
        for e in &mut self.engines {
            e.start(self.now);
        }
        self.pump();
    }

    /// Executes every action of the engines and the socket until quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            for i in 0..self.engines.len() {
                while let Some(a) = self.engines[i].poll_action() {
                    busy = true;
                    match a {
                        Action::Connect { conn, .. } => {
                            self.attached[i] = Some(conn);
                            self.sock.attach(self.now, i as u64, &run_id(i));
                        }
                        Action::Disconnect { conn } if self.attached[i] == Some(conn) => {
                            self.attached[i] = None;
                            self.sock.detach(i as u64);
                        }
                        Action::WsSend { conn, text } if self.attached[i] == Some(conn) => {
                            self.receive(&text)
                        }
                        _ => {}
                    }
                }
            }
            while let Some(a) = self.sock.poll_action() {
                busy = true;
                match a {
                    SocketAction::Open { conn } => self.pending_open = Some(conn),
                    SocketAction::Close { conn } => {
                        self.closed.push(conn);
                        if self.live == Some(conn) {
                            self.live = None;
                        }
                    }
                    SocketAction::Send { text, .. } => self.receive(&text),
                    SocketAction::RunOpen { run } => {
                        let i = run as usize;
                        let conn = self.attached[i].unwrap();
                        self.engines[i].handle_ws_open(self.now, conn, Vec::new());
                    }
                    SocketAction::Deliver { run, op } => {
                        let i = run as usize;
                        let conn = self.attached[i].unwrap();
                        self.engines[i].handle_ws_op(self.now, conn, op);
                    }
                    SocketAction::Unreadable { run, error } => {
                        let i = run as usize;
                        let conn = self.attached[i].unwrap();
                        self.engines[i].handle_ws_frame_error(self.now, conn, error);
                    }
                    SocketAction::RunDropped { run, cause } => {
                        let i = run as usize;
                        if let Some(conn) = self.attached[i] {
                            self.engines[i].handle_closed(self.now, conn, cause);
                        }
                    }
                }
            }
            if let Some(conn) = self.live {
                for text in std::mem::take(&mut self.server.outbox) {
                    busy = true;
                    self.sock.handle_text(self.now, conn, &text);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the page never went quiet");
    }

    /// The server accepts the socket the shell opened.
    fn accept(&mut self) {
        let conn = self.pending_open.take().expect("no socket to open");
        self.live = Some(conn);
        self.server.subs.clear();
        self.sock.handle_open(self.now, conn);
        self.pump();
    }

    /// The server drops the live socket (code 1006).
    fn drop_socket(&mut self) {
        let conn = self.live.take().expect("no live socket");
        self.server.subs.clear();
        self.server.outbox.clear();
        self.sock
            .handle_closed(self.now, conn, CloseCause::WsClose { code: 1006 }, 0.5);
        self.pump();
    }

    fn receive(&mut self, text: &str) {
        // Frames written to a socket the server no longer answers are lost.
        let Some(conn) = self.live else { return };
        let op: ClientOp = serde_json::from_str(text).unwrap();
        match &op {
            ClientOp::Subscribe {
                run_id,
                last_event_id,
                ..
            } => {
                let from = last_event_id.unwrap_or(0);
                self.server.subs.insert(run_id.clone(), from);
                self.server.outbox.push(
                    json!({"op": "subscribed", "run_id": run_id, "replay_from": from + 1})
                        .to_string(),
                );
                let n = self.server.logged.get(run_id).copied().unwrap_or(0);
                for id in from + 1..=n {
                    self.server.outbox.push(event(run_id, id));
                }
            }
            ClientOp::Unsubscribe { run_id } => {
                self.server.subs.remove(run_id);
            }
            ClientOp::Ping { t } => self
                .server
                .outbox
                .push(json!({"op": "pong", "t": t}).to_string()),
            ClientOp::Send {
                session_id,
                client_request_id,
                ..
            } if self.server.refuse_sends => {
                let (code, run) = self.server.refusal.unwrap_or(("bad_request", None));
                let mut frame = json!({"op": "error", "code": code, "message": "content too long",
                       "client_request_id": client_request_id});
                if let Some(run) = run {
                    frame["run_id"] = json!(run);
                }
                self.server.outbox.push(frame.to_string())
            }
            ClientOp::Send {
                session_id,
                client_request_id,
                ..
            } => self.server.outbox.push(
                json!({"op": "ack", "client_request_id": client_request_id,
                       "message_id": "m1", "run_id": session_id})
                .to_string(),
            ),
            ClientOp::Cancel {
                run_id,
                client_request_id,
                ..
            } => self.server.outbox.push(
                json!({"op": "ack", "client_request_id": client_request_id,
                       "event_id": 1, "run_id": run_id})
                .to_string(),
            ),
        }
        self.server.frames.push((conn, op));
    }

    /// Run `i` logs `k` more events; subscribers get them live.
    fn log(&mut self, i: usize, k: u64) {
        let rid = run_id(i);
        let n = self.server.logged.entry(rid.clone()).or_insert(0);
        for _ in 0..k {
            *n += 1;
            if self.server.subs.contains_key(&rid) && self.live.is_some() {
                self.server.outbox.push(event(&rid, *n));
            }
        }
        self.pump();
    }

    /// Advances the clock to `until`, firing every engine and socket deadline on the way.
    fn run_until(&mut self, until: Ms) {
        loop {
            let next = self
                .engines
                .iter()
                .filter_map(Engine::poll_timeout)
                .chain(self.sock.poll_timeout())
                .reduce(Ms::min);
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    for e in &mut self.engines {
                        if e.poll_timeout().is_some_and(|d| d <= self.now) {
                            e.handle_timeout(self.now);
                        }
                    }
                    if self.sock.poll_timeout().is_some_and(|d| d <= self.now) {
                        self.sock.handle_timeout(self.now, 0.5);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn frames_on(&self, conn: u64) -> impl Iterator<Item = &ClientOp> {
        self.server
            .frames
            .iter()
            .filter(move |(c, _)| *c == conn)
            .map(|(_, op)| op)
    }

    fn pings(&self) -> usize {
        self.server
            .frames
            .iter()
            .filter(|(_, op)| matches!(op, ClientOp::Ping { .. }))
            .count()
    }
}

#[test]
fn routes_each_frame_to_its_run_and_pings_once_per_socket() {
    let mut p = Page::new(20);
    for i in 0..20 {
        p.server.logged.insert(run_id(i), i as u64 + 1);
    }
    p.start();
    // One socket for twenty runs, and one subscribe per run on it.
    assert_eq!(p.sock.opens, 1);
    p.accept();
    let subs: Vec<_> = p
        .frames_on(1)
        .filter_map(|op| match op {
            ClientOp::Subscribe { run_id, .. } => Some(run_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(subs.len(), 20);
    // Each run got exactly its own events (run i has i + 1 of them).
    for (i, e) in p.engines.iter().enumerate() {
        assert_eq!(e.cursor(), i as u64 + 1, "run {i}");
        assert_eq!(e.metrics().protocol_errors, 0, "run {i}");
        assert_eq!(e.status(p.now).connection, Connection::Open);
    }
    p.log(7, 3);
    assert_eq!(p.engines[7].cursor(), 11);
    assert_eq!(p.engines[8].cursor(), 9);
    // A minute of quiet: pongs keep the socket alive, one ping per interval
    // for the whole socket, none from the engines.
    p.run_until(60_000.0);
    assert_eq!(p.pings(), 6);
    assert_eq!(p.sock.opens, 1);
    assert!(matches!(p.sock.state(), SocketState::Open { .. }));
    // An ack goes to the run that sent, and only to it.
    let crid = p.engines[3].send(p.now, "hi").unwrap();
    p.pump();
    assert!(p.engines[3]
        .metrics()
        .messages
        .get(&crid)
        .is_some_and(|m| m.ttfb_ms.is_some()));
    // A binary frame is a protocol error of every run, not a crash.
    p.sock.handle_binary(p.now, 1);
    p.pump();
    assert!(p.engines.iter().all(|e| e.metrics().protocol_errors == 1));
}

#[test]
fn after_each_drop_every_run_resumes_from_its_own_cursor_over_one_new_socket() {
    let mut p = Page::new(50);
    p.start();
    p.accept();
    for round in 0..5u64 {
        for i in 0..50 {
            p.log(i, (i % 7) as u64 + 1);
        }
        let cursors: Vec<u64> = p.engines.iter().map(Engine::cursor).collect();
        p.drop_socket();
        // Everyone reconnects through one socket, after the socket's backoff.
        while p.pending_open.is_none() && p.now < 60_000.0 * (round + 1) as f64 {
            let next = p.now + 10.0;
            p.run_until(next);
        }
        assert_eq!(p.sock.opens, round + 2, "one new socket per drop");
        p.accept();
        // Runs whose own wait ends later join the open socket.
        p.run_until(p.now + 25_000.0);
        assert_eq!(p.sock.opens, round + 2, "still one socket");
        let conn = round + 2;
        let resumed: BTreeMap<String, Option<u64>> = p
            .frames_on(conn)
            .filter_map(|op| match op {
                ClientOp::Subscribe {
                    run_id,
                    last_event_id,
                    ..
                } => Some((run_id.clone(), *last_event_id)),
                _ => None,
            })
            .collect();
        assert_eq!(resumed.len(), 50);
        for (i, c) in cursors.iter().enumerate() {
            assert_eq!(
                resumed[&run_id(i)],
                Some(*c),
                "run {i} resumes from its cursor"
            );
        }
    }
    for (i, e) in p.engines.iter().enumerate() {
        assert_eq!(e.cursor(), p.server.logged[&run_id(i)]);
        assert_eq!(e.metrics().duplicates_dropped, 0);
    }
}

#[test]
fn close_unsubscribes_and_the_socket_closes_with_its_last_run() {
    let mut p = Page::new(3);
    p.start();
    p.accept();
    p.engines[0].close(p.now);
    p.pump();
    assert!(p
        .frames_on(1)
        .any(|op| matches!(op, ClientOp::Unsubscribe { run_id } if run_id == "run_0")));
    assert!(p.closed.is_empty(), "two runs still follow the socket");
    assert_eq!(p.sock.attached(), 2);
    p.engines[1].close(p.now);
    p.engines[2].close(p.now);
    p.pump();
    assert_eq!(p.closed, vec![1]);
    assert_eq!(p.sock.state(), SocketState::Idle);
    assert_eq!(p.sock.poll_timeout(), None);
}

#[test]
fn a_refusing_server_sees_one_paced_attempt_at_a_time_not_one_per_run() {
    let mut p = Page::new(50);
    p.start();
    // Every socket is refused before it opens, for a minute.
    let mut refused = 0;
    while p.now < 60_000.0 {
        if let Some(conn) = p.pending_open.take() {
            p.live = Some(conn);
            p.drop_socket();
            refused += 1;
        }
        let next = p.now + 50.0;
        p.run_until(next);
    }
    // The socket's own backoff (500 ms doubling to 20 s, jitter 0.5) paces
    // the attempts: about a dozen in a minute, whatever the number of runs.
    assert!(refused <= 12, "{refused} sockets in a minute");
    assert_eq!(p.sock.opens, refused + u64::from(p.pending_open.is_some()));
    assert!(p
        .engines
        .iter()
        .all(|e| e.status(p.now).connection != Connection::Failed));
}

#[test]
fn heartbeat_is_watched_per_socket() {
    let mut p = Page::new(4);
    p.start();
    p.accept();
    // The server stops answering (no pong): one socket timeout drops all four runs.
    let conn = p.live.take().unwrap();
    p.run_until(26_000.0);
    assert!(p.closed.contains(&conn));
    // …and they come back together on one new socket.
    assert_eq!(p.sock.opens, 2);
    assert!(p
        .engines
        .iter()
        .all(|e| e.metrics().terminations.get("heartbeat_timeout") == Some(&1)));
}

/// A send's refusal concerns the stream that sent it: on a shared socket the
/// error reaches every run (it names no run), and only the engine holding
/// the send acts on it. (Found by a review: every run's `lastError` said
/// "message not sent".)
#[test]
fn a_refused_send_fails_only_the_stream_that_sent_it() {
    let mut p = Page::new(3);
    p.server.refuse_sends = true;
    p.start();
    p.accept();
    p.engines[1].send(p.now, "hi").unwrap();
    p.pump();
    let failed = |e: &Engine| {
        e.state()
            .messages
            .iter()
            .any(|m| m.status == runstream::core::state::MessageStatus::Failed)
    };
    assert!(failed(&p.engines[1]), "the sender's message failed");
    assert!(p.engines[1]
        .status(p.now)
        .last_error
        .is_some_and(|e| e.contains("content too long")));
    for i in [0, 2] {
        let e = &p.engines[i];
        assert_eq!(e.status(p.now).last_error, None, "run {i}");
        assert!(!failed(e), "run {i}");
        assert_eq!(e.status(p.now).connection, Connection::Open, "run {i}");
    }
}

/// API.md `heartbeatTimeoutMs`: "not enforced while the tab is hidden,
/// re-checked when it is visible": a hidden page's socket on a silent server
/// holds for minutes (throttled timers would otherwise drop it every time
/// they wake), and is checked at once when the page comes back.
#[test]
fn a_hidden_page_does_not_watch_the_heartbeat_and_rechecks_when_visible() {
    let mut p = Page::new(3);
    p.sock.set_visible(p.now, false);
    p.start();
    p.accept();
    let conn = p.live.take().unwrap();
    p.run_until(180_000.0);
    assert!(!p.closed.contains(&conn), "dropped while hidden");
    assert_eq!(p.sock.opens, 1);
    // Visible: a ping at once, and the socket is dropped when no frame
    // answers it within the re-check grace.
    let pings = p.sock.pings;
    p.sock.set_visible(p.now, true);
    p.pump();
    assert!(
        !p.closed.contains(&conn),
        "dropped before the probe could be answered"
    );
    assert_eq!(
        p.sock.pings,
        pings + 1,
        "no ping at once on becoming visible"
    );
    p.run_until(p.now + RECHECK_GRACE_MS);
    assert!(p.closed.contains(&conn), "re-checked when visible");
    assert!(p
        .engines
        .iter()
        .all(|e| e.metrics().terminations.get("heartbeat_timeout") == Some(&1)));
}

/// The same sentence with `share: "tabs"`: a leading tab in the background
/// watches its heartbeat while a follower's page is visible. On a shared
/// socket the run says so (`set_run_watched`), and only while it is attached
/// and watched does the hidden page's socket enforce the timeout. (Found by a
/// review: only the leader page's own visibility reached the socket, so a
/// half-open socket was never timed out while the user watched a follower.)
#[test]
fn a_run_watched_from_another_page_keeps_the_heartbeat_on_in_a_hidden_page() {
    let mut p = Page::new(3);
    p.sock.set_visible(p.now, false);
    p.start();
    p.accept();
    p.sock.set_run_watched(p.now, 1, true);
    let conn = p.live.take().unwrap();
    p.run_until(26_000.0);
    assert!(
        p.closed.contains(&conn),
        "a silent socket is dropped for the watched run"
    );
    assert_eq!(p.sock.opens, 2);
    // Back on a new socket; nobody watches any more: no more timeouts.
    p.accept();
    p.sock.set_run_watched(p.now, 1, false);
    let conn = p.live.take().unwrap();
    p.run_until(p.now + 120_000.0);
    assert!(!p.closed.contains(&conn));
    // Watched again, after 120 s of silence: re-checked at once (a ping,
    // unanswered within the grace).
    p.sock.set_run_watched(p.now, 2, true);
    p.pump();
    p.run_until(p.now + RECHECK_GRACE_MS);
    assert!(
        p.closed.contains(&conn),
        "watched again: re-checked at once"
    );
}

/// "Quiet is healthy … it never churns" with "re-checked when it is
/// visible": in a hidden tab the browser throttles the socket's own ping
/// timer (to once a minute after 5 minutes in Chromium), so the last pong
/// can be far older than `heartbeatTimeoutMs` when the page comes back
/// although the server is there. The re-check asks it (a ping) instead of
/// dropping a healthy socket and every run on it. (Found by a review: each
/// return to a long-hidden tab resubscribed and replayed every run.)
#[test]
fn a_healthy_socket_whose_pings_were_throttled_while_hidden_survives_becoming_visible() {
    let mut p = Page::new(3);
    p.start();
    p.accept();
    p.log(0, 2);
    let conn = p.live.unwrap();
    p.sock.set_visible(p.now, false);
    p.pump();
    // Hidden for 6 minutes with throttled timers: nothing fires, no ping goes out.
    p.now += 360_000.0;
    let pings = p.pings();
    p.sock.set_visible(p.now, true);
    p.pump();
    assert_eq!(p.pings(), pings + 1, "the re-check pings the server");
    // The server answered at once (the fake server's pong is delivered in pump).
    p.run_until(p.now + 60_000.0);
    assert!(
        !p.closed.contains(&conn),
        "a healthy socket was dropped on becoming visible"
    );
    assert_eq!(p.sock.opens, 1);
    for e in &p.engines {
        assert!(
            e.metrics().terminations.is_empty(),
            "{:?}",
            e.metrics().terminations
        );
        assert_eq!(e.status(p.now).connection, Connection::Open);
    }
}

/// PROTOCOL §2b: an `error` carries a `run_id` and, for a send, its
/// `client_request_id`. A send's refusal that names the run the session's
/// messages go to (not one any stream of this page follows) still answers
/// the send: it reaches the streams (only the sender acts on it), as an
/// `ack` naming another run does. (It was dropped as a late frame of an
/// unsubscribed run, and the send stayed "sending" until the socket dropped.)
#[test]
fn a_refused_send_naming_a_run_nobody_follows_still_reaches_its_sender() {
    let mut p = Page::new(3);
    p.server.refuse_sends = true;
    p.server.refusal = Some(("forbidden", Some("chat_of_another_session")));
    p.start();
    p.accept();
    p.engines[1].send(p.now, "hi").unwrap();
    p.pump();
    let status = |e: &Engine| e.state().messages.first().map(|m| m.status);
    assert_eq!(
        status(&p.engines[1]),
        Some(runstream::core::state::MessageStatus::Failed)
    );
    assert_eq!(p.sock.unroutable, 0);
    for i in [0, 2] {
        let e = &p.engines[i];
        assert_eq!(e.status(p.now).last_error, None, "run {i}");
        assert_eq!(e.status(p.now).connection, Connection::Open, "run {i}");
    }
}

/// PROTOCOL §7: a refused subscribe (or a token that expires) is answered
/// "for that run alone". On one socket: `forbidden` fails its run only;
/// `unauthorized` makes its run alone subscribe again from its cursor (its
/// `headers` resolved again on its re-attach), on the same socket; the
/// other runs are untouched.
#[test]
fn a_run_level_error_concerns_its_run_alone() {
    let mut p = Page::new(3);
    for i in 0..3 {
        p.server.logged.insert(run_id(i), 2);
    }
    p.start();
    p.accept();
    let subscribes = |p: &Page, rid: &str| -> Vec<Option<u64>> {
        p.frames_on(1)
            .filter_map(|op| match op {
                ClientOp::Subscribe {
                    run_id,
                    last_event_id,
                    ..
                } if run_id == rid => Some(*last_event_id),
                _ => None,
            })
            .collect()
    };
    assert!((0..3).all(|i| p.engines[i].cursor() == 2));
    for (rid, code) in [(run_id(1), "forbidden"), (run_id(2), "unauthorized")] {
        p.server
            .outbox
            .push(json!({"op": "error", "run_id": rid, "code": code, "message": "no"}).to_string());
    }
    p.pump();
    assert_eq!(p.engines[1].status(p.now).connection, Connection::Failed);
    assert_eq!(
        subscribes(&p, &run_id(2)),
        vec![None, Some(2)],
        "run 2 subscribes again from its cursor"
    );
    assert_eq!(p.engines[2].status(p.now).connection, Connection::Open);
    assert_eq!(subscribes(&p, &run_id(0)), vec![None]);
    assert_eq!(p.engines[0].status(p.now).connection, Connection::Open);
    assert!(p.engines[0].metrics().terminations.is_empty());
    assert_eq!(p.sock.opens, 1, "one socket throughout");
    assert!(matches!(p.sock.state(), SocketState::Open { .. }));
    // Run 1 failed for good: it never subscribes again.
    p.run_until(120_000.0);
    assert_eq!(subscribes(&p, &run_id(1)), vec![None]);
}

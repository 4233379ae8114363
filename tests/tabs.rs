//! Native tests of `share: "tabs"` (API.md "Sharing connections") through the
//! engine's public API: several engines on one simulated BroadcastChannel,
//! one simulated server, a virtual clock.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use runstream::core::engine::{Action, Config, Connection, Engine, Ms, Sharing, Transport};
use runstream::core::tabs::{Body, LeaderStatus, Message, MAGIC};
use runstream::core::wire::ServerOp;
use serde_json::json;

const KEY: &str = "runstream-tabs|fetch|false|http://x/api/stream/runs/run_T";

fn share_cfg() -> Config {
    let mut c = cfg();
    c.share_key = Some(KEY.into());
    c
}

/// A message as another tab `from` would post it.
fn msg(from: &str, to: Option<&str>, body: Body) -> String {
    Message {
        from: from.into(),
        to: to.map(str::to_owned),
        body,
    }
    .encode(KEY)
}

fn relayed(text: &str) -> String {
    msg("leader1", None, Body::Event(text.to_owned()))
}

fn broadcasts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn decoded(actions: &[Action]) -> Vec<Message> {
    broadcasts(actions)
        .iter()
        .map(|t| Message::decode(t, KEY, 1 << 22).unwrap())
        .collect()
}

fn follower(c: Config, seed: u64) -> Engine {
    let mut e = Engine::new(c, [seed, 7], None);
    e.start(0.0);
    e
}

/// Several tabs on one channel: every broadcast reaches every other tab; the
/// server is driven by the tests. Records every connect per tab.
struct Tabs {
    tabs: Vec<Engine>,
    now: Ms,
    connects: Vec<(usize, u64, u64)>,
    snapshot_fetches: usize,
    /// Events the server has logged (what a snapshot covers).
    logged: usize,
    log: Vec<String>,
}

impl Tabs {
    fn new(n: usize, log: Vec<String>, c: &Config) -> Self {
        let tabs = (0..n).map(|i| follower(c.clone(), i as u64 + 1)).collect();
        Self {
            tabs,
            now: 10.0,
            connects: Vec::new(),
            snapshot_fetches: 0,
            logged: 0,
            log,
        }
    }

    /// Delivers every broadcast until the channel is quiet.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut posted: Vec<(usize, String)> = Vec::new();
            for (i, e) in self.tabs.iter_mut().enumerate() {
                e.relay_status(self.now);
                while let Some(a) = e.poll_action() {
                    match a {
                        Action::Broadcast { text } => posted.push((i, text)),
                        Action::Connect { conn, resume_from } => {
                            self.connects.push((i, conn, resume_from))
                        }
                        Action::RequestFrame => {
                            e.flush(self.now);
                        }
                        Action::FetchSnapshot => {
                            self.snapshot_fetches += 1;
                            let n = self.logged;
                            let body = json!({"run_id": RUN, "event_id": n,
                                "state": reference(&self.log, n).to_wire()})
                            .to_string();
                            e.handle_snapshot(self.now, Ok(&body));
                        }
                        _ => {}
                    }
                }
            }
            if posted.is_empty() {
                return;
            }
            self.now += 1.0;
            for (from, text) in posted {
                for (i, e) in self.tabs.iter_mut().enumerate() {
                    if i != from {
                        e.handle_tab_text(self.now, &text);
                    }
                }
            }
        }
        panic!("the channel never went quiet");
    }

    /// The last connect of tab `i`.
    fn connect_of(&self, i: usize) -> Option<(u64, u64)> {
        self.connects
            .iter()
            .rev()
            .find(|(t, ..)| *t == i)
            .map(|(_, c, f)| (*c, *f))
    }

    /// The server serves log events `from..to` on tab `i`'s connection `conn`.
    fn serve(&mut self, i: usize, conn: u64, from: usize, to: usize) {
        self.logged = self.logged.max(to);
        for text in &self.log[from..to] {
            self.now += 1.0;
            self.tabs[i].handle_bytes(self.now, conn, &sse_frame(text));
        }
        self.pump();
    }

    /// Runs every tab's timers up to `until`, pumping the channel.
    fn run_until(&mut self, until: Ms) {
        loop {
            let next = self
                .tabs
                .iter()
                .filter_map(Engine::poll_timeout)
                .reduce(Ms::min);
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    for e in &mut self.tabs {
                        if e.poll_timeout().is_some_and(|d| d <= self.now) {
                            e.handle_timeout(self.now);
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
    }
}

#[test]
fn following_mode_never_connects() {
    let log = gen_log(3, 3);
    let mut e = follower(share_cfg(), 1);
    let acts = drain(&mut e);
    assert!(connect_of(&acts).is_none(), "{acts:?}");
    // It asks the leader for everything after its cursor (and says its page is visible).
    let asks: Vec<_> = decoded(&acts).into_iter().map(|m| m.body).collect();
    assert_eq!(asks, vec![Body::Ask(0), Body::Visible(true)]);
    assert_eq!(e.status(0.0).sharing, Sharing::Follower);
    // Relayed events, gaps, the backoff's timers, online/offline, retryNow:
    // nothing makes a follower connect.
    let mut all = Vec::new();
    e.handle_tab_text(1.0, &relayed(&log[0]));
    e.handle_tab_text(2.0, &relayed(&log[3]));
    e.handle_online(3.0, false);
    e.handle_online(4.0, true);
    e.retry_now(5.0);
    e.handle_visibility(6.0, false);
    e.handle_visibility(7.0, true);
    all.extend(drain(&mut e));
    all.extend(run_until(&mut e, 600_000.0));
    assert!(connect_of(&all).is_none(), "{all:?}");
    assert_eq!(e.status(600_000.0).sharing, Sharing::Follower);
}

#[test]
fn relayed_envelopes_dedupe_and_order_like_network_ones() {
    let log = gen_log(5, 4);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    // Out of order, each twice.
    let mut order: Vec<usize> = (0..log.len()).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    for &i in &order {
        e.handle_tab_text(1.0, &relayed(&log[i]));
        e.handle_tab_text(1.0, &relayed(&log[i]));
    }
    assert_eq!(e.state(), &reference(&log, log.len()));
    let m = e.metrics();
    assert_eq!(m.events_applied, log.len() as u64);
    assert_eq!(m.duplicates_dropped, log.len() as u64);
    assert!(m.out_of_order > 0);
    assert_eq!(m.protocol_errors, 0);
    // run.completed relayed: the follower is finished too.
    assert_eq!(e.status(2.0).connection, Connection::Closed);
}

#[test]
fn a_relayed_envelope_of_another_run_is_rejected_and_counted() {
    let log = gen_log(5, 2);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    let foreign = envelope(2, "worker.started", json!({"worker_id": "intruder"}))
        .replace("run_T", "run_other");
    e.handle_tab_text(2.0, &relayed(&foreign));
    assert_eq!(e.cursor(), 1);
    assert!(e.state().workers.iter().all(|w| w.worker_id != "intruder"));
    assert_eq!(e.metrics().protocol_errors, 1);
    assert_eq!(
        e.metrics().protocol_errors_by_kind.get("foreign_run"),
        Some(&1)
    );
    // Garbage in an event body is a protocol error like on the network.
    e.handle_tab_text(3.0, &relayed("{not json"));
    assert_eq!(e.metrics().protocol_errors, 2);
    e.handle_tab_text(4.0, &relayed(&log[1]));
    assert_eq!(e.cursor(), 2);
}

#[test]
fn bad_channel_messages_are_ignored_and_counted() {
    let log = gen_log(5, 2);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    let before = e.state().clone();
    let ok = relayed(&log[1]);
    let bad = [
        ok.replace(MAGIC, "runstream-tabs/9"),
        ok.replace(KEY, "runstream-tabs|fetch|false|http://x/other"),
        "hello".to_owned(),
        format!("{MAGIC}\n{KEY}\nleader1\n*\nteleport\n{}", log[1]),
        format!("{MAGIC}\n{KEY}\nLEADER!\n*\nevent\n{}", log[1]),
        msg("leader1", None, Body::Event("x".repeat(2 << 20))),
    ];
    for (i, text) in bad.iter().enumerate() {
        e.handle_tab_text(2.0 + i as f64, text);
    }
    e.handle_tab_unreadable(10.0);
    assert_eq!(e.state(), &before);
    assert_eq!(e.metrics().channel_errors, bad.len() as u64 + 1);
    assert_eq!(e.metrics().protocol_errors, 0);
    // Counted, not shown: `lastError` stays what the connection says.
    assert_eq!(e.status(11.0).last_error, None);
    // A message for another tab is not ours: ignored, not an error.
    e.handle_tab_text(
        12.0,
        &msg("leader1", Some("zz9"), Body::Event(log[1].clone())),
    );
    assert_eq!(e.cursor(), 1);
    assert_eq!(e.metrics().channel_errors, bad.len() as u64 + 1);
    // Still following fine.
    e.handle_tab_text(13.0, &ok);
    assert_eq!(e.cursor(), 2);
}

#[test]
fn promotion_connects_from_the_followers_own_cursor() {
    let log = gen_log(5, 3);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    for text in &log[..6] {
        e.handle_tab_text(1.0, &relayed(text));
    }
    assert_eq!(e.cursor(), 6);
    e.handle_lead(2.0);
    let acts = drain(&mut e);
    assert_eq!(connect_of(&acts).map(|c| c.1), Some(6));
    assert_eq!(e.status(2.0).sharing, Sharing::Leader);
    assert_eq!(e.status(2.0).connection, Connection::Connecting);
    // The leader relays what it receives from the network, and no longer
    // applies relays of others (its own connection resumes from its cursor).
    let (conn, _) = connect_of(&acts).unwrap();
    e.handle_response(3.0, conn, 200, None, true);
    e.relay_status(3.0);
    e.handle_bytes(4.0, conn, &sse_frame(&log[6]));
    let out = decoded(&drain(&mut e));
    assert!(out.iter().any(|m| m.body == Body::Event(log[6].clone())));
    assert!(out
        .iter()
        .any(|m| matches!(&m.body, Body::Status(s) if s.connection == Connection::Open)));
    e.handle_tab_text(5.0, &relayed(&log[7]));
    assert_eq!(e.cursor(), 7);
}

#[test]
fn a_gap_while_following_asks_the_leader_instead_of_reconnecting() {
    let log = gen_log(9, 3);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    e.handle_tab_text(2.0, &relayed(&log[3]));
    assert_eq!(e.buffered(), 1);
    let acts = run_until(&mut e, 2.0 + 1500.0);
    assert!(connect_of(&acts).is_none());
    assert!(!acts.iter().any(|a| matches!(a, Action::Disconnect { .. })));
    let asks: Vec<_> = decoded(&acts).into_iter().map(|m| m.body).collect();
    assert_eq!(asks, vec![Body::Ask(1)]);
    assert_eq!(e.metrics().reconnects, 0);
    // The leader's answer fills the gap.
    for text in &log[1..3] {
        e.handle_tab_text(
            1600.0,
            &msg("leader1", Some(e.tab_id()), Body::Event(text.clone())),
        );
    }
    assert_eq!(e.cursor(), 4);
    assert_eq!(e.buffered(), 0);
}

#[test]
fn the_leader_serves_a_late_follower_from_its_ring() {
    let log = gen_log(4, 3);
    let mut net = Tabs::new(1, log.clone(), &share_cfg());
    net.tabs[0].handle_lead(net.now);
    net.pump();
    let (conn, from) = net.connect_of(0).unwrap();
    assert_eq!(from, 0);
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    net.serve(0, conn, 0, 12);
    // A late tab joins: it asks, the leader replays from its ring.
    net.tabs.push(follower(share_cfg(), 9));
    net.pump();
    assert_eq!(net.tabs[1].cursor(), 12);
    assert_eq!(net.tabs[1].status(net.now).connection, Connection::Open);
    assert_eq!(net.tabs[1].status(net.now).sharing, Sharing::Follower);
    net.serve(0, conn, 12, log.len());
    for e in &net.tabs {
        assert_eq!(e.state(), &reference(&log, log.len()));
    }
    assert_eq!(net.connects.len(), 1, "{:?}", net.connects);
    assert_eq!(net.snapshot_fetches, 0);
}

#[test]
fn a_miss_is_repaired_by_the_snapshot_or_a_catch_up_connection() {
    let log = gen_log(4, 3);
    for with_snapshot in [true, false] {
        let mut c = share_cfg();
        c.has_snapshot_url = with_snapshot;
        let mut stored = Engine::new(c.clone(), [3, 3], None);
        // The leader resumed at cursor 10 (its own stored cursor): its ring
        // cannot serve a follower at 0.
        for text in &log[..10] {
            stored.handle_tab_text(0.0, &relayed(text));
        }
        let record = stored.storage_record();
        let mut leader = Engine::new(c.clone(), [4, 4], Some(&record));
        leader.start(0.0);
        let mut net = Tabs::new(0, log.clone(), &c);
        net.tabs.push(leader);
        net.tabs[0].handle_lead(net.now);
        net.pump();
        let (conn, from) = net.connect_of(0).unwrap();
        assert_eq!(from, 10);
        net.tabs[0].handle_response(net.now, conn, 200, None, true);
        net.serve(0, conn, 10, 20);
        net.tabs.push(follower(c.clone(), 9));
        net.pump();
        if with_snapshot {
            assert_eq!(net.snapshot_fetches, 1);
            assert_eq!(net.tabs[1].cursor(), 20);
            assert_eq!(net.connects.len(), 1);
        } else {
            // Its own catch-up connection, from its cursor.
            assert_eq!(net.snapshot_fetches, 0);
            let (c2, from2) = net.connect_of(1).unwrap();
            assert_eq!(from2, 0);
            net.tabs[1].handle_response(net.now, c2, 200, None, true);
            net.serve(1, c2, 0, 20);
            assert_eq!(net.tabs[1].cursor(), 20);
            // Caught up with the leader: its own connection ends.
            let m = net.tabs[1].metrics();
            assert_eq!(m.terminations.get("shared"), Some(&1), "{m:?}");
            assert_eq!(net.tabs[1].status(net.now).sharing, Sharing::Follower);
        }
        net.serve(0, conn, 20, log.len());
        for e in &net.tabs {
            assert_eq!(e.state(), &reference(&log, log.len()));
        }
    }
}

#[test]
fn followers_show_the_leaders_connection_and_count_its_wait_down() {
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    assert_eq!(e.status(0.0).connection, Connection::Connecting);
    let s = LeaderStatus {
        connection: Connection::Reconnecting,
        attempt: 2,
        retry_in_ms: Some(3000.0),
        last_error: Some("HTTP 503".into()),
    };
    e.handle_tab_text(100.0, &msg("leader1", None, Body::Status(s)));
    let st = e.status(100.0);
    assert_eq!(st.connection, Connection::Reconnecting);
    assert_eq!((st.attempt, st.retry_in_ms), (2, Some(3000.0)));
    assert_eq!(st.last_error.as_deref(), Some("HTTP 503"));
    // The countdown is re-rendered once a second on this tab's clock.
    drain(&mut e);
    e.flush(100.0);
    assert_eq!(e.poll_timeout(), Some(1100.0));
    e.handle_timeout(1100.0);
    assert_eq!(e.status(1100.0).retry_in_ms, Some(2000.0));
    assert!(drain(&mut e).contains(&Action::RequestFrame));
}

#[test]
fn a_followers_retry_now_skips_the_leaders_wait() {
    // API.md `retryNow()`: "skip the backoff wait". A follower has no
    // connection of its own, so the leader's wait is the one to skip.
    let mut leader = follower(share_cfg(), 1);
    drain(&mut leader);
    leader.handle_lead(1.0);
    let (conn, _) = connect_of(&drain(&mut leader)).unwrap();
    leader.handle_response(2.0, conn, 503, Some(20_000.0), false);
    drain(&mut leader);

    let mut f = follower(share_cfg(), 2);
    drain(&mut f);
    f.retry_now(3.0);
    let out = drain(&mut f);
    assert!(
        connect_of(&out).is_none(),
        "a follower never connects: {out:?}"
    );
    let asks: Vec<_> = broadcasts(&out)
        .into_iter()
        .filter(|t| Message::decode(t, KEY, 1 << 22).unwrap().body == Body::Retry)
        .collect();
    assert_eq!(asks.len(), 1, "{out:?}");

    leader.handle_tab_text(3.0, &asks[0]);
    assert!(
        connect_of(&drain(&mut leader)).is_some(),
        "the leader reconnects at once instead of waiting 20 s"
    );
    // A retry is for the leader: a follower ignores another follower's.
    f.handle_tab_text(3.0, &asks[0]);
    assert!(connect_of(&drain(&mut f)).is_none());
}

#[test]
fn a_leader_reports_its_status_when_it_changes() {
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_lead(1.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.relay_status(1.0);
    e.relay_status(1.0);
    let first = decoded(&drain(&mut e));
    assert_eq!(first.len(), 1, "once per change: {first:?}");
    e.handle_response(2.0, conn, 503, Some(2000.0), false);
    e.relay_status(2.0);
    let out = decoded(&drain(&mut e));
    let st = out
        .iter()
        .find_map(|m| match &m.body {
            Body::Status(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(st.connection, Connection::Reconnecting);
    assert_eq!(st.retry_in_ms, Some(2000.0));
    assert_eq!(st.last_error.as_deref(), Some("HTTP 503"));
}

#[test]
fn takeover_loses_nothing_and_shows_nothing_twice() {
    let log = gen_log(21, 4);
    let mut net = Tabs::new(3, log.clone(), &share_cfg());
    net.pump();
    net.tabs[0].handle_lead(net.now);
    net.pump();
    let (conn, _) = net.connect_of(0).unwrap();
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    net.serve(0, conn, 0, 9);
    // The last relay of the old leader is lost (it closed mid-post): tab 2 misses event 10.
    net.logged = 10;
    net.tabs[0].handle_bytes(net.now, conn, &sse_frame(&log[9]));
    let lost = drain(&mut net.tabs[0]);
    for text in broadcasts(&lost) {
        net.tabs[1].handle_tab_text(net.now, &text);
    }
    net.tabs[0].close(net.now);
    // The next queued tab is granted the lock: it connects from its own cursor.
    net.tabs[1].handle_lead(net.now);
    net.pump();
    let (c1, from) = net.connect_of(1).unwrap();
    assert_eq!(from, 10);
    net.tabs[1].handle_response(net.now, c1, 200, None, true);
    net.serve(1, c1, 10, 16);
    // Tab 2 (at 9) heard the new leader's cursor (10) as it was elected and
    // repaired the lost relay from the snapshot endpoint at once.
    assert_eq!(net.tabs[2].cursor(), 16);
    assert_eq!(net.snapshot_fetches, 1);
    net.run_until(net.now + 2000.0);
    assert_eq!(net.tabs[2].cursor(), 16);
    net.serve(1, c1, 16, log.len());
    for e in &net.tabs[1..] {
        assert_eq!(e.state(), &reference(&log, log.len()));
        assert_eq!(e.metrics().protocol_errors, 0);
    }
    // One connection per leader, none from a follower.
    let tabs: Vec<usize> = net.connects.iter().map(|c| c.0).collect();
    assert_eq!(tabs, vec![0, 1]);
}

#[test]
fn a_websocket_follower_sends_on_a_socket_of_its_own_without_subscribing() {
    let mut c = share_cfg();
    c.transport = Transport::WebSocket;
    let mut e = follower(c, 1);
    drain(&mut e);
    let crid = e.send(1.0, "hello").unwrap();
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_ws_open(2.0, conn, Vec::new());
    let acts = drain(&mut e);
    let frames: Vec<&String> = acts
        .iter()
        .filter_map(|a| match a {
            Action::WsSend { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(frames[0].contains("\"op\":\"send\""), "{frames:?}");
    assert!(!frames[0].contains("subscribe"));
    let ack = ServerOp::decode(&format!(
        r#"{{"op":"ack","client_request_id":"{crid}","message_id":"m1","run_id":"run_T"}}"#
    ))
    .unwrap();
    e.handle_ws_op(3.0, conn, ack);
    assert!(drain(&mut e).contains(&Action::Disconnect { conn }));
    assert_eq!(e.status(3.0).sharing, Sharing::Follower);
}

#[test]
fn stepping_down_ends_the_connection_and_follows() {
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_lead(1.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_response(2.0, conn, 200, None, true);
    e.handle_step_down(3.0);
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::Disconnect { conn }));
    assert_eq!(e.status(3.0).sharing, Sharing::Follower);
    assert!(connect_of(&run_until(&mut e, 100_000.0)).is_none());
    // Granted again later: connects again.
    e.handle_lead(100_001.0);
    assert!(connect_of(&drain(&mut e)).is_some());
}

#[test]
fn a_follower_back_from_the_page_cache_asks_for_what_it_missed() {
    let log = gen_log(5, 2);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    drain(&mut e);
    e.handle_page_resumed(2.0);
    let asks: Vec<_> = decoded(&drain(&mut e))
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(asks, vec![Body::Ask(1), Body::Visible(true)]);
    // A solo stream has nobody to ask.
    let mut solo = Engine::new(cfg(), [1, 1], None);
    solo.start(0.0);
    drain(&mut solo);
    solo.handle_page_resumed(1.0);
    assert!(broadcasts(&drain(&mut solo)).is_empty());
}

proptest::proptest! {
    /// Whatever another script posts on the channel, a follower never panics,
    /// and what is not a valid message changes nothing but the error count.
    #[test]
    fn arbitrary_channel_text_is_counted_or_valid(
        cut in 0usize..200,
        noise in "[ -~\n]{0,64}",
        raw in "\\PC{0,200}",
    ) {
        let log = gen_log(5, 2);
        let mut e = follower(share_cfg(), 1);
        drain(&mut e);
        e.handle_tab_text(1.0, &relayed(&log[0]));
        let before = e.state().clone();
        let valid = relayed(&log[1]);
        let mut mangled: String = valid.chars().take(cut).collect();
        mangled.push_str(&noise);
        for text in [mangled, raw] {
            let errors = e.metrics().channel_errors;
            let ok = Message::decode(&text, KEY, 1 << 21).is_ok();
            e.handle_tab_text(2.0, &text);
            if !ok {
                proptest::prop_assert_eq!(e.metrics().channel_errors, errors + 1);
                proptest::prop_assert_eq!(e.state(), &before);
            }
        }
    }
}

/// Drives one engine up to `until`: runs its timers, and answers each of its
/// connects with a 200 and the `avail` events after the resume cursor (a
/// server whose log holds only those). Returns every action.
fn drive_alone(e: &mut Engine, mut now: Ms, until: Ms, avail: &[(u64, String)]) -> Vec<Action> {
    let mut all = Vec::new();
    loop {
        let acts = drain(e);
        let connect = connect_of(&acts);
        all.extend(acts);
        if let Some((conn, from)) = connect {
            now += 1.0;
            e.handle_response(now, conn, 200, None, true);
            for (id, text) in avail.iter().filter(|(id, _)| *id > from) {
                let _ = id;
                now += 1.0;
                e.handle_bytes(now, conn, &sse_frame(text));
            }
            continue;
        }
        match e.poll_timeout() {
            Some(t) if t <= until => {
                now = now.max(t);
                e.handle_timeout(now);
            }
            _ => return all,
        }
    }
}

/// A stored record of an engine that applied `log[..n]`.
fn stored_at(c: &Config, log: &[String], n: usize) -> String {
    let mut stored = Engine::new(c.clone(), [3, 3], None);
    for text in &log[..n] {
        stored.handle_tab_text(0.0, &relayed(text));
    }
    stored.storage_record()
}

#[test]
fn tabs_starting_together_converge_on_an_idle_run() {
    // Review item 1: asks sent while no tab leads are lost; the new leader
    // (resumed at its stored cursor 10, the run then idle) must still bring
    // the early follower up to its cursor. API.md: "every tab converges".
    let log = gen_log(31, 3);
    for with_snapshot in [true, false] {
        let mut c = share_cfg();
        c.has_snapshot_url = with_snapshot;
        let record = stored_at(&c, &log, 10);
        let mut leader = Engine::new(c.clone(), [4, 4], Some(&record));
        leader.start(0.0);
        let mut net = Tabs::new(0, log.clone(), &c);
        net.logged = 10;
        net.tabs.push(leader);
        net.tabs.push(follower(c.clone(), 9));
        // Both ask at once: nobody leads yet.
        net.pump();
        net.tabs[0].handle_lead(net.now);
        net.pump();
        let (conn, from) = net.connect_of(0).unwrap();
        assert_eq!(from, 10);
        net.tabs[0].handle_response(net.now, conn, 200, None, true);
        net.pump();
        net.run_until(net.now + 5000.0);
        if !with_snapshot {
            let (c2, from2) = net.connect_of(1).expect("a catch-up connection");
            assert_eq!(from2, 0);
            net.tabs[1].handle_response(net.now, c2, 200, None, true);
            net.serve(1, c2, 0, 10);
        }
        assert_eq!(net.tabs[1].cursor(), 10, "snapshot url: {with_snapshot}");
        assert_eq!(net.tabs[1].state(), &reference(&log, 10));
    }
}

#[test]
fn a_follower_catches_up_from_a_leader_whose_stored_run_is_finished() {
    // Review item 1: `handle_lead` does not connect for a finished run, so
    // nothing is relayed; a follower that asked before the election must
    // still converge on the finished state.
    let log = gen_log(32, 2);
    let mut c = share_cfg();
    c.has_snapshot_url = true;
    let record = stored_at(&c, &log, log.len());
    let mut leader = Engine::new(c.clone(), [4, 4], Some(&record));
    leader.start(0.0);
    let mut net = Tabs::new(0, log.clone(), &c);
    net.logged = log.len();
    net.tabs.push(follower(c.clone(), 9));
    net.tabs.push(leader);
    net.pump();
    net.tabs[1].handle_lead(net.now);
    net.pump();
    net.run_until(net.now + 5000.0);
    assert!(net.connects.is_empty(), "{:?}", net.connects);
    assert_eq!(net.tabs[0].state(), &reference(&log, log.len()));
}

#[test]
fn takeover_onto_an_idle_run_brings_a_tab_that_joined_meanwhile_up_to_date() {
    // Review item 1: a tab opened during the handover asks while no tab
    // leads; the run stays idle after the takeover.
    let log = gen_log(33, 3);
    let mut c = share_cfg();
    c.has_snapshot_url = false;
    let mut net = Tabs::new(2, log.clone(), &c);
    net.pump();
    net.tabs[0].handle_lead(net.now);
    net.pump();
    let (conn, _) = net.connect_of(0).unwrap();
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    net.serve(0, conn, 0, 8);
    net.tabs[0].close(net.now);
    net.pump();
    // A new tab opens before anyone leads.
    net.tabs.push(follower(c.clone(), 7));
    net.pump();
    net.tabs[1].handle_lead(net.now);
    net.pump();
    let (c1, from) = net.connect_of(1).unwrap();
    assert_eq!(from, 8);
    net.tabs[1].handle_response(net.now, c1, 200, None, true);
    net.pump();
    net.run_until(net.now + 5000.0);
    let (c2, from2) = net
        .connect_of(2)
        .expect("the new tab catches up on its own");
    assert_eq!(from2, 0);
    net.tabs[2].handle_response(net.now, c2, 200, None, true);
    net.serve(2, c2, 0, 8);
    assert_eq!(net.tabs[2].state(), &reference(&log, 8));
    // Caught up: its own connection ended.
    assert_eq!(net.tabs[2].metrics().terminations.get("shared"), Some(&1));
}

#[test]
fn a_gap_nobody_can_fill_is_skipped_by_a_follower_without_a_snapshot_url() {
    // Review item 2 / PROTOCOL §1: "never freezes and never resumes in a
    // loop: it skips the missing ids". Ids 2 and 3 exist nowhere.
    let log = gen_log(34, 2);
    let mut c = share_cfg();
    c.has_snapshot_url = false;
    let mut e = follower(c, 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    e.handle_tab_text(2.0, &relayed(&log[3]));
    e.handle_tab_text(3.0, &relayed(&log[4]));
    let avail: Vec<(u64, String)> = [(4, log[3].clone()), (5, log[4].clone())].into();
    let acts = drive_alone(&mut e, 3.0, 120_000.0, &avail);
    assert_eq!(e.metrics().gaps_skipped, 2, "{:?}", e.metrics());
    assert_eq!(e.cursor(), 5);
    // Its catch-up connection ended once it was no longer needed.
    let connects = acts
        .iter()
        .filter(|a| matches!(a, Action::Connect { .. }))
        .count();
    let ends = acts
        .iter()
        .filter(|a| matches!(a, Action::Disconnect { .. }))
        .count();
    assert!(connects <= 2, "{connects} connects");
    assert_eq!(connects, ends, "{acts:?}");
    assert_eq!(e.status(120_000.0).sharing, Sharing::Follower);
}

#[test]
fn a_failed_snapshot_after_a_miss_catches_up_instead_of_skipping() {
    // Review item 3: "losing and duplicating nothing". The server could
    // replay what the snapshot endpoint failed to give.
    let log = gen_log(35, 3);
    for held in [false, true] {
        let mut e = follower(share_cfg(), 1);
        drain(&mut e);
        if held {
            e.handle_tab_text(1.0, &relayed(&log[0]));
            e.handle_tab_text(1.0, &relayed(&log[4]));
        }
        e.handle_tab_text(2.0, &msg("leader1", Some(e.tab_id()), Body::Miss(12)));
        let acts = drain(&mut e);
        assert!(acts.contains(&Action::FetchSnapshot), "{acts:?}");
        e.handle_snapshot(3.0, Err("HTTP 503".into()));
        assert_eq!(e.metrics().gaps_skipped, 0, "held: {held}");
        let avail: Vec<(u64, String)> = log[..12]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.clone()))
            .collect();
        drive_alone(&mut e, 3.0, 60_000.0, &avail);
        assert_eq!(e.metrics().gaps_skipped, 0, "held: {held}");
        assert_eq!(e.state(), &reference(&log, 12), "held: {held}");
    }
}

#[test]
fn a_leader_that_skipped_or_was_given_a_snapshot_answers_older_asks_with_a_miss() {
    // Review item 10: the ring never held the ids a snapshot or a skip
    // covered; an ask from before them must be a miss, not an `end`.
    let log = gen_log(36, 3);
    let mut c = share_cfg();
    c.has_snapshot_url = false;
    let mut leader = follower(c, 1);
    drain(&mut leader);
    leader.handle_lead(1.0);
    drain(&mut leader);
    let avail: Vec<(u64, String)> = [1usize, 2, 3, 6, 7]
        .iter()
        .map(|&id| (id as u64, log[id - 1].clone()))
        .collect();
    drive_alone(&mut leader, 1.0, 120_000.0, &avail);
    assert_eq!(leader.metrics().gaps_skipped, 2);
    assert_eq!(leader.cursor(), 7);
    leader.handle_tab_text(200_000.0, &msg("late1", None, Body::Ask(3)));
    let out: Vec<Body> = decoded(&drain(&mut leader))
        .into_iter()
        .map(|m| m.body)
        .filter(|b| !matches!(b, Body::Status(_)))
        .collect();
    assert_eq!(out, vec![Body::Miss(7)]);
    // From the skip on, the ring serves again.
    leader.handle_tab_text(200_001.0, &msg("late1", None, Body::Ask(6)));
    let out: Vec<Body> = decoded(&drain(&mut leader))
        .into_iter()
        .map(|m| m.body)
        .filter(|b| !matches!(b, Body::Status(_)))
        .collect();
    // (The ring holds each arrival, replays included.)
    assert!(out.len() >= 2, "{out:?}");
    assert_eq!(out.last(), Some(&Body::End(7)));
    assert!(out[..out.len() - 1]
        .iter()
        .all(|b| *b == Body::Event(log[6].clone())));
}

#[test]
fn an_ignored_channel_message_does_not_touch_last_error() {
    // Review item 8: a stray message is counted and reported on the raw
    // event stream; `lastError` stays what the connection says.
    let mut leader = follower(share_cfg(), 1);
    drain(&mut leader);
    leader.handle_lead(1.0);
    let (conn, _) = connect_of(&drain(&mut leader)).unwrap();
    leader.handle_response(2.0, conn, 200, None, true);
    leader.relay_status(2.0);
    drain(&mut leader);
    leader.handle_tab_text(3.0, "garbage");
    leader.relay_status(3.0);
    assert_eq!(leader.metrics().channel_errors, 1);
    assert_eq!(leader.status(3.0).last_error, None);
    assert!(
        broadcasts(&drain(&mut leader)).is_empty(),
        "no status relayed for it"
    );
}

#[test]
fn a_tab_whose_lock_request_fails_connects_on_its_own() {
    // Review item 4 / API.md: "Where Web Locks or BroadcastChannel are
    // missing, each tab connects on its own" — also where they exist but
    // cannot be used (the request rejects, the channel cannot be opened).
    let log = gen_log(37, 2);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    e.handle_tab_text(1.0, &relayed(&log[1]));
    drain(&mut e);
    e.handle_share_unavailable(2.0);
    let acts = drain(&mut e);
    assert_eq!(connect_of(&acts).map(|c| c.1), Some(2), "{acts:?}");
    assert_eq!(e.status(2.0).sharing, Sharing::Solo);
    assert_eq!(e.status(2.0).connection, Connection::Connecting);
    // Solo from now on: the channel is not listened to, nothing is broadcast.
    e.handle_tab_text(3.0, &relayed(&log[2]));
    assert_eq!(e.cursor(), 2);
    assert!(broadcasts(&drain(&mut e)).is_empty());
    // Before `start()`: it connects at `start()`.
    let mut fresh = Engine::new(share_cfg(), [5, 5], None);
    fresh.handle_share_unavailable(0.0);
    fresh.start(1.0);
    let acts = drain(&mut fresh);
    assert!(connect_of(&acts).is_some());
    assert!(broadcasts(&acts).is_empty(), "no ask from a solo tab");
}

#[test]
fn a_string_too_long_for_the_channel_is_counted_without_being_read() {
    // Review item 9: the shell checks the length before copying the string.
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    let limit = e.tab_message_limit();
    assert!(limit > share_cfg().max_event_bytes);
    e.handle_tab_too_large(1.0, limit + 1);
    assert_eq!(e.metrics().channel_errors, 1);
    assert_eq!(e.status(1.0).last_error, None);
}

#[test]
fn a_follower_asks_again_when_another_tab_starts_leading() {
    // Review item 1: "followers re-ask when the leader's tab id changes".
    let log = gen_log(38, 2);
    let mut e = follower(share_cfg(), 1);
    drain(&mut e);
    e.handle_tab_text(1.0, &relayed(&log[0]));
    e.handle_tab_text(2.0, &relayed(&log[1]));
    assert!(broadcasts(&drain(&mut e)).is_empty());
    let s = LeaderStatus {
        connection: Connection::Open,
        attempt: 0,
        retry_in_ms: None,
        last_error: None,
    };
    e.handle_tab_text(3.0, &msg("leader2", None, Body::Status(s)));
    let asks: Vec<_> = decoded(&drain(&mut e))
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(asks, vec![Body::Ask(2), Body::Visible(true)]);
}

#[test]
fn a_hidden_leader_watches_the_heartbeat_while_a_follower_is_visible() {
    // Review item 7: the heartbeat watch is off in a hidden tab, and the
    // leader is usually a background tab. While a follower is visible the
    // leader enforces `heartbeatTimeoutMs` for it.
    let mut net = Tabs::new(2, gen_log(39, 2), &share_cfg());
    net.tabs[0].handle_visibility(net.now, false);
    net.pump();
    net.tabs[0].handle_lead(net.now);
    net.pump();
    let (conn, _) = net.connect_of(0).unwrap();
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    net.serve(0, conn, 0, 3);
    // The connection goes silent; tab 1 is visible.
    assert!(
        net.tabs[0].heartbeat_watched(),
        "watched for the visible follower"
    );
    let silent_from = net.now;
    net.run_until(silent_from + 30_000.0);
    let m = net.tabs[0].metrics();
    assert_eq!(m.terminations.get("heartbeat_timeout"), Some(&1), "{m:?}");
    assert!(net.connects.iter().filter(|c| c.0 == 0).count() >= 2);
    // Once no follower is visible, a hidden leader no longer watches.
    let (conn, _) = net.connect_of(0).unwrap();
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    net.tabs[1].handle_visibility(net.now, false);
    net.pump();
    assert!(!net.tabs[0].heartbeat_watched(), "no page watches any more");
    net.run_until(net.now + 100_000.0);
    let m = net.tabs[0].metrics();
    assert_eq!(m.terminations.get("heartbeat_timeout"), Some(&1), "{m:?}");
    // It becomes visible again: the leader re-checks at once (silent too long).
    net.tabs[1].handle_visibility(net.now, true);
    net.pump();
    let m = net.tabs[0].metrics();
    assert_eq!(m.terminations.get("heartbeat_timeout"), Some(&2), "{m:?}");
    // A visible follower that closes stops the watch too.
    net.run_until(net.now + 5_000.0);
    let (conn, _) = net.connect_of(0).unwrap();
    net.tabs[0].handle_response(net.now, conn, 200, None, true);
    assert_eq!(net.tabs[0].status(net.now).connection, Connection::Open);
    net.tabs[1].close(net.now);
    net.pump();
    net.run_until(net.now + 100_000.0);
    let m = net.tabs[0].metrics();
    assert_eq!(m.terminations.get("heartbeat_timeout"), Some(&2), "{m:?}");
}

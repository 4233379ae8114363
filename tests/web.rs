//! Browser tests (headless Chromium and Firefox, and WebKit under Xvfb, via `wasm-pack test`) of the
//! JS API against the reference server on loopback (`RUNSTREAM_SERVER`).
#![cfg(all(target_arch = "wasm32", feature = "web"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use gloo_timers::future::TimeoutFuture;
use js_sys::{Function, Reflect};
use runstream::web::RunStream;
use serde::Serialize;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// A self-re-arming requestAnimationFrame callback (counts frames).
type FrameLoop = Rc<RefCell<Option<Closure<dyn FnMut()>>>>;

fn server() -> &'static str {
    option_env!("RUNSTREAM_SERVER").unwrap_or("http://127.0.0.1:8787")
}

fn js(v: &Value) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap()
}

async fn request(method: &str, path: &str, body: Option<Value>) -> Value {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(&b.to_string()));
        let h = web_sys::Headers::new().unwrap();
        h.set("Content-Type", "application/json").unwrap();
        init.set_headers(&h);
    }
    let w = web_sys::window().unwrap();
    let resp: web_sys::Response =
        JsFuture::from(w.fetch_with_str_and_init(&format!("{}{path}", server()), &init))
            .await
            .unwrap()
            .dyn_into()
            .unwrap();
    let text = JsFuture::from(resp.text().unwrap())
        .await
        .unwrap()
        .as_string()
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn create_run(body: Value) -> String {
    request("POST", "/api/admin/runs", Some(body)).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn snapshot(s: &RunStream) -> Value {
    serde_wasm_bindgen::from_value(s.get_snapshot()).unwrap()
}

fn stream(run: &str, transport: &str, extra: Value) -> RunStream {
    let mut o = json!({
        "runId": run,
        "transport": transport,
        "url": format!("{}/api/stream/runs/{run}", server()),
        "wsUrl": format!("{}/api/ws", server()),
        "snapshotUrl": format!("{}/api/runs/{run}/snapshot", server()),
        "resume": "none",
    });
    if let (Some(o), Value::Object(e)) = (o.as_object_mut(), extra) {
        o.extend(e);
    }
    RunStream::new(js(&o)).unwrap()
}

/// Waits (polling) until `pred(snapshot)` or `ms` pass; returns the last snapshot.
async fn until(s: &RunStream, ms: u32, pred: impl Fn(&Value) -> bool) -> Value {
    let mut waited = 0;
    loop {
        let v = snapshot(s);
        if pred(&v) || waited >= ms {
            return v;
        }
        TimeoutFuture::new(25).await;
        waited += 25;
    }
}

fn closed(v: &Value) -> bool {
    v["status"]["connection"] == "closed" || v["status"]["connection"] == "failed"
}

async fn assert_matches_server(run: &str, v: &Value) {
    let snap = request("GET", &format!("/api/runs/{run}/snapshot"), None).await;
    assert_eq!(v["state"]["cursor"], snap["event_id"], "cursor");
    assert_eq!(v["state"]["status"], snap["state"]["status"]);
    let ws = v["state"]["workers"].as_array().unwrap();
    let sw = snap["state"]["workers"].as_array().unwrap();
    assert_eq!(ws.len(), sw.len(), "workers");
    for (a, b) in ws.iter().zip(sw) {
        assert_eq!(a["workerId"], b["worker_id"]);
        assert_eq!(a["status"], b["status"]);
        assert_eq!(
            a["tools"].as_array().unwrap().len(),
            b["tools"].as_array().unwrap().len()
        );
        for (ta, tb) in a["tools"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["tools"].as_array().unwrap())
        {
            assert_eq!(ta["status"], tb["status"]);
        }
    }
    assert_eq!(
        v["state"]["supervisor"]["completed"],
        snap["state"]["supervisor"]["completed"]
    );
}

async fn streams_to_completion(transport: &str) {
    let run = create_run(json!({"seed": 21, "workers": 4, "speed": 20})).await;
    let s = stream(&run, transport, json!({}));
    s.start();
    let v = until(&s, 15_000, closed).await;
    assert_eq!(v["status"]["connection"], "closed", "{transport}: {v}");
    assert_eq!(v["state"]["status"], "succeeded");
    assert_matches_server(&run, &v).await;
    assert_eq!(v["metrics"]["duplicatesDropped"], 0);
    assert_eq!(v["metrics"]["terminations"]["run_completed"], 1);
    s.close();
}

#[wasm_bindgen_test]
async fn fetch_streams_a_run_to_completion() {
    streams_to_completion("fetch").await;
}

#[wasm_bindgen_test]
async fn sse_streams_a_run_to_completion() {
    streams_to_completion("sse").await;
}

#[wasm_bindgen_test]
async fn websocket_streams_a_run_to_completion() {
    streams_to_completion("websocket").await;
}

async fn resumes_after_drops(transport: &str) {
    let run = create_run(json!({"seed": 4, "workers": 5, "speed": 40, "chaos": {"drop_every": 6, "dup_rate": 0.2, "seed": 4}})).await;
    let s = stream(&run, transport, json!({}));
    s.start();
    let v = until(&s, 20_000, closed).await;
    assert_eq!(v["status"]["connection"], "closed", "{transport}: {v}");
    assert_matches_server(&run, &v).await;
    let m = &v["metrics"];
    assert!(m["reconnects"].as_u64().unwrap() >= 2, "{m}");
    // Native EventSource reports a server close as an error event: it cannot tell the two apart.
    let ended = m["terminations"]["server_closed"].as_u64().unwrap_or(0)
        + m["terminations"]["network_error"].as_u64().unwrap_or(0);
    assert_eq!(Some(ended), m["reconnects"].as_u64(), "{m}");
    assert!(m["duplicatesDropped"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["eventsApplied"], v["state"]["cursor"]);
    s.close();
}

#[wasm_bindgen_test]
async fn fetch_resumes_after_server_drops_without_duplicates() {
    resumes_after_drops("fetch").await;
}

#[wasm_bindgen_test]
async fn sse_resumes_after_server_drops_without_duplicates() {
    resumes_after_drops("sse").await;
}

#[wasm_bindgen_test]
async fn websocket_resumes_after_server_drops_without_duplicates() {
    resumes_after_drops("websocket").await;
}

#[wasm_bindgen_test]
async fn refresh_resumes_from_the_stored_cursor() {
    let run = create_run(json!({"seed": 8, "workers": 6, "speed": 8})).await;
    let s = stream(&run, "fetch", json!({"resume": "session"}));
    s.start();
    let v = until(&s, 10_000, |v| {
        v["state"]["cursor"].as_u64().unwrap_or(0) >= 12
    })
    .await;
    let seen = v["state"]["cursor"].as_u64().unwrap();
    assert!(seen >= 12);
    // The page goes away (close persists), a new page starts a stream for the same run.
    s.close();
    drop(s);
    let s2 = stream(&run, "fetch", json!({"resume": "session"}));
    let restored = snapshot(&s2);
    assert!(
        restored["state"]["cursor"].as_u64().unwrap() >= seen,
        "{restored}"
    );
    s2.start();
    let v2 = until(&s2, 15_000, closed).await;
    assert_matches_server(&run, &v2).await;
    let applied = v2["metrics"]["eventsApplied"].as_u64().unwrap();
    let total = v2["state"]["cursor"].as_u64().unwrap();
    assert!(
        applied < total,
        "replayed only the tail: {applied} < {total}"
    );
    s2.close();
    web_sys::window()
        .unwrap()
        .session_storage()
        .unwrap()
        .unwrap()
        .clear()
        .unwrap();
}

#[wasm_bindgen_test]
async fn subscribers_fire_at_most_once_per_frame_and_stop_after_close() {
    let run = create_run(json!({"seed": 3, "workers": 12, "instant": true})).await;
    let s = stream(&run, "fetch", json!({}));
    let calls = Rc::new(Cell::new(0u32));
    let c2 = calls.clone();
    let cb = Closure::<dyn FnMut()>::new(move || c2.set(c2.get() + 1));
    let f: Function = cb.as_ref().unchecked_ref::<Function>().clone();
    let _unsub = s.subscribe(f);
    // Count animation frames over the same period.
    let frames = Rc::new(Cell::new(0u32));
    let tick: FrameLoop = Rc::new(RefCell::new(None));
    let (fr, t2) = (frames.clone(), tick.clone());
    *tick.borrow_mut() = Some(Closure::new(move || {
        fr.set(fr.get() + 1);
        if let Some(c) = t2.borrow().as_ref() {
            let _ = web_sys::window()
                .unwrap()
                .request_animation_frame(c.as_ref().unchecked_ref());
        }
    }));
    web_sys::window()
        .unwrap()
        .request_animation_frame(tick.borrow().as_ref().unwrap().as_ref().unchecked_ref())
        .unwrap();
    s.start();
    let v = until(&s, 10_000, closed).await;
    let applied = v["metrics"]["eventsApplied"].as_u64().unwrap() as u32;
    assert!(applied > 50);
    assert!(
        calls.get() <= frames.get() + 1,
        "{} calls for {} frames",
        calls.get(),
        frames.get()
    );
    assert!(
        calls.get() < applied,
        "batched: {} calls for {applied} events",
        calls.get()
    );
    // Same object until the next visible change.
    let a = s.get_snapshot();
    let b = s.get_snapshot();
    assert!(js_sys::Object::is(&a, &b));
    s.close();
    let after = calls.get();
    TimeoutFuture::new(300).await;
    assert_eq!(calls.get(), after);
    *tick.borrow_mut() = None;
}

#[wasm_bindgen_test]
async fn working_shows_after_two_seconds_without_tokens() {
    let session = format!("chat_{}", js_sys::Math::random().to_bits());
    let s = stream(
        &session,
        "fetch",
        json!({
            "sendUrl": format!("{}/api/chat/{session}/messages", server()),
            "url": format!("{}/api/stream/runs/{session}", server()),
        }),
    );
    // The chat run exists once the first message is sent; start streaming after that.
    let crid = s.send("please be slow").unwrap();
    let v = snapshot(&s);
    assert_eq!(v["state"]["messages"][0]["clientRequestId"], crid.as_str());
    TimeoutFuture::new(300).await;
    s.start();
    let w = until(&s, 6000, |v| v["status"]["activity"] == "working").await;
    assert_eq!(w["status"]["activity"], "working", "{w}");
    let done = until(&s, 15_000, |v| {
        v["state"]["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["role"] == "assistant" && m["status"] == "completed")
        })
    })
    .await;
    let msgs = done["state"]["messages"].as_array().unwrap();
    assert_eq!(
        msgs.iter().filter(|m| m["role"] == "user").count(),
        1,
        "no duplicate user message"
    );
    assert_eq!(msgs[1]["replyTo"], crid.as_str());
    assert_eq!(done["status"]["activity"], "idle");
    let m = &done["metrics"]["messages"][crid.as_str()];
    assert!(
        m["ttfbMs"].as_f64().is_some() && m["ttftMs"].as_f64().unwrap() >= 2000.0,
        "{m}"
    );
    s.close();
}

#[wasm_bindgen_test]
async fn unknown_run_fails_without_retry_and_bad_options_throw_typed_errors() {
    let s = stream("no_such_run", "fetch", json!({}));
    s.start();
    let v = until(&s, 5000, |v| v["status"]["connection"] == "failed").await;
    assert_eq!(v["status"]["connection"], "failed");
    assert!(v["status"]["lastError"].as_str().unwrap().contains("404"));
    s.close();
    let err = RunStream::new(js(&json!({"runId": ""}))).err().unwrap();
    assert_eq!(
        Reflect::get(&err, &"name".into()).unwrap(),
        "RunStreamOptionError"
    );
    let err = RunStream::new(js(&json!({"runId": "r", "transport": "carrier-pigeon"})))
        .err()
        .unwrap();
    assert!(err.dyn_ref::<js_sys::Error>().is_some());
}

#[wasm_bindgen_test]
async fn close_drops_the_server_connection() {
    let run = create_run(
        json!({"kind": "chat", "run_id": format!("idle_{}", js_sys::Math::random().to_bits())}),
    )
    .await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    until(&s, 5000, |v| v["status"]["connection"] == "open").await;
    TimeoutFuture::new(200).await;
    let st = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await;
    assert_eq!(st["connections_open"], 1);
    s.close();
    let mut open = 1;
    for _ in 0..40 {
        TimeoutFuture::new(100).await;
        open = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await
            ["connections_open"]
            .as_u64()
            .unwrap();
        if open == 0 {
            break;
        }
    }
    assert_eq!(open, 0);
    let v = snapshot(&s);
    assert_eq!(v["status"]["connection"], "closed");
    assert_eq!(v["metrics"]["terminations"]["client_closed"], 1);
}

#[wasm_bindgen_test]
async fn honours_retry_after_and_the_servers_retry_field() {
    // 503 with Retry-After: 2 → the next attempt waits at least 2 s.
    let run = create_run(json!({"seed": 6, "workers": 2, "instant": true, "chaos": {"fail_first": 1, "fail_status": 503, "retry_after_s": 2}})).await;
    let s = stream(&run, "fetch", json!({}));
    let t0 = js_sys::Date::now();
    s.start();
    let waiting = until(&s, 3000, |v| {
        v["status"]["connection"] == "reconnecting" && v["status"]["retryInMs"].as_f64().is_some()
    })
    .await;
    assert!(
        waiting["status"]["retryInMs"].as_f64().unwrap() > 1500.0,
        "{waiting}"
    );
    assert!(waiting["status"]["lastError"]
        .as_str()
        .unwrap()
        .contains("503"));
    let v = until(&s, 8000, closed).await;
    assert_eq!(v["status"]["connection"], "closed");
    assert!(js_sys::Date::now() - t0 >= 2000.0);
    assert_eq!(v["metrics"]["terminations"]["http_5xx"], 1);
    s.close();
    // retry: 1200 → after a healthy connection drops, the reconnect waits the server's retry.
    let run = create_run(json!({"seed": 6, "workers": 3, "instant": true, "chaos": {"retry_ms": 1200, "drop_every": 6}})).await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    let waiting = until(&s, 3000, |v| v["status"]["retryInMs"].as_f64().is_some()).await;
    let wait = waiting["status"]["retryInMs"].as_f64().unwrap();
    assert!(wait > 1000.0 && wait <= 1200.0, "{waiting}");
    s.close();
}

#[wasm_bindgen_test]
async fn goes_offline_and_back() {
    let run = create_run(json!({"seed": 12, "workers": 3, "speed": 4})).await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    until(&s, 5000, |v| {
        v["state"]["cursor"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    let w = web_sys::window().unwrap();
    w.dispatch_event(&web_sys::Event::new("offline").unwrap())
        .unwrap();
    let off = until(&s, 2000, |v| v["status"]["connection"] == "offline").await;
    assert_eq!(off["status"]["connection"], "offline");
    let cursor = off["state"]["cursor"].as_u64().unwrap();
    TimeoutFuture::new(1500).await;
    // Offline: no reconnect attempts, nothing applied.
    let still = snapshot(&s);
    assert_eq!(still["status"]["connection"], "offline");
    assert_eq!(still["state"]["cursor"].as_u64().unwrap(), cursor);
    w.dispatch_event(&web_sys::Event::new("online").unwrap())
        .unwrap();
    let v = until(&s, 15_000, closed).await;
    assert_eq!(v["status"]["connection"], "closed");
    assert_matches_server(&run, &v).await;
    assert_eq!(v["metrics"]["terminations"]["offline"], 1);
    s.close();
}

fn perf_spans() -> Vec<Value> {
    let perf = Reflect::get(&web_sys::window().unwrap(), &"performance".into()).unwrap();
    let f: Function = Reflect::get(&perf, &"getEntriesByName".into())
        .unwrap()
        .dyn_into()
        .unwrap();
    let arr: js_sys::Array = f
        .call1(&perf, &"runstream:span".into())
        .unwrap()
        .dyn_into()
        .unwrap();
    arr.iter()
        .map(|e| {
            let detail = Reflect::get(&e, &"detail".into()).unwrap();
            serde_wasm_bindgen::from_value(detail).unwrap_or(Value::Null)
        })
        .collect()
}

fn clear_spans() {
    let perf = Reflect::get(&web_sys::window().unwrap(), &"performance".into()).unwrap();
    let f: Function = Reflect::get(&perf, &"clearMeasures".into())
        .unwrap()
        .dyn_into()
        .unwrap();
    f.call1(&perf, &"runstream:span".into()).unwrap();
}

#[wasm_bindgen_test]
async fn spans_reach_the_performance_timeline_only_when_sampled_and_listeners_are_isolated() {
    for (spans, expect) in [
        (json!(true), true),
        (json!(false), false),
        (json!({"sampleRate": 0}), false),
        (json!({"sampleRate": 1}), true),
    ] {
        clear_spans();
        // A PerformanceObserver, as a consumer would use one.
        let observed = Rc::new(RefCell::new(Vec::<Value>::new()));
        let obs2 = observed.clone();
        let obs_cb = Closure::<dyn FnMut(JsValue)>::new(move |list: JsValue| {
            let f: Function = Reflect::get(&list, &"getEntries".into())
                .unwrap()
                .dyn_into()
                .unwrap();
            let entries: js_sys::Array = f.call0(&list).unwrap().dyn_into().unwrap();
            for e in entries.iter() {
                if Reflect::get(&e, &"name".into()).unwrap() == "runstream:span" {
                    let detail = Reflect::get(&e, &"detail".into()).unwrap();
                    obs2.borrow_mut()
                        .push(serde_wasm_bindgen::from_value(detail).unwrap_or(Value::Null));
                }
            }
        });
        let observer = web_sys::PerformanceObserver::new(obs_cb.as_ref().unchecked_ref()).unwrap();
        let init = web_sys::PerformanceObserverInit::new(&js_sys::Array::of1(&"measure".into()));
        observer.observe(&init);
        let run = create_run(
            json!({"seed": 2, "workers": 2, "instant": true, "chaos": {"drop_every": 7}}),
        )
        .await;
        let s = stream(&run, "fetch", json!({"spans": spans}));
        // Built without `new Function` (the suite checks that nothing imports it).
        let thrower = Closure::<dyn FnMut(JsValue)>::new(|_: JsValue| {
            wasm_bindgen::throw_str("listener boom");
        });
        let _off1 = s.subscribe_events(thrower.as_ref().unchecked_ref::<Function>().clone());
        let seen = Rc::new(RefCell::new(Vec::<Value>::new()));
        let seen2 = seen.clone();
        let cb = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            seen2
                .borrow_mut()
                .push(serde_wasm_bindgen::from_value(e).unwrap());
        });
        let _off2 = s.subscribe_events(cb.as_ref().unchecked_ref::<Function>().clone());
        s.start();
        let v = until(&s, 10_000, closed).await;
        assert_eq!(v["status"]["connection"], "closed");
        let events = seen.borrow().clone();
        let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
        // A throwing listener does not stop delivery to the next one, and metrics are complete regardless of sampling.
        assert!(names.contains(&"stream.connect.total"), "{names:?}");
        let reconnects = names
            .iter()
            .filter(|n| **n == "stream.reconnect.total")
            .count() as u64;
        assert_eq!(Some(reconnects), v["metrics"]["reconnects"].as_u64());
        let span_events = events.iter().filter(|e| e["kind"] == "span").count();
        let measures = perf_spans();
        TimeoutFuture::new(50).await;
        observer.disconnect();
        let seen_by_observer = observed.borrow().clone();
        if expect {
            assert!(
                !seen_by_observer.is_empty(),
                "PerformanceObserver saw no span: {spans}"
            );
            assert!(
                seen_by_observer
                    .iter()
                    .all(|d| d["spanId"].is_string() && d["op"].is_string()),
                "{seen_by_observer:?}"
            );
        } else {
            assert!(seen_by_observer.is_empty(), "{spans}: {seen_by_observer:?}");
        }
        if expect {
            assert!(span_events > 0, "{spans}");
            assert!(!measures.is_empty(), "{spans}");
            assert!(
                measures
                    .iter()
                    .any(|d| d["op"] == "connect" && d["status"] == "ok"),
                "{measures:?}"
            );
        } else {
            assert_eq!(span_events, 0, "{spans}");
            assert!(measures.is_empty(), "{spans}: {measures:?}");
        }
        s.close();
    }
}

#[wasm_bindgen_test]
async fn metrics_match_what_the_servers_chaos_did() {
    for transport in ["fetch", "sse", "websocket"] {
        let run = create_run(json!({"seed": 31, "workers": 5, "instant": true, "chaos": {"seed": 31, "dup_rate": 0.3, "malformed_rate": 0.15}})).await;
        let s = stream(&run, transport, json!({}));
        s.start();
        let v = until(&s, 10_000, closed).await;
        assert_eq!(v["status"]["connection"], "closed", "{transport}");
        let st = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await;
        let m = &v["metrics"];
        assert!(st["dups_sent"].as_u64().unwrap() > 0);
        assert_eq!(
            m["duplicatesDropped"], st["dups_sent"],
            "{transport}: {m} vs {st}"
        );
        // Every injected malformed frame is counted, and nothing already applied was lost.
        let injected = st["malformed_sent"].as_u64().unwrap();
        assert!(injected > 0);
        assert_eq!(
            m["protocolErrors"].as_u64(),
            Some(injected),
            "{transport}: {m}"
        );
        assert_matches_server(&run, &v).await;
        s.close();
    }
}

// ---- shell defects: CSP, unsubscribe, request timeouts, storage, snapshots, auth ----

/// A fresh random suffix for run ids and knob keys.
fn fresh(prefix: &str) -> String {
    format!("{prefix}_{}", (js_sys::Math::random() * 1e15) as u64)
}

/// Calls a JS function value (an unsubscribe function) and reports whether it threw.
fn call_ok(f: &JsValue) -> bool {
    f.dyn_ref::<Function>()
        .is_some_and(|f| f.call0(&JsValue::UNDEFINED).is_ok())
}

async fn knob_stats(key: &str) -> (u64, u64) {
    let v = request("GET", &format!("/api/chaos/stats/{key}"), None).await;
    (v["hits"].as_u64().unwrap(), v["open"].as_u64().unwrap())
}

/// Waits until `pred(hits, open)` of knob `key`, or `ms` pass; returns the last figures.
async fn until_knob(key: &str, ms: u32, pred: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let mut waited = 0;
    loop {
        let (h, o) = knob_stats(key).await;
        if pred(h, o) || waited >= ms {
            return (h, o);
        }
        TimeoutFuture::new(50).await;
        waited += 50;
    }
}

/// `globalThis.Function` replaced by a proxy that refuses to build functions from
/// strings, as a page with CSP `script-src 'self' 'wasm-unsafe-eval'` does; restored on drop.
struct NoEval {
    global: js_sys::Object,
    original: JsValue,
    hits: Rc<Cell<u32>>,
    _trap: Closure<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>>,
}

impl NoEval {
    fn install() -> Self {
        let global = js_sys::global();
        let original = Reflect::get(&global, &"Function".into()).unwrap();
        let hits = Rc::new(Cell::new(0));
        let h2 = hits.clone();
        let trap = Closure::<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>>::new(
            move |_target: JsValue, _args: JsValue| {
                h2.set(h2.get() + 1);
                Err(js_sys::EvalError::new("CSP: unsafe-eval is not allowed").into())
            },
        );
        let handler = js_sys::Object::new();
        Reflect::set(&handler, &"construct".into(), trap.as_ref()).unwrap();
        Reflect::set(&handler, &"apply".into(), trap.as_ref()).unwrap();
        let proxy = js_sys::Proxy::new(&original, &handler);
        Reflect::set(&global, &"Function".into(), &proxy).unwrap();
        Self {
            global,
            original,
            hits,
            _trap: trap,
        }
    }
}

impl Drop for NoEval {
    fn drop(&mut self) {
        let _ = Reflect::set(&self.global, &"Function".into(), &self.original);
    }
}

/// `window.fetch` wrapped to keep the `AbortSignal` of every request whose URL
/// contains `needle`, so a test sees what the library asked of the browser
/// (abort this request) apart from what the browser did on the network;
/// restored on drop.
struct FetchSpy {
    window: web_sys::Window,
    original: JsValue,
    signals: Rc<RefCell<Vec<web_sys::AbortSignal>>>,
    /// Requests started while an earlier one was not aborted yet.
    overlaps: Rc<Cell<u32>>,
    _wrapper: Closure<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>>,
}

impl FetchSpy {
    fn install(needle: &str) -> Self {
        let window = web_sys::window().unwrap();
        let original = Reflect::get(&window, &"fetch".into()).unwrap();
        let signals: Rc<RefCell<Vec<web_sys::AbortSignal>>> = Rc::default();
        let overlaps = Rc::new(Cell::new(0));
        let (f, w, sig, over, needle) = (
            original.clone().dyn_into::<Function>().unwrap(),
            window.clone(),
            signals.clone(),
            overlaps.clone(),
            needle.to_owned(),
        );
        let wrapper = Closure::<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>>::new(
            move |input: JsValue, init: JsValue| {
                if input.as_string().is_some_and(|u| u.contains(&needle)) {
                    let mut list = sig.borrow_mut();
                    if list.iter().any(|s| !s.aborted()) {
                        over.set(over.get() + 1);
                    }
                    if let Ok(s) = Reflect::get(&init, &"signal".into()) {
                        if let Ok(s) = s.dyn_into::<web_sys::AbortSignal>() {
                            list.push(s);
                        }
                    }
                }
                f.call2(&w, &input, &init)
            },
        );
        Reflect::set(&window, &"fetch".into(), wrapper.as_ref()).unwrap();
        Self {
            window,
            original,
            signals,
            overlaps,
            _wrapper: wrapper,
        }
    }

    /// Requests seen, and how many of them the library has aborted.
    fn aborted(&self) -> (usize, usize) {
        let list = self.signals.borrow();
        (list.len(), list.iter().filter(|s| s.aborted()).count())
    }
}

impl Drop for FetchSpy {
    fn drop(&mut self) {
        let _ = Reflect::set(&self.window, &"fetch".into(), &self.original);
    }
}

/// WebKit (WebKitGTK 2.50 measured: Safari's engine, not Chromium's or Gecko's).
fn is_webkit() -> bool {
    let ua = web_sys::window()
        .and_then(|w| w.navigator().user_agent().ok())
        .unwrap_or_default();
    ua.contains("AppleWebKit") && !ua.contains("Chrome")
}

/// Calls method `name` of the JS object of a stream, catching what it throws.
fn call_method(obj: &JsValue, name: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = Reflect::get(obj, &name.into())?.dyn_into()?;
    Reflect::apply(&f, obj, &args.iter().collect::<js_sys::Array>())
}

#[wasm_bindgen_test]
async fn strict_csp_pages_work_no_function_is_built_from_a_string() {
    // Statically: nothing in this wasm (library and tests) imports the Function constructor.
    let imports = js_sys::WebAssembly::Module::imports(wasm_bindgen::module().unchecked_ref());
    let evals: Vec<String> = imports
        .iter()
        .filter_map(|i| Reflect::get(&i, &"name".into()).ok()?.as_string())
        .filter(|n| n.contains("new_no_args") || n.contains("new_with_args") || n.contains("eval"))
        .collect();
    assert!(evals.is_empty(), "eval-like imports: {evals:?}");
    // Dynamically, as a page with CSP `script-src 'self' 'wasm-unsafe-eval'` behaves. The
    // WebDriver harness itself needs `Function`, so the guard is only up while no await runs.
    let run = create_run(json!({"seed": 5, "workers": 2, "instant": true})).await;
    let cb = Closure::<dyn FnMut()>::new(|| {});
    let guard = NoEval::install();
    let obj: JsValue = stream(
        &run,
        "fetch",
        json!({"sendUrl": format!("{}/api/chat/{run}/messages", server())}),
    )
    .into();
    let off = call_method(&obj, "subscribe", &[cb.as_ref().clone()]);
    let off_events = call_method(&obj, "subscribeEvents", &[cb.as_ref().clone()]);
    let started = call_method(&obj, "start", &[]);
    let snap = call_method(&obj, "getSnapshot", &[]);
    let closed = call_method(&obj, "close", &[]);
    // A closed stream still hands out a callable unsubscribe function.
    let late = call_method(&obj, "subscribe", &[cb.as_ref().clone()]);
    let late_events = call_method(&obj, "subscribeEvents", &[cb.as_ref().clone()]);
    let offs_ok = [&off, &off_events, &late, &late_events]
        .iter()
        .all(|f| f.as_ref().is_ok_and(call_ok));
    let hits = guard.hits.get();
    drop(guard);
    assert!(started.is_ok() && snap.is_ok() && closed.is_ok());
    assert!(off.is_ok() && off_events.is_ok(), "subscribe threw");
    assert!(
        late.is_ok() && late_events.is_ok(),
        "subscribe on a closed stream threw"
    );
    assert!(offs_ok, "an unsubscribe function threw");
    assert_eq!(hits, 0, "the Function constructor was called {hits} times");
    call_method(&obj, "free", &[]).unwrap();
}

#[wasm_bindgen_test]
async fn unsubscribe_functions_are_idempotent_and_stop_calls() {
    let run = create_run(json!({"seed": 9, "workers": 3, "instant": true})).await;
    let s = stream(&run, "fetch", json!({}));
    let (calls, events) = (Rc::new(Cell::new(0u32)), Rc::new(Cell::new(0u32)));
    let (c2, e2) = (calls.clone(), events.clone());
    let cb = Closure::<dyn FnMut()>::new(move || c2.set(c2.get() + 1));
    let ecb = Closure::<dyn FnMut(JsValue)>::new(move |_| e2.set(e2.get() + 1));
    let off = s.subscribe(cb.as_ref().unchecked_ref::<Function>().clone());
    let off_events = s.subscribe_events(ecb.as_ref().unchecked_ref::<Function>().clone());
    assert!(call_ok(&off), "first unsubscribe");
    assert!(call_ok(&off), "second unsubscribe threw");
    assert!(call_ok(&off_events), "first unsubscribeEvents");
    assert!(call_ok(&off_events), "second unsubscribeEvents threw");
    // A subscription that is still active when the stream closes: its unsubscribe is a no-op afterwards.
    let kept = Rc::new(Cell::new(0u32));
    let k2 = kept.clone();
    let kcb = Closure::<dyn FnMut()>::new(move || k2.set(k2.get() + 1));
    let off_kept = s.subscribe(kcb.as_ref().unchecked_ref::<Function>().clone());
    s.start();
    let v = until(&s, 10_000, closed).await;
    assert_eq!(v["status"]["connection"], "closed");
    TimeoutFuture::new(200).await;
    assert_eq!(calls.get(), 0, "an unsubscribed listener was called");
    assert_eq!(events.get(), 0, "an unsubscribed event listener was called");
    assert!(kept.get() > 0);
    s.close();
    assert!(call_ok(&off_kept), "unsubscribe after close threw");
    assert!(call_ok(&off_kept), "second unsubscribe after close threw");
    drop(s);
    assert!(
        call_ok(&off_kept),
        "unsubscribe after the stream was dropped threw"
    );
}

#[wasm_bindgen_test]
async fn a_send_to_a_server_that_never_answers_times_out_is_retried_and_close_aborts_it() {
    let key = fresh("hang_send");
    let spy = FetchSpy::install(&format!("/api/chaos/hang/{key}"));
    let s = stream(
        &fresh("chat"),
        "fetch",
        json!({
            "sendUrl": format!("{}/api/chaos/hang/{key}", server()),
            "connectTimeoutMs": 400,
            "backoff": {"initialMs": 50, "maxMs": 100},
        }),
    );
    s.send("hello?").unwrap();
    // Each attempt is aborted after connectTimeoutMs and retried with backoff.
    let (hits, open) = until_knob(&key, 5000, |h, _| h >= 3).await;
    assert!(hits >= 3, "the hung send was not retried: {hits} requests");
    // WebKit (WebKitGTK 2.50.6) sometimes does not cancel an aborted fetch
    // that has a request body on the network: about 1 in 20 such requests
    // stays open at the server until it answers (over 150 s measured; GETs
    // and body-less POSTs 0 in 64; docs/BROWSERS.md). What the library asks
    // is checked in every engine: each attempt aborted before the next one
    // starts, and every one aborted by close(); the server's count of open
    // requests is checked where the engine carries the abort out.
    assert_eq!(
        spy.overlaps.get(),
        0,
        "a retry started before the attempt it replaced was aborted"
    );
    assert!(is_webkit() || open <= 1, "{open} requests open at once");
    let v = snapshot(&s);
    assert_ne!(v["state"]["messages"][0]["status"], "failed", "{v}");
    // close() aborts the request in flight.
    s.close();
    let (seen, aborted) = spy.aborted();
    assert!(
        seen >= 3 && aborted == seen,
        "close() left {} of {seen} requests unaborted",
        seen - aborted
    );
    drop(spy);
    let (_, open) = until_knob(&key, 3000, |_, o| o == 0).await;
    assert!(
        is_webkit() || open == 0,
        "a closed stream still has a send in flight"
    );
    let (h1, _) = knob_stats(&key).await;
    TimeoutFuture::new(600).await;
    assert_eq!(
        knob_stats(&key).await.0,
        h1,
        "a closed stream retried its send"
    );
}

#[wasm_bindgen_test]
async fn a_snapshot_request_that_never_answers_times_out_and_close_aborts_it() {
    // A finished run with a worker left running: the engine asks for the snapshot.
    let run = create_run(json!({"kind": "chat", "run_id": fresh("snap")})).await;
    for (ty, p) in [
        ("run.started", json!({"title": "t"})),
        ("worker.started", json!({"worker_id": "w1", "name": "n"})),
        ("run.completed", json!({"status": "succeeded"})),
    ] {
        request(
            "POST",
            &format!("/api/admin/runs/{run}/append"),
            Some(json!({"type": ty, "payload": p})),
        )
        .await;
    }
    let key = fresh("hang_snap");
    let s = stream(
        &run,
        "fetch",
        json!({"snapshotUrl": format!("{}/api/chaos/hang/{key}", server()), "connectTimeoutMs": 700}),
    );
    s.start();
    let (hits, _) = until_knob(&key, 5000, |h, _| h >= 1).await;
    assert_eq!(hits, 1, "no snapshot request");
    // Timed out: the reconciliation ends (the worker's fate is unknown) and the request is aborted.
    let v = until(&s, 3000, |v| {
        v["state"]["workers"][0]["status"] == "unknown"
    })
    .await;
    assert_eq!(v["state"]["workers"][0]["status"], "unknown", "{v}");
    let (_, open) = until_knob(&key, 2000, |_, o| o == 0).await;
    assert_eq!(open, 0, "the timed-out snapshot request is still open");
    s.close();
    // close() aborts a snapshot request in flight.
    let key = fresh("hang_snap");
    let s = stream(
        &run,
        "fetch",
        json!({"snapshotUrl": format!("{}/api/chaos/hang/{key}", server())}),
    );
    s.start();
    let (hits, open) = until_knob(&key, 5000, |h, _| h >= 1).await;
    assert_eq!((hits, open), (1, 1));
    s.close();
    let (_, open) = until_knob(&key, 3000, |_, o| o == 0).await;
    assert_eq!(
        open, 0,
        "a closed stream still has a snapshot request in flight"
    );
}

/// A `headers` option that counts its calls and fails the first `n` of them
/// (a rejected promise, or a throw), then returns a token.
fn failing_headers(
    calls: Rc<Cell<u32>>,
    n: u32,
    rejecting: bool,
) -> Closure<dyn FnMut() -> JsValue> {
    Closure::new(move || -> JsValue {
        calls.set(calls.get() + 1);
        if calls.get() > n {
            js(&json!({"Authorization": "Bearer ok"}))
        } else if rejecting {
            js_sys::Promise::reject(&js_sys::Error::new("no token").into()).into()
        } else {
            wasm_bindgen::throw_str("token service down")
        }
    })
}

fn with_headers(
    s_opts: Value,
    headers: &Closure<dyn FnMut() -> JsValue>,
    run: &str,
    transport: &str,
) -> RunStream {
    let mut o = json!({
        "runId": run,
        "transport": transport,
        "url": format!("{}/api/stream/runs/{run}", server()),
        "wsUrl": format!("{}/api/ws", server()),
        "snapshotUrl": format!("{}/api/runs/{run}/snapshot", server()),
        "resume": "none",
    });
    if let (Some(o), Value::Object(e)) = (o.as_object_mut(), s_opts) {
        o.extend(e);
    }
    let o = js(&o);
    Reflect::set(&o, &"headers".into(), headers.as_ref()).unwrap();
    RunStream::new(o).unwrap()
}

/// API.md `connectTimeoutMs`: "no `open` (…, WebSocket) for this long →
/// retry", and `headers` is "called on every (re)connect". On the page's
/// shared socket a run opens with its subscribe, which waits for its
/// `headers`: a promise that never settles is a connect timeout, retried with
/// `headers` called again (as over fetch), not a run stuck in `connecting`.
#[wasm_bindgen_test]
async fn a_websocket_headers_promise_that_never_settles_is_a_connect_timeout() {
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let h: Closure<dyn FnMut() -> JsValue> = Closure::new(move || -> JsValue {
        c.set(c.get() + 1);
        js_sys::Promise::new(&mut |_, _| {}).into()
    });
    let run = create_run(json!({"seed": 25, "workers": 2, "speed": 1})).await;
    // Another stream keeps the page's socket open, so the run attaches to an
    // open socket (its subscribe is then started at once, at attach).
    let other = stream(&run, "websocket", json!({}));
    other.start();
    let v = until(&other, 10_000, |v| v["status"]["connection"] == "open").await;
    assert_eq!(v["status"]["connection"], "open", "{v}");
    let s = with_headers(
        json!({"connectTimeoutMs": 300, "backoff": {"initialMs": 50, "maxMs": 100}}),
        &h,
        &run,
        "websocket",
    );
    s.start();
    let v = until(&s, 5_000, |v| {
        v["metrics"]["terminations"]["connect_timeout"].as_u64() >= Some(2)
    })
    .await;
    assert!(
        v["metrics"]["terminations"]["connect_timeout"].as_u64() >= Some(2),
        "{v}"
    );
    assert!(calls.get() >= 2, "headers called {} times", calls.get());
    s.close();
    other.close();
}

/// README: "a dropped Wi-Fi … never leaves a spinner stuck", with API.md's
/// `headers: async () => ({ Authorization: `Bearer ${await getToken()}` })`:
/// while the token endpoint is down too, the function throws or rejects. The
/// stream backs off and calls it again on each reconnect (reported in
/// `lastError` and `terminations.headers_error`), and opens once it answers;
/// a send made meanwhile stays queued and is accepted then, once.
#[wasm_bindgen_test]
async fn a_headers_function_that_fails_for_a_while_is_retried_with_backoff() {
    for (transport, rejecting) in [("fetch", false), ("websocket", true), ("sse", false)] {
        let run = create_run(json!({"seed": 3, "workers": 2, "speed": 5})).await;
        let calls = Rc::new(Cell::new(0u32));
        let h = failing_headers(calls.clone(), 3, rejecting);
        let s = with_headers(
            json!({"backoff": {"initialMs": 100, "maxMs": 300}}),
            &h,
            &run,
            transport,
        );
        s.start();
        if transport == "sse" {
            // Native EventSource takes no headers: the option is not called for the stream.
            let v = until(&s, 3000, |v| v["status"]["connection"] == "open").await;
            assert_eq!(v["status"]["connection"], "open", "{v}");
            assert_eq!(calls.get(), 0);
            s.close();
            continue;
        }
        let v = until(&s, 3000, |v| {
            v["status"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("headers"))
        })
        .await;
        assert_ne!(v["status"]["connection"], "failed", "{transport}: {v}");
        let v = until(&s, 5000, |v| v["status"]["connection"] == "open").await;
        assert_eq!(v["status"]["connection"], "open", "{transport}: {v}");
        assert_eq!(v["status"]["lastError"], Value::Null, "{transport}: {v}");
        assert_eq!(
            v["metrics"]["terminations"]["headers_error"], 3,
            "{transport}: {v}"
        );
        assert_eq!(
            calls.get(),
            4,
            "{transport}: headers called once per attempt"
        );
        s.close();
    }
    // A send whose headers fail is queued again, not failed, and accepted once they answer.
    let session = fresh("chat_headers");
    let calls = Rc::new(Cell::new(0u32));
    let h = failing_headers(calls.clone(), 2, false);
    let s = with_headers(
        json!({
            "sendUrl": format!("{}/api/chat/{session}/messages", server()),
            "backoff": {"initialMs": 100, "maxMs": 300},
        }),
        &h,
        &session,
        "fetch",
    );
    let crid = s.send("hi").unwrap();
    let statuses = RefCell::new(Vec::new());
    let v = until(&s, 5000, |v| {
        statuses
            .borrow_mut()
            .push(v["state"]["messages"][0]["status"].clone());
        v["state"]["messages"][0]["messageId"].is_string()
    })
    .await;
    let statuses = statuses.into_inner();
    assert!(
        v["state"]["messages"][0]["messageId"].is_string(),
        "not accepted: {v}"
    );
    assert_eq!(v["state"]["messages"][0]["clientRequestId"], crid.as_str());
    assert!(!statuses.contains(&json!("failed")), "{statuses:?}");
    assert_eq!(calls.get(), 3, "headers called once per attempt");
    let st = request("GET", &format!("/api/admin/runs/{session}/stats"), None).await;
    assert!(!st.is_null(), "the server never saw the send");
    s.close();
}

#[wasm_bindgen_test]
async fn websocket_auth_close_codes_stop_the_stream_without_a_retry_loop() {
    for (code, sockets, calls_expected) in [(4401u16, 2u64, 2u32), (4403, 1, 1), (1008, 1, 1)] {
        let key = fresh("ws_close");
        let run = create_run(json!({"seed": 3, "workers": 2, "speed": 5})).await;
        let calls = Rc::new(Cell::new(0u32));
        let c2 = calls.clone();
        let h = Closure::<dyn FnMut() -> JsValue>::new(move || -> JsValue {
            c2.set(c2.get() + 1);
            js(&json!({"Authorization": format!("Bearer t{}", c2.get())}))
        });
        let s = with_headers(
            json!({"wsUrl": format!("{}/api/chaos/ws/{key}/{code}", server())}),
            &h,
            &run,
            "websocket",
        );
        s.start();
        let v = until(&s, 5000, |v| v["status"]["connection"] == "failed").await;
        assert_eq!(v["status"]["connection"], "failed", "{code}: {v}");
        let err = v["status"]["lastError"].as_str().unwrap_or("");
        assert!(
            err.contains(if code == 4401 { "401" } else { "403" }),
            "{code}: {err}"
        );
        TimeoutFuture::new(3000).await;
        let v = snapshot(&s);
        assert_eq!(v["status"]["connection"], "failed", "{code}: {v}");
        let (hits, open) = knob_stats(&key).await;
        assert_eq!(hits, sockets, "{code}: sockets opened");
        assert_eq!(open, 0);
        assert_eq!(calls.get(), calls_expected, "{code}: headers calls");
        assert_eq!(
            v["metrics"]["reconnects"].as_u64(),
            Some(sockets - 1),
            "{code}: {v}"
        );
        s.close();
    }
}

#[wasm_bindgen_test]
async fn get_snapshot_never_returns_null_even_from_inside_the_streams_own_calls() {
    // A monitoring library wrapping performance.measure calls back into the stream.
    let run =
        create_run(json!({"seed": 4, "workers": 2, "instant": true, "chaos": {"drop_every": 5}}))
            .await;
    let s = Rc::new(stream(&run, "fetch", json!({"spans": true})));
    let perf = Reflect::get(&web_sys::window().unwrap(), &"performance".into()).unwrap();
    let seen = Rc::new(RefCell::new(Vec::<bool>::new()));
    let (s2, seen2) = (Rc::downgrade(&s), seen.clone());
    let wrapper = Closure::<dyn FnMut()>::new(move || {
        if let Some(s) = s2.upgrade() {
            let v = s.get_snapshot();
            seen2.borrow_mut().push(v.is_object());
        }
    });
    Reflect::set(&perf, &"measure".into(), wrapper.as_ref()).unwrap();
    s.start();
    let v = until(&s, 10_000, closed).await;
    Reflect::delete_property(perf.unchecked_ref::<js_sys::Object>(), &"measure".into()).unwrap();
    assert_eq!(v["status"]["connection"], "closed");
    let seen = seen.borrow().clone();
    assert!(!seen.is_empty(), "performance.measure was not called");
    assert!(
        seen.iter().all(|ok| *ok),
        "getSnapshot returned null: {seen:?}"
    );
    s.close();
}

// ---- stored records: retention, size cap, quota ----

/// The index record of runstream's stored records (see `src/core/retention.rs`).
const INDEX_KEY: &str = "runstream-index";

fn local() -> web_sys::Storage {
    web_sys::window().unwrap().local_storage().unwrap().unwrap()
}

/// Removes runstream's records, the index and the test's filler from localStorage.
fn clear_local() {
    let st = local();
    let keys: Vec<String> = (0..st.length().unwrap())
        .filter_map(|i| st.key(i).ok().flatten())
        .filter(|k| k.starts_with("runstream") || k.starts_with("filler_"))
        .collect();
    for k in keys {
        st.remove_item(&k).unwrap();
    }
}

/// Clears localStorage of the test's keys when dropped (also when the test fails).
struct LocalCleanup;

impl Drop for LocalCleanup {
    fn drop(&mut self) {
        clear_local();
    }
}

/// Fills localStorage until not even a few characters fit; returns the filler keys.
fn fill_to_quota(st: &web_sys::Storage) -> Vec<String> {
    let mut keys = Vec::new();
    let mut chunk = 1usize << 20;
    while chunk >= 8 {
        let key = format!("filler_{}", keys.len());
        if st.set_item(&key, &"f".repeat(chunk)).is_ok() {
            keys.push(key);
        } else {
            chunk /= 2;
        }
    }
    keys
}

fn stored_cursor(run: &str) -> Option<u64> {
    let text = local().get_item(&format!("runstream:{run}")).unwrap()?;
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cursor"].as_u64()
}

fn index() -> Value {
    local()
        .get_item(INDEX_KEY)
        .unwrap()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

#[wasm_bindgen_test]
async fn stale_finished_records_are_evicted_and_the_new_record_is_written() {
    clear_local();
    let _cleanup = LocalCleanup;
    let st = local();
    let now = js_sys::Date::now();
    let big = "x".repeat(100_000);
    let mut runs = serde_json::Map::new();
    for i in 0..12 {
        st.set_item(&format!("runstream:stale_{i}"), &big).unwrap();
        runs.insert(
            format!("stale_{i}"),
            json!({"b": 200_030, "t": now - 3_600_000.0 - f64::from(i), "f": true}),
        );
    }
    // Finished a moment ago: within the grace period, a refresh still shows it without a replay.
    st.set_item("runstream:recent_done", "{}").unwrap();
    runs.insert(
        "recent_done".into(),
        json!({"b": 50, "t": now - 1000.0, "f": true}),
    );
    st.set_item(INDEX_KEY, &json!({"v": 1, "runs": runs}).to_string())
        .unwrap();
    let run = create_run(json!({"seed": 14, "workers": 3, "instant": true})).await;
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    s.start();
    let v = until(&s, 10_000, closed).await;
    assert_eq!(v["status"]["connection"], "closed");
    s.close();
    for i in 0..12 {
        assert!(
            st.get_item(&format!("runstream:stale_{i}"))
                .unwrap()
                .is_none(),
            "stale_{i} was not evicted"
        );
    }
    assert!(st.get_item("runstream:recent_done").unwrap().is_some());
    assert_eq!(stored_cursor(&run), v["state"]["cursor"].as_u64());
    let idx = index();
    assert_eq!(idx["runs"][run.as_str()]["f"], true, "{idx}");
    assert!(idx["runs"]["stale_0"].is_null(), "{idx}");
    // A refresh right after completion restores the finished run from storage.
    let s2 = stream(&run, "fetch", json!({"resume": "local"}));
    let restored = snapshot(&s2);
    assert_eq!(restored["state"]["status"], "succeeded", "{restored}");
    s2.close();
}

#[wasm_bindgen_test]
async fn records_beyond_the_size_cap_are_evicted_oldest_first() {
    clear_local();
    let _cleanup = LocalCleanup;
    let st = local();
    let now = js_sys::Date::now();
    let big = "x".repeat(100_000);
    let mut runs = serde_json::Map::new();
    for i in 0..12 {
        let key = format!("runstream:live_{i:02}");
        st.set_item(&key, &big).unwrap();
        runs.insert(
            format!("live_{i:02}"),
            json!({"b": 2 * (key.len() + big.len()), "t": now - 60_000.0 + f64::from(i), "f": false}),
        );
    }
    st.set_item(INDEX_KEY, &json!({"v": 1, "runs": runs}).to_string())
        .unwrap();
    let run = create_run(json!({"seed": 15, "workers": 2, "instant": true})).await;
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    s.start();
    let v = until(&s, 10_000, closed).await;
    s.close();
    assert_eq!(stored_cursor(&run), v["state"]["cursor"].as_u64());
    // 12 × ~200 KB + the new record is over 2 MiB: the two oldest go, the rest stay.
    for i in 0..12 {
        let present = st
            .get_item(&format!("runstream:live_{i:02}"))
            .unwrap()
            .is_some();
        assert_eq!(present, i >= 2, "live_{i:02}");
    }
}

#[wasm_bindgen_test]
async fn a_quota_error_evicts_other_records_and_never_loses_the_cursor() {
    clear_local();
    let _cleanup = LocalCleanup;
    let st = local();
    let run = create_run(json!({"seed": 16, "workers": 8, "speed": 1})).await;
    // A page stores its cursor, then goes away.
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    s.start();
    until(&s, 10_000, |v| {
        v["state"]["cursor"].as_u64().unwrap_or(0) >= 4
    })
    .await;
    s.close();
    drop(s);
    let first = stored_cursor(&run).expect("no record stored");
    // Other runs' records, then the storage area is full.
    let now = js_sys::Date::now();
    let mut runs: serde_json::Map<String, Value> =
        serde_json::from_value(index()["runs"].clone()).unwrap_or_default();
    let other = "o".repeat(100_000);
    for i in 0..3 {
        let key = format!("runstream:other_{i}");
        st.set_item(&key, &other).unwrap();
        runs.insert(
            format!("other_{i}"),
            json!({"b": 2 * (key.len() + other.len()), "t": now - 10_000.0 + f64::from(i), "f": false}),
        );
    }
    st.set_item(INDEX_KEY, &json!({"v": 1, "runs": runs}).to_string())
        .unwrap();
    fill_to_quota(&st);
    // The next page's writes hit the quota: the oldest other record is evicted and the write retried.
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    s.start();
    until(&s, 15_000, |v| {
        v["state"]["cursor"].as_u64().unwrap_or(0) >= first + 4
    })
    .await;
    TimeoutFuture::new(1200).await;
    s.close();
    drop(s);
    let second = stored_cursor(&run).expect("a quota error lost the cursor");
    assert!(
        second > first,
        "the record was not updated: {second} <= {first}"
    );
    assert!(
        st.get_item("runstream:other_0").unwrap().is_none(),
        "no other record was evicted"
    );
    // Full again, and nothing of runstream's left to evict: the old record stays.
    for i in 0..3 {
        st.remove_item(&format!("runstream:other_{i}")).unwrap();
    }
    fill_to_quota(&st);
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    s.start();
    let v = until(&s, 20_000, closed).await;
    let last = v["state"]["cursor"].as_u64().unwrap();
    assert!(last > second, "{v}");
    s.close();
    drop(s);
    // The area refused the head: it went to IndexedDB (committed before the
    // area points there), and the area points to it.
    TimeoutFuture::new(500).await;
    let text = local()
        .get_item(&format!("runstream:{run}"))
        .unwrap()
        .expect("a quota error deleted the stored record");
    assert_eq!(
        text, r#"{"v":3,"head":"body_store"}"#,
        "the quota never refused a write"
    );
    // The next page restores the latest cursor from there: no progress lost.
    let s = stream(&run, "fetch", json!({"resume": "local"}));
    let v = until(&s, 5_000, |v| {
        v["state"]["cursor"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(v["state"]["cursor"].as_u64(), Some(last), "{v}");
    s.close();
}

/// `get(obj, "a.b.0.c")`: a property path on a JS value (numbers index arrays).
fn get(v: &JsValue, path: &str) -> JsValue {
    path.split('.')
        .fold(v.clone(), |o, k| match k.parse::<u32>() {
            Ok(i) => Reflect::get_u32(&o, i).unwrap_or(JsValue::UNDEFINED),
            Err(_) => Reflect::get(&o, &k.into()).unwrap_or(JsValue::UNDEFINED),
        })
}

fn frozen(v: &JsValue) -> bool {
    js_sys::Object::is_frozen(&js_sys::Object::from(v.clone()))
}

/// API.md RunSnapshot: "between two snapshots every message, worker, tool and
/// array that did not change is the same object (===) … Snapshot objects are frozen."
#[wasm_bindgen_test]
async fn snapshots_share_unchanged_messages_and_are_frozen() {
    let session = format!("share_{}", js_sys::Math::random().to_bits());
    let s = stream(
        &session,
        "fetch",
        json!({"sendUrl": format!("{}/api/chat/{session}/messages", server())}),
    );
    s.send("first question").unwrap();
    TimeoutFuture::new(300).await;
    s.start();
    until(&s, 15_000, |v| {
        v["state"]["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m[1]["status"] == "completed")
    })
    .await;
    s.send("second question").unwrap();
    until(&s, 15_000, |v| {
        v["state"]["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 4 && m[3]["status"] == "streaming" && m[3]["content"] != "")
    })
    .await;
    let a = s.get_snapshot();
    // Wait for more tokens of the second reply.
    let b = {
        let mut b = s.get_snapshot();
        for _ in 0..200 {
            TimeoutFuture::new(25).await;
            b = s.get_snapshot();
            if get(&b, "state.messages.3.content") != get(&a, "state.messages.3.content") {
                break;
            }
        }
        b
    };
    assert!(!js_sys::Object::is(&a, &b), "a new snapshot after a change");
    for i in ["0", "1", "2"] {
        let p = format!("state.messages.{i}");
        assert!(
            js_sys::Object::is(&get(&a, &p), &get(&b, &p)),
            "message {i} lost its identity"
        );
    }
    assert!(!js_sys::Object::is(
        &get(&a, "state.messages.3"),
        &get(&b, "state.messages.3")
    ));
    assert!(!js_sys::Object::is(
        &get(&a, "state.messages"),
        &get(&b, "state.messages")
    ));
    assert!(js_sys::Object::is(
        &get(&a, "state.workers"),
        &get(&b, "state.workers")
    ));
    for p in [
        "",
        "state",
        "state.messages",
        "state.messages.0",
        "status",
        "metrics",
        "metrics.terminations",
    ] {
        let v = if p.is_empty() { b.clone() } else { get(&b, p) };
        assert!(frozen(&v), "{p} is not frozen");
    }
    // Same object until the next visible change.
    assert!(js_sys::Object::is(&s.get_snapshot(), &s.get_snapshot()));
    s.close();
}

/// API.md RunSnapshot: "between two snapshots every message, worker, tool and
/// array that did not change is the same object (===)": an event that changes
/// nothing in the workers (a `worker.job_assigned` repeating the worker's job)
/// keeps the `workers` array and the worker, and the `messages` array.
#[wasm_bindgen_test]
async fn an_event_that_changes_no_worker_keeps_the_arrays_identity() {
    let run = create_run(json!({"kind": "chat", "run_id": fresh("ident")})).await;
    let append = |ty: &'static str, payload: Value| {
        let path = format!("/api/admin/runs/{run}/append");
        async move { request("POST", &path, Some(json!({"type": ty, "payload": payload}))).await }
    };
    append(
        "worker.started",
        json!({"worker_id": "w1", "job_id": "j1", "name": "w"}),
    )
    .await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    let v = until(&s, 10_000, |v| v["state"]["cursor"] == 1).await;
    assert_eq!(v["state"]["cursor"], 1, "{v}");
    let a = s.get_snapshot();
    append(
        "worker.job_assigned",
        json!({"worker_id": "w1", "job_id": "j1"}),
    )
    .await;
    let v = until(&s, 10_000, |v| v["state"]["cursor"] == 2).await;
    assert_eq!(v["state"]["cursor"], 2, "{v}");
    let b = s.get_snapshot();
    assert!(
        !js_sys::Object::is(&get(&a, "state"), &get(&b, "state")),
        "the cursor moved"
    );
    for p in ["state.workers", "state.workers.0", "state.messages"] {
        assert!(
            js_sys::Object::is(&get(&a, p), &get(&b, p)),
            "{p} lost its identity"
        );
    }
    s.close();
}

/// API.md RunSnapshot: "Snapshot objects are frozen": every object in it, at
/// any depth (the supervisor, workers, tools and their nested payloads), and
/// `version` "increases with every visible change", `close()` included.
#[wasm_bindgen_test]
async fn every_object_of_a_task_snapshot_is_frozen_and_close_is_a_new_version() {
    let run = create_run(json!({"seed": 23, "workers": 3, "speed": 20})).await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    let v = until(&s, 20_000, closed).await;
    assert_eq!(v["state"]["supervisor"]["completed"], true, "{v}");
    let snap = s.get_snapshot();
    let mut stack = vec![(String::from("snapshot"), snap.clone())];
    let mut objects = 0;
    while let Some((path, v)) = stack.pop() {
        if !v.is_object() {
            continue;
        }
        objects += 1;
        assert!(frozen(&v), "{path} is not frozen");
        for e in js_sys::Object::entries(&js_sys::Object::from(v)).iter() {
            let e = js_sys::Array::from(&e);
            let key = e.get(0).as_string().unwrap_or_default();
            stack.push(([path.as_str(), ".", &key].concat(), e.get(1)));
        }
    }
    assert!(objects > 20, "only {objects} objects");
    s.close();

    let run = create_run(json!({"seed": 24, "workers": 3, "speed": 0.05})).await;
    let s = stream(&run, "fetch", json!({}));
    s.start();
    let v = until(&s, 10_000, |v| v["status"]["connection"] == "open").await;
    assert_eq!(v["status"]["connection"], "open", "{v}");
    let before = get(&s.get_snapshot(), "version").as_f64().unwrap();
    s.close();
    let after = s.get_snapshot();
    assert_eq!(
        get(&after, "status.connection").as_string().as_deref(),
        Some("closed")
    );
    assert!(
        get(&after, "version").as_f64().unwrap() > before,
        "version {before} kept"
    );
}

/// Counts the page's `new WebSocket(…)` calls (a Proxy on the constructor)
/// until dropped, when the constructor is put back.
struct SocketCount {
    orig: JsValue,
    count: Rc<Cell<u32>>,
    _trap: Closure<dyn FnMut(JsValue, js_sys::Array) -> JsValue>,
}

impl SocketCount {
    fn install() -> Self {
        let w = web_sys::window().unwrap();
        let orig = Reflect::get(&w, &"WebSocket".into()).unwrap();
        let count = Rc::new(Cell::new(0));
        let c = count.clone();
        let trap = Closure::<dyn FnMut(JsValue, js_sys::Array) -> JsValue>::new(
            move |target: JsValue, args: js_sys::Array| {
                c.set(c.get() + 1);
                Reflect::construct(target.unchecked_ref::<Function>(), &args).unwrap()
            },
        );
        let handler = js_sys::Object::new();
        Reflect::set(&handler, &"construct".into(), trap.as_ref()).unwrap();
        let proxy = js_sys::Proxy::new(&orig, &handler);
        Reflect::set(&w, &"WebSocket".into(), &proxy).unwrap();
        Self {
            orig,
            count,
            _trap: trap,
        }
    }
}

impl Drop for SocketCount {
    fn drop(&mut self) {
        let w = web_sys::window().unwrap();
        Reflect::set(&w, &"WebSocket".into(), &self.orig).unwrap();
    }
}

#[wasm_bindgen_test]
async fn twelve_websocket_runs_share_one_socket_and_each_converges() {
    let sockets = SocketCount::install();
    let mut runs = Vec::new();
    for i in 0..12 {
        runs.push(create_run(json!({"seed": 100 + i, "workers": 2, "speed": 20})).await);
    }
    let streams: Vec<RunStream> = runs
        .iter()
        .map(|r| stream(r, "websocket", json!({})))
        .collect();
    for s in &streams {
        s.start();
    }
    for (run, s) in runs.iter().zip(&streams) {
        let v = until(s, 20_000, closed).await;
        assert_eq!(v["status"]["connection"], "closed", "{run}: {v}");
        assert_eq!(v["status"]["sharing"], "solo");
        assert_matches_server(run, &v).await;
        assert_eq!(v["metrics"]["duplicatesDropped"], 0);
        // The server saw this run subscribe once, on the shared socket.
        let st = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await;
        assert_eq!(st["connections_total"], 1, "{run}: {st}");
    }
    assert_eq!(sockets.count.get(), 1, "twelve runs, one socket");
    for s in &streams {
        s.close();
    }
}

/// `share: "tabs"` in one page: two streams of one run elect one leader over
/// Web Locks and share its connection over a BroadcastChannel; closing the
/// leader hands over; a bad `share` value throws.
#[wasm_bindgen_test]
async fn two_streams_sharing_tabs_hold_one_connection_and_hand_over_on_close() {
    let err = RunStream::new(js(&json!({"runId": "r", "share": "windows"})))
        .err()
        .unwrap();
    assert_eq!(
        Reflect::get(&err, &"name".into()).unwrap(),
        "RunStreamOptionError"
    );
    let run = create_run(json!({"tokens": 120, "rate": 30})).await;
    let a = stream(&run, "fetch", json!({"share": "tabs"}));
    a.start();
    let va = until(&a, 5000, |v| v["status"]["sharing"] == "leader").await;
    assert_eq!(va["status"]["sharing"], "leader", "{va}");
    let b = stream(&run, "fetch", json!({"share": "tabs"}));
    b.start();
    let vb = until(&b, 5000, |v| {
        v["status"]["connection"] == "open" && v["state"]["cursor"].as_u64() > Some(5)
    })
    .await;
    assert_eq!(vb["status"]["sharing"], "follower", "{vb}");
    assert_eq!(vb["status"]["connection"], "open", "{vb}");
    let stats = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await;
    assert_eq!(stats["connections_total"], 1, "{stats}");
    a.close();
    let vb = until(&b, 1000, |v| v["status"]["sharing"] == "leader").await;
    assert_eq!(
        vb["status"]["sharing"], "leader",
        "takeover within 1 s: {vb}"
    );
    let vb = until(&b, 15_000, closed).await;
    assert_eq!(vb["status"]["connection"], "closed", "{vb}");
    let snap = request("GET", &format!("/api/runs/{run}/snapshot"), None).await;
    assert_eq!(vb["state"]["cursor"], snap["event_id"]);
    assert_eq!(
        vb["state"]["messages"][0]["content"],
        snap["state"]["messages"][0]["content"]
    );
    let stats = request("GET", &format!("/api/admin/runs/{run}/stats"), None).await;
    assert_eq!(stats["connections_total"], 2, "{stats}");
    b.close();
}

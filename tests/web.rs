//! Browser tests (headless Chromium and Firefox via `wasm-pack test`) of the
//! JS API against the reference server on loopback (`RUNSTREAM_SERVER`).
#![cfg(target_arch = "wasm32")]
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
        let thrower = Function::new_no_args("throw new Error('listener boom')");
        let _off1 = s.subscribe_events(thrower);
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

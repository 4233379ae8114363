//! ```text
//! runstream-server [--addr 127.0.0.1:8787] [--www www] [--pkg pkg] [--heartbeat-ms 15000]
//!                  [--store memory|redis://HOST:PORT] [--window N] [--replies local|worker]
//!                  [--record-frames N (default 200000, 0 = off)]
//! runstream-server produce --store redis://HOST:PORT [--run-id ID] [--seed N] [--workers N]
//!                  [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant]
//!                  [--chaos JSON] [--window N] [--runs N] [--start-at-ms UNIX_MS]
//! runstream-server produce --store redis://HOST:PORT --chat-worker [--consumer NAME]
//! ```
//!
//! `--replies worker` makes a replica only log chat sends; a chat worker
//! (`produce --chat-worker`, any number of them) answers each send once, so a
//! reply does not die with the replica that accepted its send.
//!
//! `produce` is the producer role (an agent worker): it creates one run in the
//! shared store (or `--runs N`), prints `{"event":"produce.created","run_id":…}`
//! per run, appends the runs' events in time (from `--start-at-ms` if given)
//! and exits when they are complete. API replicas on
//! the same store serve its streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use runstream_server::hub::Chaos;
use runstream_server::store::{self, Store, DEFAULT_WINDOW};
use runstream_server::{create_and_produce, router, scenario, CreateRun, Replies, Settings};

const USAGE: &str = "usage: runstream-server [--addr A] [--www DIR] [--pkg DIR] [--heartbeat-ms N] [--store memory|redis://HOST:PORT] [--window N] [--replies local|worker] [--record-frames N]\n       runstream-server produce --store redis://HOST:PORT [--run-id ID] [--seed N] [--workers N] [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant] [--chaos JSON] [--runs N] [--start-at-ms UNIX_MS]\n       runstream-server produce --store redis://HOST:PORT --chat-worker [--consumer NAME]";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("produce") {
        args.remove(0);
        return produce(args).await;
    }
    serve(args).await
}

async fn serve(args: Vec<String>) -> ExitCode {
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8787));
    let mut www = PathBuf::from("www");
    let mut pkg = PathBuf::from("pkg");
    let mut heartbeat_ms = 15_000;
    let mut store_spec = "memory".to_owned();
    let mut window = DEFAULT_WINDOW;
    let mut replies = Replies::Local;
    let mut record_frames = runstream_server::hub::MAX_RECORDED;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--addr" => match v.parse() {
                Ok(x) => addr = x,
                Err(_) => return fail(&format!("--addr: not a socket address: {v}")),
            },
            "--www" => www = PathBuf::from(v),
            "--pkg" => pkg = PathBuf::from(v),
            "--heartbeat-ms" => heartbeat_ms = v.parse().unwrap_or(15_000),
            "--store" => store_spec = v,
            "--window" => window = v.parse().unwrap_or(DEFAULT_WINDOW),
            "--record-frames" => match v.parse() {
                Ok(n) => record_frames = n,
                Err(_) => return fail("--record-frames: a number (0 = off)"),
            },
            "--replies" => match v.as_str() {
                "local" => replies = Replies::Local,
                "worker" => replies = Replies::Worker,
                _ => return fail("--replies: local or worker"),
            },
            _ => return fail(USAGE),
        }
    }
    let store = match store::open(&store_spec, window).await {
        Ok(s) => s,
        Err(e) => return fail(&format!("--store {store_spec}: {e}")),
    };
    let (app, state) = router(Settings {
        store,
        www,
        pkg,
        heartbeat_ms,
        replies,
        record_frames,
    });
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot bind {addr}: {e}")),
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let kind = state.hub.store.name();
    println!("{{\"event\":\"server.listening\",\"addr\":\"{local}\",\"url\":\"http://{local}/\",\"store\":\"{kind}\",\"pid\":{}}}", std::process::id());
    let shutdown = async move {
        wait_for_signal().await;
        // End every stream so the graceful shutdown does not wait on them.
        state.hub.restart();
        println!("{{\"event\":\"server.shutdown\"}}");
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        return fail(&format!("server error: {e}"));
    }
    ExitCode::SUCCESS
}

/// Ctrl-C or SIGTERM (what a process manager or a test harness sends).
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn produce(args: Vec<String>) -> ExitCode {
    let mut store_spec = None;
    let mut window = DEFAULT_WINDOW;
    let mut c = CreateRun::default();
    let mut chat_worker = false;
    let mut runs: u64 = 1;
    let mut start_at_ms: Option<u64> = None;
    let mut consumer = format!("worker-{}", std::process::id());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--chat-worker" {
            chat_worker = true;
            continue;
        }
        if a == "--ticks" {
            c.ticks = true;
            continue;
        }
        if a == "--instant" {
            c.instant = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        let bad = || fail(&format!("{a}: bad value {v:?}\n{USAGE}"));
        match a.as_str() {
            "--store" => store_spec = Some(v),
            "--window" => window = v.parse().unwrap_or(DEFAULT_WINDOW),
            "--run-id" => c.run_id = Some(v),
            "--consumer" => consumer = v,
            "--runs" => match v.parse() {
                Ok(x) => runs = x,
                Err(_) => return bad(),
            },
            "--start-at-ms" => match v.parse() {
                Ok(x) => start_at_ms = Some(x),
                Err(_) => return bad(),
            },
            "--seed" => match v.parse() {
                Ok(x) => c.seed = x,
                Err(_) => return bad(),
            },
            "--workers" => match v.parse() {
                Ok(x) => c.workers = Some(x),
                Err(_) => return bad(),
            },
            "--speed" => match v.parse() {
                Ok(x) => c.speed = Some(x),
                Err(_) => return bad(),
            },
            "--tokens" => match v.parse() {
                Ok(x) => c.tokens = Some(x),
                Err(_) => return bad(),
            },
            "--rate" => match v.parse() {
                Ok(x) => c.rate = Some(x),
                Err(_) => return bad(),
            },
            "--kind" => match serde_json::from_value(serde_json::Value::from(v.clone())) {
                Ok(k) => c.kind = Some(k),
                Err(_) => return bad(),
            },
            "--chaos" => match serde_json::from_str::<Chaos>(&v) {
                Ok(ch) => c.chaos = ch,
                Err(_) => return bad(),
            },
            _ => return fail(USAGE),
        }
    }
    let Some(spec) = store_spec else {
        return fail("produce: --store is required (a store the API replicas share)");
    };
    let store = match store::open(&spec, window).await {
        Ok(s) => s,
        Err(e) => return fail(&format!("--store {spec}: {e}")),
    };
    if chat_worker {
        return chat_worker_loop(store, &consumer).await;
    }
    // Several runs at once (`--runs N`, the load benchmark): ids from the store unless one is given.
    let mut ids = Vec::new();
    let mut works = Vec::new();
    for i in 0..runs.max(1) {
        let mut ci = c.clone();
        if runs > 1 {
            ci.run_id = c.run_id.as_ref().map(|p| format!("{p}{i}"));
            ci.seed = c.seed.wrapping_add(i);
        }
        let (id, work) = match create_and_produce(&store, ci).await {
            Ok(x) => x,
            Err(e) => return fail(&format!("produce: {e}")),
        };
        println!(
            "{{\"event\":\"produce.created\",\"run_id\":{},\"pid\":{}}}",
            serde_json::Value::from(id.clone()),
            std::process::id()
        );
        ids.push(id);
        works.extend(work);
    }
    if let Some(at) = start_at_ms {
        // Start appending at a wall-clock time (clients connect meanwhile).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(at.saturating_sub(now))).await;
    }
    let all = futures_util::future::join_all(works);
    tokio::select! {
        results = all => {
            for r in results {
                if let Err(e) = r {
                    return fail(&format!("produce: {e}"));
                }
            }
        },
        _ = wait_for_signal() => {
            println!("{{\"event\":\"produce.interrupted\"}}");
            return ExitCode::from(130);
        }
    }
    println!(
        "{{\"event\":\"produce.done\",\"runs\":{}}}",
        serde_json::Value::from(ids)
    );
    ExitCode::SUCCESS
}

/// The chat worker: answers every send accepted by any replica (`--replies
/// worker`), one reply per send, until SIGTERM.
async fn chat_worker_loop(store: Arc<dyn Store>, consumer: &str) -> ExitCode {
    println!(
        "{{\"event\":\"chat_worker.ready\",\"consumer\":{},\"pid\":{}}}",
        serde_json::Value::from(consumer),
        std::process::id()
    );
    let mut stop = std::pin::pin!(wait_for_signal());
    loop {
        let claimed = tokio::select! {
            r = store.claim_sends(consumer, 1000) => r,
            _ = &mut stop => return ExitCode::SUCCESS,
        };
        let sends = match claimed {
            Ok(s) => s,
            Err(e @ store::StoreError::Unsupported(_)) => {
                return fail(&format!("--chat-worker: {e}"))
            }
            Err(e) => {
                eprintln!("chat worker: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        for s in sends {
            let store = store.clone();
            tokio::spawn(async move {
                let r =
                    scenario::reply(store.clone(), s.session.clone(), s.crid.clone(), s.content)
                        .await;
                match r {
                    Ok(()) => {
                        let _ = store.ack_send(&s.queue_id).await;
                        println!(
                            "{{\"event\":\"chat_worker.replied\",\"run_id\":{},\"client_request_id\":{}}}",
                            serde_json::Value::from(s.session),
                            serde_json::Value::from(s.crid)
                        );
                    }
                    Err(e) => eprintln!("chat worker: reply to {}: {e}", s.crid),
                }
            });
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}

//! ```text
//! runstream-server [--addr 127.0.0.1:8787] [--www www] [--pkg pkg] [--heartbeat-ms 15000]
//!                  [--store memory|redis://HOST:PORT] [--window N]
//! runstream-server produce --store redis://HOST:PORT [--run-id ID] [--seed N] [--workers N]
//!                  [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant]
//!                  [--chaos JSON] [--window N]
//! ```
//!
//! `produce` is the producer role (an agent worker): it creates one run in the
//! shared store, prints `{"event":"produce.created","run_id":…}`, appends the
//! run's events in time and exits when the run is complete. API replicas on
//! the same store serve its streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use runstream_server::hub::Chaos;
use runstream_server::store::{self, DEFAULT_WINDOW};
use runstream_server::{create_and_produce, router, CreateRun, Settings};

const USAGE: &str = "usage: runstream-server [--addr A] [--www DIR] [--pkg DIR] [--heartbeat-ms N] [--store memory|redis://HOST:PORT] [--window N]\n       runstream-server produce --store redis://HOST:PORT [--run-id ID] [--seed N] [--workers N] [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant] [--chaos JSON]";

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
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
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
    let (id, work) = match create_and_produce(&store, c).await {
        Ok(x) => x,
        Err(e) => return fail(&format!("produce: {e}")),
    };
    println!(
        "{{\"event\":\"produce.created\",\"run_id\":{},\"pid\":{}}}",
        serde_json::Value::from(id.clone()),
        std::process::id()
    );
    if let Some(work) = work {
        tokio::select! {
            r = work => if let Err(e) = r {
                return fail(&format!("produce {id}: {e}"));
            },
            _ = wait_for_signal() => {
                println!("{{\"event\":\"produce.interrupted\"}}");
                return ExitCode::from(130);
            }
        }
    }
    println!(
        "{{\"event\":\"produce.done\",\"run_id\":{}}}",
        serde_json::Value::from(id)
    );
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}

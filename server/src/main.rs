//! ```text
//! runstream-server (--auth none | --jwt-secret-file F | --jwt-public-key-file F)
//!                  [--jwt-cookie NAME] [--jwt-issuer ISS] [--jwt-audience AUD]
//!                  [--publish-key-file F] [--dev] [--record-frames N]
//!                  [--addr 127.0.0.1:8787] [--www www] [--pkg pkg] [--heartbeat-ms 15000]
//!                  [--store memory|redis://HOST:PORT|redis-cluster://HOST:PORT,…] [--window N] [--replies local|worker|none]
//!                  [--retention-secs 604800] [--idle-retention-secs 2592000]
//!                  [--max-body-bytes N] [--max-connections N] [--max-runs-per-socket N]
//!                  [--client-buffer N] [--client-buffer-bytes N] [--slow-client-ms N] [--drain-ms N] [--cancel-grace-ms N] [--max-frame-bytes N] [--cors-origin ORIGIN]…
//!                  [--malloc-mmap-threshold BYTES]
//! runstream-server produce --store redis[-cluster]://HOST:PORT [--run-id ID] [--seed N] [--workers N]
//!                  [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant]
//!                  [--chaos JSON] [--window N] [--runs N] [--start-at-ms UNIX_MS]
//!                  [--retention-secs N] [--idle-retention-secs N]
//! runstream-server produce --store redis[-cluster]://HOST:PORT --chat-worker [--consumer NAME]
//!                  [--send-claim-idle-ms 30000]
//! ```
//!
//! Retention (docs/REDIS.md "Retention"): a finished run is forgotten
//! `--retention-secs` after its last write (default 7 days), an unfinished one
//! `--idle-retention-secs` after its last append, send or cancel (default 30
//! days); 0 keeps it forever. Give every process sharing a store the same values.
//!
//! Secure by default: without an auth choice the gateway refuses to start.
//! `--auth none` is the explicit choice for local development. The admin,
//! chaos, raw-append, restart and frame-log routes exist only with `--dev`,
//! and the frame log records only with `--record-frames N`.
//!
//! `--replies worker` makes a replica only log chat sends; a chat worker
//! (`produce --chat-worker`, any number of them) answers each send once, so a
//! reply does not die with the replica that accepted its send. `--replies
//! none` leaves the answers to the team's backend (the publish API's sends).
//! A send a worker took and did not answer (it died) is taken over by a live
//! worker once pending for `--send-claim-idle-ms` (default 30 000, `XAUTOCLAIM`);
//! one reply per send is enforced where replies are appended, so a slow worker
//! and the one that took its send over never both answer (docs/GATEWAY.md).
//!
//! SIGTERM drains: `/readyz` answers 503, new streams are refused, open SSE
//! streams end with `retry: 250` and WebSockets close with 1012, and the
//! process exits when they are gone or after `--drain-ms`.
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

use runstream_server::auth::{AuthMode, JwtConfig, JwtOptions};
use runstream_server::hub::Chaos;
use runstream_server::store::{
    self, Store, DEFAULT_SEND_CLAIM_IDLE_MS, DEFAULT_WINDOW, MIN_SEND_CLAIM_IDLE_MS,
};
use runstream_server::{
    create_and_produce, router, scenario, CreateRun, Limits, Replies, Settings,
};

const USAGE: &str = "usage: runstream-server (--auth none | --jwt-secret-file F | --jwt-public-key-file F) [--jwt-cookie NAME] [--jwt-issuer ISS] [--jwt-audience AUD] [--publish-key-file F] [--dev] [--record-frames N] [--addr A] [--www DIR] [--pkg DIR] [--heartbeat-ms N] [--store memory|redis://HOST:PORT|redis-cluster://HOST:PORT,…] [--window N] [--retention-secs N] [--idle-retention-secs N] [--replies local|worker|none] [--max-body-bytes N] [--max-connections N] [--max-runs-per-socket N] [--client-buffer N] [--client-buffer-bytes N] [--slow-client-ms N] [--drain-ms N] [--cancel-grace-ms N] [--max-frame-bytes N] [--cors-origin ORIGIN]… [--malloc-mmap-threshold BYTES]\n       runstream-server produce --store redis[-cluster]://HOST:PORT [--run-id ID] [--seed N] [--workers N] [--speed X] [--kind task|chat] [--tokens N] [--rate R] [--ticks] [--instant] [--chaos JSON] [--runs N] [--start-at-ms UNIX_MS] [--retention-secs N] [--idle-retention-secs N]\n       runstream-server produce --store redis[-cluster]://HOST:PORT --chat-worker [--consumer NAME] [--send-claim-idle-ms N] [--retention-secs N] [--idle-retention-secs N]";

const NO_AUTH_CHOICE: &str = "runstream-server: no auth choice. PROTOCOL §7 needs one of:\n  --jwt-secret-file FILE      HS256 tokens signed with the secret in FILE\n  --jwt-public-key-file FILE  RS256/ES256 tokens verified with the PEM public key in FILE\n  --auth none                 no authorization at all (local development only)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("produce") {
        args.remove(0);
        return produce(args).await;
    }
    serve(args).await
}

/// Default of `--malloc-mmap-threshold`: allocations of 8 KiB and more get
/// pages of their own.
const DEFAULT_MMAP_THRESHOLD: usize = 8192;

/// Memory per idle connection (issue 26). hyper gives every HTTP/1.1
/// connection a read buffer that grows to 16 KiB and an 8 KiB write buffer;
/// an SSE stream writes a few hundred bytes of headers, reads one request and
/// then only heartbeats, so almost none of those 24 KiB is ever touched. From
/// glibc's heap (brk), recycled chunks are resident whether touched or not:
/// measured 21.8 KB RSS per idle SSE connection at 5,000. With allocations of
/// `threshold` bytes and more served by `mmap`, each buffer has pages of its
/// own and only the pages written become resident: 15.6 KB per connection
/// (README/docs: benches/load.mjs, the idle-connection figures). The price is
/// one `mmap` + `munmap` per such allocation (two per connection, and large
/// replay batches), and a kernel mapping each while it lives. `0` leaves
/// glibc's default (128 KiB, adjusted dynamically). Other C libraries: no-op.
fn malloc_tuning(threshold: usize) {
    if threshold == 0 {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = libc::c_int::try_from(threshold).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any connection exists, and is thread-safe in glibc.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) };
        if ok != 1 {
            eprintln!("runstream-server: mallopt(M_MMAP_THRESHOLD, {threshold}) was refused; glibc's default stays");
        }
    }
}

/// Parses a number flag's value.
fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, ExitCode> {
    v.parse()
        .map_err(|_| fail(&format!("{flag}: a number, not {v:?}")))
}

async fn serve(args: Vec<String>) -> ExitCode {
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8787));
    let mut www = PathBuf::from("www");
    let mut pkg = PathBuf::from("pkg");
    let mut heartbeat_ms = 15_000;
    let mut store_spec = "memory".to_owned();
    let mut window = DEFAULT_WINDOW;
    let mut retention = store::Retention::default();
    let mut replies = Replies::Local;
    let mut record_frames = 0;
    let mut dev = false;
    let mut auth_none = false;
    let mut secret_file: Option<String> = None;
    let mut public_key_file: Option<String> = None;
    let mut publish_key_file: Option<String> = None;
    let mut jwt = JwtOptions::default();
    let mut limits = Limits::default();
    let mut cancel_grace_ms = runstream_server::cancel::DEFAULT_GRACE_MS;
    let mut cors_origins: Vec<String> = Vec::new();
    let mut mmap_threshold: usize = DEFAULT_MMAP_THRESHOLD;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--dev" {
            dev = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        let r: Result<(), ExitCode> = (|| {
            match a.as_str() {
                "--addr" => {
                    addr = v
                        .parse()
                        .map_err(|_| fail(&format!("--addr: not a socket address: {v}")))?
                }
                "--www" => www = PathBuf::from(&v),
                "--pkg" => pkg = PathBuf::from(&v),
                "--heartbeat-ms" => heartbeat_ms = num(&a, &v)?,
                "--store" => store_spec = v.clone(),
                "--window" => window = num(&a, &v)?,
                "--retention-secs" => retention.finished_s = num(&a, &v)?,
                "--idle-retention-secs" => retention.idle_s = num(&a, &v)?,
                "--record-frames" => record_frames = num(&a, &v)?,
                "--auth" if v == "none" => auth_none = true,
                "--auth" => return Err(fail("--auth: the only value is `none` (JWTs: --jwt-secret-file or --jwt-public-key-file)")),
                "--jwt-secret-file" => secret_file = Some(v.clone()),
                "--jwt-public-key-file" => public_key_file = Some(v.clone()),
                "--jwt-cookie" => jwt.cookie = Some(v.clone()),
                "--jwt-issuer" => jwt.issuer = Some(v.clone()),
                "--jwt-audience" => jwt.audience = Some(v.clone()),
                "--publish-key-file" => publish_key_file = Some(v.clone()),
                "--max-body-bytes" => limits.max_body_bytes = num(&a, &v)?,
                "--max-connections" => limits.max_connections = num(&a, &v)?,
                "--max-runs-per-socket" => limits.max_runs_per_socket = num(&a, &v)?,
                "--client-buffer" => limits.client_buffer = num(&a, &v)?,
                "--client-buffer-bytes" => limits.client_buffer_bytes = num(&a, &v)?,
                "--slow-client-ms" => limits.slow_client_ms = num(&a, &v)?,
                "--drain-ms" => limits.drain_ms = num(&a, &v)?,
                "--cancel-grace-ms" => cancel_grace_ms = num(&a, &v)?,
                "--max-frame-bytes" => limits.max_frame_bytes = num(&a, &v)?,
                "--malloc-mmap-threshold" => mmap_threshold = num(&a, &v)?,
                "--cors-origin" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) || v.ends_with('/') {
                        return Err(fail("--cors-origin: an origin such as https://app.example.com (scheme, host, optional port; no path)"));
                    }
                    cors_origins.push(v.clone())
                }
                "--replies" => match v.as_str() {
                    "local" => replies = Replies::Local,
                    "worker" => replies = Replies::Worker,
                    "none" => replies = Replies::None,
                    _ => return Err(fail("--replies: local, worker or none")),
                },
                _ => return Err(fail(USAGE)),
            }
            Ok(())
        })();
        if let Err(code) = r {
            return code;
        }
    }
    malloc_tuning(mmap_threshold);
    if record_frames > 0 && !dev {
        return fail("--record-frames: the frame log is read at /api/admin/frames, which exists only with --dev");
    }
    let auth = match (auth_none, secret_file, public_key_file) {
        (false, None, None) => return fail(NO_AUTH_CHOICE),
        (true, None, None) => AuthMode::None,
        (false, Some(f), None) => match JwtConfig::hs256_file(&f, jwt) {
            Ok(c) => AuthMode::Jwt(Box::new(c)),
            Err(e) => return fail(&format!("--jwt-secret-file: {e}")),
        },
        (false, None, Some(f)) => match JwtConfig::public_key_file(&f, jwt) {
            Ok(c) => AuthMode::Jwt(Box::new(c)),
            Err(e) => return fail(&format!("--jwt-public-key-file: {e}")),
        },
        _ => return fail("choose one of --auth none, --jwt-secret-file and --jwt-public-key-file"),
    };
    let publish_key = match publish_key_file {
        Some(f) => match runstream_server::auth::read_key_file(&f) {
            Ok(k) if k.len() >= 16 => Some(k),
            Ok(_) => return fail("--publish-key-file: the key must be at least 16 bytes"),
            Err(e) => return fail(&format!("--publish-key-file: {e}")),
        },
        None => None,
    };
    let auth_name = match &auth {
        AuthMode::None => "none".to_owned(),
        AuthMode::Jwt(j) => format!("jwt-{:?}", j.algorithm()),
    };
    if let Err(e) = retention.check() {
        return fail(&e);
    }
    if let Some(w) = retention.warning() {
        eprintln!("runstream-server: warning: {w}");
    }
    let store = match store::open_with(&store_spec, window, retention).await {
        Ok(s) => s,
        Err(e) => return fail(&format!("--store {}: {e}", store::redact(&store_spec))),
    };
    let publishing = publish_key.is_some();
    let (app, state) = router(Settings {
        store,
        www,
        pkg,
        heartbeat_ms,
        replies,
        record_frames,
        auth: Arc::new(auth),
        publish_key,
        dev,
        limits,
        cancel_grace_ms,
        cors_origins,
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
    println!("{{\"event\":\"server.listening\",\"addr\":\"{local}\",\"url\":\"http://{local}/\",\"store\":\"{kind}\",\"auth\":\"{auth_name}\",\"dev\":{dev},\"publish\":{publishing},\"pid\":{}}}", std::process::id());
    let hub = state.hub.clone();
    let shutdown = async move {
        wait_for_signal().await;
        // Drain: streams end so their clients resume on another replica at once.
        hub.drain();
        println!("{{\"event\":\"server.draining\"}}");
    };
    let listener = runstream_server::stall::StallListener::new(
        listener,
        std::time::Duration::from_millis(limits.slow_client_ms),
        state.metrics.clone(),
    );
    // into_make_service: the route table is built once; `axum::serve(l, router)`
    // deep-cloned it for every connection (~40 KB each: massif, 5,000 idle SSE clients).
    let server = axum::serve(listener, app.into_make_service()).with_graceful_shutdown(shutdown);
    let drained = state.hub.draining.subscribe();
    let deadline = async move {
        let mut d = drained;
        let _ = d.wait_for(|x| *x).await;
        tokio::time::sleep(std::time::Duration::from_millis(limits.drain_ms)).await;
    };
    // Upgraded WebSockets are not connections the graceful shutdown waits
    // for: their sessions are waited for here, so each client gets its 1012
    // close frame before the process exits.
    let sockets = state.hub.clone();
    let served = async move {
        server.await?;
        while sockets.open_counts().1 > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                return fail(&format!("server error: {e}"));
            }
            println!("{{\"event\":\"server.shutdown\",\"reason\":\"drained\"}}");
        }
        _ = deadline => println!("{{\"event\":\"server.shutdown\",\"reason\":\"drain_deadline\"}}"),
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
    let mut retention = store::Retention::default();
    let mut c = CreateRun::default();
    let mut chat_worker = false;
    let mut runs: u64 = 1;
    let mut start_at_ms: Option<u64> = None;
    let mut consumer = format!("worker-{}", std::process::id());
    let mut claim_idle_ms = DEFAULT_SEND_CLAIM_IDLE_MS;
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
            "--retention-secs" => match v.parse() {
                Ok(x) => retention.finished_s = x,
                Err(_) => return bad(),
            },
            "--idle-retention-secs" => match v.parse() {
                Ok(x) => retention.idle_s = x,
                Err(_) => return bad(),
            },
            "--run-id" => c.run_id = Some(v),
            "--consumer" => consumer = v,
            "--send-claim-idle-ms" => match v.parse() {
                Ok(x) => claim_idle_ms = x,
                Err(_) => return bad(),
            },
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
    if let Err(e) = retention.check() {
        return fail(&e);
    }
    if claim_idle_ms < MIN_SEND_CLAIM_IDLE_MS {
        // Shorter than a heartbeat period can protect: live consumers' sends would be taken.
        return fail(&format!(
            "--send-claim-idle-ms: at least {MIN_SEND_CLAIM_IDLE_MS}"
        ));
    }
    let store = match store::open_with(&spec, window, retention).await {
        Ok(s) => s,
        Err(e) => return fail(&format!("--store {}: {e}", store::redact(&spec))),
    };
    if chat_worker {
        return chat_worker_loop(store, &consumer, claim_idle_ms).await;
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
async fn chat_worker_loop(store: Arc<dyn Store>, consumer: &str, claim_idle_ms: u64) -> ExitCode {
    println!(
        "{{\"event\":\"chat_worker.ready\",\"consumer\":{},\"pid\":{}}}",
        serde_json::Value::from(consumer),
        std::process::id()
    );
    let mut stop = std::pin::pin!(wait_for_signal());
    // The sends being answered here: kept by each claim's heartbeat, never taken twice.
    let answering: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    // Claims (and so heartbeats) at least three times per claim idle time.
    let block_ms = (claim_idle_ms / 3).clamp(50, 1000);
    // At most MAX_SENDS_IN_FLIGHT replies at once: a claim takes up to 16, so it claims
    // only with room for 16; while full it heartbeats what it holds every block_ms.
    let room = Arc::new(tokio::sync::Semaphore::new(store::MAX_SENDS_IN_FLIGHT));
    let held = |a: &std::sync::Mutex<std::collections::HashSet<String>>| -> Vec<String> {
        a.lock()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    };
    loop {
        while room.available_permits() < 16 {
            let freed = tokio::select! {
                p = room.acquire_many(16) => p.is_ok(),
                _ = tokio::time::sleep(std::time::Duration::from_millis(block_ms)) => false,
                _ = &mut stop => return ExitCode::SUCCESS,
            };
            if !freed {
                let ids = held(&answering);
                if let Err(e) = store.heartbeat_sends(consumer, &ids).await {
                    eprintln!("chat worker: heartbeat: {e}");
                }
            }
        }
        let ids = held(&answering);
        let claimed = tokio::select! {
            r = store.claim_sends(consumer, block_ms, claim_idle_ms, &ids) => r,
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
            println!(
                "{{\"event\":\"chat_worker.claimed\",\"run_id\":{},\"client_request_id\":{}}}",
                serde_json::Value::from(s.session.as_str()),
                serde_json::Value::from(s.crid.as_str())
            );
            let store = store.clone();
            if let Ok(mut a) = answering.lock() {
                a.insert(s.queue_id.clone());
            }
            let answering = answering.clone();
            // A permit per reply in flight (the loop above leaves room for a whole claim).
            let permit = room.clone().try_acquire_owned().ok();
            tokio::spawn(async move {
                let _permit = permit;
                let r =
                    scenario::reply(store.clone(), s.session.clone(), s.crid.clone(), s.content)
                        .await;
                if let Ok(mut a) = answering.lock() {
                    a.remove(&s.queue_id);
                }
                match r {
                    Ok(()) => {
                        let _ = store.ack_send(&s.queue_id).await;
                        println!(
                            "{{\"event\":\"chat_worker.replied\",\"run_id\":{},\"client_request_id\":{}}}",
                            serde_json::Value::from(s.session),
                            serde_json::Value::from(s.crid)
                        );
                    }
                    Err(store::StoreError::ReplyTaken(_)) => {
                        // Another consumer answered it (this one was slow, or took it over).
                        let _ = store.ack_send(&s.queue_id).await;
                        println!(
                            "{{\"event\":\"chat_worker.reply_taken\",\"run_id\":{},\"client_request_id\":{}}}",
                            serde_json::Value::from(s.session),
                            serde_json::Value::from(s.crid)
                        );
                    }
                    // Left pending: a live consumer takes it over after the claim idle time.
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

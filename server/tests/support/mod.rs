//! Helpers shared by the server's test files: a real `redis-server` per test,
//! servers on either store, a minimal HTTP/1.1 client and SSE parsing.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runstream_server::store::{self, Store, DEFAULT_WINDOW};
use runstream_server::{router, Replies, Settings};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `redis-server` on a free loopback port with a temporary directory,
/// no persistence; killed and its directory removed on drop (also on panic).
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

impl RedisServer {
    /// Starts one, or `None` (with a message) when `redis-server` is not installed.
    pub async fn start() -> Option<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "SKIPPED: redis-server is not installed (./scripts/setup.sh installs it from apt)"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "runstream-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for _ in 0..5 {
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no", "--databases", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut me = Self {
                child,
                dir: dir.clone(),
                url: format!("redis://127.0.0.1:{port}"),
            };
            for _ in 0..100 {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = s.write_all(b"PING\r\n").await;
                    let mut buf = [0u8; 7];
                    if tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf))
                        .await
                        .is_ok_and(|r| r.is_ok())
                        && &buf == b"+PONG\r\n"
                    {
                        return Some(me);
                    }
                }
                if me.child.try_wait().ok().flatten().is_some() {
                    break; // lost the port race: try another
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(me);
        }
        panic!("redis-server did not start");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
}

/// A test's backend: the store (and the Redis server behind it, kept alive).
pub struct Backend {
    pub kind: Kind,
    pub redis: Option<RedisServer>,
    pub window: u64,
}

impl Backend {
    /// `None` when Redis is asked for and not installed (the test is skipped).
    pub async fn new(kind: Kind) -> Option<Self> {
        Self::with_window(kind, DEFAULT_WINDOW).await
    }

    pub async fn with_window(kind: Kind, window: u64) -> Option<Self> {
        let redis = match kind {
            Kind::Memory => None,
            Kind::Redis => Some(RedisServer::start().await?),
        };
        Some(Self {
            kind,
            redis,
            window,
        })
    }

    /// A fresh store handle (for Redis: a new connection to the same server,
    /// like another process; for memory: a new, empty store).
    pub async fn store(&self) -> Arc<dyn Store> {
        let spec = self
            .redis
            .as_ref()
            .map_or("memory".to_owned(), |r| r.url.clone());
        store::open(&spec, self.window).await.unwrap()
    }

    /// A server (a replica) on a fresh store handle; returns its address.
    pub async fn server(&self) -> String {
        start(self.store().await).await
    }
}

/// Serves the router over `store` on a free loopback port.
pub async fn start(store: Arc<dyn Store>) -> String {
    start_with(store, Replies::Local).await
}

/// [`start`] with a choice of who answers chat sends.
pub async fn start_with(store: Arc<dyn Store>, replies: Replies) -> String {
    start_settings(Settings::dev(store, replies, 200)).await
}

/// Serves the router with `settings` on a free loopback port.
pub async fn start_settings(settings: Settings) -> String {
    let (app, _) = router(settings);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A minimal HTTP/1.1 client: status, headers, de-chunked body (until EOF or timeout).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, Vec<u8>) {
    http_for(addr, method, path, headers, body, Duration::from_secs(10)).await
}

/// [`http`] reading the response for at most `limit`.
pub async fn http_for(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    limit: Duration,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut raw)).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap_or(0);
            if n == 0 || rest.len() < eol + 2 + n {
                if n > 0 {
                    out.extend_from_slice(&rest[(eol + 2).min(rest.len())..]);
                }
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[(eol + 2 + n + 2).min(rest.len())..];
        }
        body = out;
    }
    (status, head, body)
}

pub async fn create(addr: &str, body: Value) -> String {
    let (st, _, b) = http(
        addr,
        "POST",
        "/api/admin/runs",
        &[],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(st, 201);
    serde_json::from_slice::<Value>(&b).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `data:` payloads of an SSE body, in order.
pub fn sse_frames(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|f| {
            f.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

pub fn ids(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|v| v["event_id"].as_u64())
        .collect()
}

/// Runs a test body on the memory store and on Redis (skipped without redis-server).
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                let b = super::support::Backend::new(super::support::Kind::Memory).await.unwrap();
                super::$name(b).await;
            }
            #[tokio::test]
            async fn redis() {
                let Some(b) = super::support::Backend::new(super::support::Kind::Redis).await else {
                    return;
                };
                super::$name(b).await;
            }
        }
    )*};
}

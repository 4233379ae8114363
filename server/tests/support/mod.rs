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

/// A Redis Cluster of three masters on loopback (`redis-server --cluster-enabled yes`,
/// then `redis-cli --cluster create`), each node with its own temporary directory and
/// no persistence; every node is killed and the directory removed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    dir: PathBuf,
    pub ports: Vec<u16>,
    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub url: String,
}

impl RedisCluster {
    /// Starts one (3 masters, no replicas) and waits for `cluster_state:ok` on every
    /// node, or `None` (with a message) when `redis-server`/`redis-cli` is not installed.
    pub async fn start() -> Option<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        for tool in ["redis-server", "redis-cli"] {
            if Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_err()
            {
                eprintln!(
                    "SKIPPED: {tool} is not installed (./scripts/setup.sh installs it from apt)"
                );
                return None;
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "runstream-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = Self {
            nodes: Vec::new(),
            dir: dir.clone(),
            ports: Vec::new(),
            url: String::new(),
        };
        for _ in 0..3 {
            me.start_node().await;
        }
        let addrs: Vec<String> = me.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree that all slots are served before a test talks to it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &me.ports {
            loop {
                let info = redis_cli(*port, &["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "cluster node {port} not ok: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        me.url = format!("redis-cluster://{}", addrs.join(","));
        Some(me)
    }

    /// Starts one cluster-enabled node on a free port (retrying a lost port race).
    async fn start_node(&mut self) {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&self.dir)
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            for _ in 0..100 {
                if redis_cli(port, &["PING"]).trim() == "PONG" {
                    self.nodes.push(child);
                    self.ports.push(port);
                    return;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // lost the port race: try another
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("a cluster node did not start");
    }

    /// `CLUSTER KEYSLOT key`, asked of the cluster itself.
    pub fn keyslot(&self, key: &str) -> u16 {
        redis_cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The port of the master serving `slot` (`CLUSTER NODES` lists each master's
    /// `<from>-<to>` slot ranges).
    pub fn master_of(&self, slot: u16) -> u16 {
        let nodes = redis_cli(self.ports[0], &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let port: u16 = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap();
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        return port;
                    }
                }
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// Runs `redis-cli -p <port of the master of key's slot> args…`.
    pub fn cli_for_key(&self, key: &str, args: &[&str]) -> String {
        redis_cli(self.master_of(self.keyslot(key)), args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
        }
        for c in &mut self.nodes {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p port args…`'s stdout ("" if it could not run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
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
    /// A 3-master Redis Cluster ([`RedisCluster`]).
    Cluster,
}

/// A test's backend: the store (and the Redis server or cluster behind it, kept alive).
pub struct Backend {
    pub kind: Kind,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    pub window: u64,
}

impl Backend {
    /// `None` when Redis is asked for and not installed (the test is skipped).
    pub async fn new(kind: Kind) -> Option<Self> {
        Self::with_window(kind, DEFAULT_WINDOW).await
    }

    pub async fn with_window(kind: Kind, window: u64) -> Option<Self> {
        let (mut redis, mut cluster) = (None, None);
        match kind {
            Kind::Memory => {}
            Kind::Redis => redis = Some(RedisServer::start().await?),
            Kind::Cluster => cluster = Some(RedisCluster::start().await?),
        }
        Some(Self {
            kind,
            redis,
            cluster,
            window,
        })
    }

    /// The `--store` spec of this backend (`memory`, `redis://…` or `redis-cluster://…`).
    pub fn spec(&self) -> String {
        match (&self.redis, &self.cluster) {
            (Some(r), _) => r.url.clone(),
            (_, Some(c)) => c.url.clone(),
            _ => "memory".to_owned(),
        }
    }

    /// `redis-cli args…` on the Redis node holding `key` (the master of its slot on a
    /// cluster): a key on another node would answer `MOVED`, so this also proves placement.
    pub fn cli_for_key(&self, key: &str, args: &[&str]) -> String {
        match (&self.redis, &self.cluster) {
            (Some(r), _) => {
                let port = r
                    .url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                redis_cli(port, args)
            }
            (_, Some(c)) => c.cli_for_key(key, args),
            _ => panic!("the memory store has no Redis"),
        }
    }

    /// A fresh store handle (for Redis: a new connection to the same server,
    /// like another process; for memory: a new, empty store).
    pub async fn store(&self) -> Arc<dyn Store> {
        store::open(&self.spec(), self.window).await.unwrap()
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
    let slow = std::time::Duration::from_millis(settings.limits.slow_client_ms);
    let (app, state) = router(settings);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // The production listener: every connection's writes bounded in time.
    let l = runstream_server::stall::StallListener::new(l, slow, state.metrics.clone());
    tokio::spawn(async move { axum::serve(l, app.into_make_service()).await.unwrap() });
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

/// Runs a test body on the shared stores: one Redis and a 3-master Redis Cluster
/// (skipped without redis-server).
#[macro_export]
macro_rules! shared_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn redis() {
                let Some(b) = super::support::Backend::new(super::support::Kind::Redis).await else {
                    return;
                };
                super::$name(b).await;
            }
            #[tokio::test]
            async fn cluster() {
                let Some(b) = super::support::Backend::new(super::support::Kind::Cluster).await else {
                    return;
                };
                super::$name(b).await;
            }
        }
    )*};
}

/// Runs a test body on every store: memory, one Redis, and a 3-master Redis Cluster
/// (the last two skipped without redis-server).
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
            #[tokio::test]
            async fn cluster() {
                let Some(b) = super::support::Backend::new(super::support::Kind::Cluster).await else {
                    return;
                };
                super::$name(b).await;
            }
        }
    )*};
}

//! `runstream-server [--addr 127.0.0.1:8787] [--www www] [--pkg pkg] [--heartbeat-ms 15000]`

use std::net::SocketAddr;
use std::path::PathBuf;

use runstream_server::{router, Settings};

#[tokio::main]
async fn main() {
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8787));
    let mut settings = Settings {
        www: PathBuf::from("www"),
        pkg: PathBuf::from("pkg"),
        heartbeat_ms: 15_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--addr" => match v.parse() {
                Ok(x) => addr = x,
                Err(_) => return eprintln!("--addr: not a socket address: {v}"),
            },
            "--www" => settings.www = PathBuf::from(v),
            "--pkg" => settings.pkg = PathBuf::from(v),
            "--heartbeat-ms" => settings.heartbeat_ms = v.parse().unwrap_or(15_000),
            _ => {
                return eprintln!(
                    "usage: runstream-server [--addr A] [--www DIR] [--pkg DIR] [--heartbeat-ms N]"
                )
            }
        }
    }
    let (app, state) = router(settings);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return eprintln!("cannot bind {addr}: {e}"),
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("{{\"event\":\"server.listening\",\"addr\":\"{local}\",\"url\":\"http://{local}/\"}}");
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        // End every stream so the graceful shutdown does not wait on them.
        state.hub.restart();
        println!("{{\"event\":\"server.shutdown\"}}");
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("server error: {e}");
    }
}

//! ```text
//! runstream-doctor <base-url> [--run ID] [--token T] [--publish-key K | --publish-key-file F]
//!                  [--origin URL] [--hold SECONDS] [--page-origin ORIGIN] [--session ID]
//!                  [--ca-file PEM] [--json]
//! ```
//!
//! Checks a runstream server (the gateway, the TypeScript kit, or a team's
//! own) through whatever sits in front of it, against PROTOCOL.md, and prints
//! each finding with its fix (SERVER.md §3). Exit 0: no `error` finding; 1:
//! at least one; 2: usage.
//!
//! With a publish key it creates its own probe runs (and cancels and ends
//! only those); with `--run` it checks what it can on that run; with
//! `--origin` it runs the same probes against the origin and says which hop
//! differs. Probes run concurrently: with the default `--hold 40` a full
//! check takes about 45 s.

mod findings;
mod net;
mod probes;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use findings::{Id, Report, Severity};

const USAGE: &str = "usage: runstream-doctor <base-url> [--run ID] [--token T] [--publish-key K | --publish-key-file F] [--origin URL] [--hold SECONDS] [--page-origin ORIGIN] [--session ID] [--ca-file PEM] [--json]";

/// Default of `--hold` (seconds): longer than the 30 s idle timeouts some proxies and load balancers have.
const DEFAULT_HOLD_S: u64 = 40;

struct Args {
    base: net::Base,
    origin: Option<net::Base>,
    json: bool,
    options: probes::Options,
}

fn parse(args: Vec<String>) -> Result<Args, String> {
    let mut base = None;
    let mut origin = None;
    let mut json = false;
    let mut o = probes::Options {
        run: None,
        token: None,
        publish_key: None,
        hold: Duration::from_secs(DEFAULT_HOLD_S),
        page_origin: None,
        ca_pem: None,
        session: None,
        is_origin: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--json" {
            json = true;
            continue;
        }
        if a == "-h" || a == "--help" {
            return Err(String::new());
        }
        if !a.starts_with("--") {
            if base.is_some() {
                return Err(format!("one base URL, not also {a:?}"));
            }
            base = Some(net::Base::parse(&a)?);
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--run" => o.run = Some(v),
            "--session" => o.session = Some(v),
            "--token" => o.token = Some(v),
            "--publish-key" => o.publish_key = Some(v),
            "--publish-key-file" => {
                let k = std::fs::read_to_string(&v)
                    .map_err(|e| format!("--publish-key-file {v}: {e}"))?;
                o.publish_key = Some(k.trim().to_owned());
            }
            "--origin" => origin = Some(net::Base::parse(&v)?),
            "--hold" => {
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--hold: seconds, not {v:?}"))?;
                if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
                    return Err(format!("--hold: 0 < seconds ≤ 3600, not {v}"));
                }
                o.hold = Duration::from_secs_f64(s);
            }
            "--page-origin" => o.page_origin = Some(v.trim_end_matches('/').to_owned()),
            "--ca-file" => {
                o.ca_pem = Some(std::fs::read(&v).map_err(|e| format!("--ca-file {v}: {e}"))?)
            }
            _ => return Err(format!("unknown flag {a}")),
        }
    }
    let base = base.ok_or("a base URL is required (e.g. https://app.example.com)")?;
    Ok(Args {
        base,
        origin,
        json,
        options: o,
    })
}

/// Says, for each public finding, whether the origin does the same, and adds
/// the origin's own errors and warnings.
fn compare(mut public: Report, origin: Report) -> Report {
    for f in &mut public.findings {
        if f.severity == Severity::Info || f.id == Id::Http1 {
            continue;
        }
        if origin.has(f.id, Severity::Warn) {
            f.message
                .push_str(" [the origin does the same: fix the server]");
        } else if origin.checked.contains(&f.id) {
            f.message.push_str(
                " [the origin does not: a hop between the public URL and the origin causes it]",
            );
        }
    }
    for f in origin.findings {
        if f.severity == Severity::Info || f.id == Id::Http1 || public.has(f.id, Severity::Warn) {
            continue;
        }
        public.add(f.id, f.severity, format!("[origin] {}", f.message));
    }
    public.settle();
    public
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("runstream-doctor: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match &args.origin {
        None => probes::diagnose(args.base.clone(), args.options.clone()).await,
        Some(origin) => {
            let mut at_origin = args.options.clone();
            at_origin.is_origin = true;
            let (p, o) = tokio::join!(
                probes::diagnose(args.base.clone(), args.options.clone()),
                probes::diagnose(origin.clone(), at_origin)
            );
            compare(p, o)
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        let mut header = format!("runstream-doctor {}", args.base.url);
        if let Some(o) = &args.origin {
            header.push_str(&format!(" (compared with the origin {})", o.url));
        }
        header.push_str(&format!(" — {:.1} s", started.elapsed().as_secs_f64()));
        print!("{}", report.to_text(&header));
    }
    if report.errors() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_the_hop_and_adds_the_origins_own_errors() {
        let mut public = Report::default();
        public.error(Id::Buffering, "held");
        public.error(Id::Heartbeat, "silent");
        public.warn(Id::Http1, "HTTP/1.1");
        let mut origin = Report::default();
        origin.check(Id::Buffering);
        origin.error(Id::Heartbeat, "silent too");
        origin.error(Id::Snapshot, "differs");
        origin.warn(Id::Http1, "plain http to the origin");
        let r = compare(public, origin);
        let msg = |id| {
            r.findings
                .iter()
                .find(|f| f.id == id)
                .unwrap()
                .message
                .clone()
        };
        assert!(msg(Id::Buffering).contains("the origin does not"));
        assert!(msg(Id::Heartbeat).contains("the origin does the same"));
        assert!(msg(Id::Snapshot).starts_with("[origin]"));
        assert_eq!(
            msg(Id::Http1),
            "HTTP/1.1",
            "the origin's hop is not the browser's"
        );
        assert_eq!(r.errors(), 3);
    }

    #[test]
    fn usage_errors_and_flags() {
        let args = |v: &[&str]| parse(v.iter().map(|s| s.to_string()).collect());
        assert!(args(&[]).is_err());
        assert!(args(&["ftp://x"]).is_err());
        assert!(args(&["http://x", "--hold"]).is_err());
        assert!(args(&["http://x", "--hold", "0"]).is_err());
        assert!(args(&["http://x", "--bogus", "1"]).is_err());
        let a = args(&["https://x/prefix/", "--hold", "6", "--run", "r1", "--json"]).unwrap();
        assert_eq!(a.options.hold, Duration::from_secs(6));
        assert_eq!(
            a.base.stream("r 1"),
            "https://x/prefix/api/stream/runs/r%201"
        );
        assert!(a.json && a.options.run.as_deref() == Some("r1"));
    }
}

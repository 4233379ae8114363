//! The cost of PROTOCOL §7's check per request: `Gate::authenticate` on a
//! valid token of each algorithm the gateway takes (HS256, ES256, RS256), a
//! forged one, and the publish key, in µs per check (median of 7 rounds),
//! printed side by side: `cargo run --release -p runstream-server --example auth_check`.
//! (An example, not a `cargo bench`: a bench build of the workspace compiles
//! the `runstream` cdylib twice, with and without `panic = "abort"`, into one
//! file name.)
//! Keys come from `openssl` (as a deployment's would).

use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use runstream_server::auth::{AuthMode, Credentials, Gate, JwtConfig, JwtOptions};
use runstream_server::metrics::Metrics;
use runstream_server::store::memory::MemoryStore;
use runstream_server::store::Store;
use serde_json::json;

const ITERS: u32 = 2000;

fn per_check_us(gate: &Gate, token: &str, expect_ok: bool) -> f64 {
    let mut rounds = Vec::new();
    for _ in 0..7 {
        let t0 = Instant::now();
        for _ in 0..ITERS {
            let r = gate.authenticate(Credentials {
                bearer: Some(std::hint::black_box(token)),
                cookies: None,
            });
            assert_eq!(r.is_ok(), expect_ok);
        }
        rounds.push(t0.elapsed().as_secs_f64() * 1e6 / f64::from(ITERS));
    }
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn openssl(args: &[&str]) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl");
    assert!(ok.success());
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runstream-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("ec.pem"),
    ]);
    openssl(&["pkey", "-pubout", "-in", &p("ec.pem"), "-out", &p("ec.pub")]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-pubout",
        "-in",
        &p("rsa.pem"),
        "-out",
        &p("rsa.pub"),
    ]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(10));
    let metrics = Arc::new(Metrics::new());
    let gate = |mode: AuthMode| {
        Gate::new(
            Arc::new(mode),
            Some(b"publish-key-of-the-benchmark".to_vec()),
            store.clone(),
            metrics.clone(),
        )
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        json!({"sub": "bench", "exp": exp, "runs": ["run_1", "run_2"], "sessions": ["s1"]});
    let secret = b"a-benchmark-secret-of-32-bytes!!";
    let hs = gate(AuthMode::Jwt(Box::new(JwtConfig::new(
        DecodingKey::from_secret(secret),
        Algorithm::HS256,
        JwtOptions::default(),
    ))));
    let es = gate(AuthMode::Jwt(Box::new(
        JwtConfig::public_key_file(&p("ec.pub"), JwtOptions::default()).unwrap(),
    )));
    let rs = gate(AuthMode::Jwt(Box::new(
        JwtConfig::public_key_file(&p("rsa.pub"), JwtOptions::default()).unwrap(),
    )));
    let none = gate(AuthMode::None);
    let hs_token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"another"),
    )
    .unwrap();
    let es_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&std::fs::read(p("ec.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let rs_token = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(p("rsa.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    println!("auth check per request (Gate::authenticate), median of 7 × {ITERS}:");
    println!(
        "  --auth none               {:>8.2} µs",
        per_check_us(&none, &hs_token, true)
    );
    println!(
        "  publish key               {:>8.2} µs",
        per_check_us(&hs, "publish-key-of-the-benchmark", true)
    );
    println!(
        "  HS256 valid               {:>8.2} µs",
        per_check_us(&hs, &hs_token, true)
    );
    println!(
        "  HS256 forged              {:>8.2} µs",
        per_check_us(&hs, &forged, false)
    );
    println!(
        "  ES256 valid (P-256)       {:>8.2} µs",
        per_check_us(&es, &es_token, true)
    );
    println!(
        "  RS256 valid (2048 bits)   {:>8.2} µs",
        per_check_us(&rs, &rs_token, true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

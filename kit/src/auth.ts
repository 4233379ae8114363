/**
 * Authorization (PROTOCOL §7, SERVER.md §1/§2): the `auth` option of
 * `createRunstream` is either your own function, called per request (and per
 * WebSocket frame) with an {@link AuthContext}, or `jwtAuth(...)`, which
 * verifies JWTs with `jose` exactly as the gateway verifies them with
 * `jsonwebtoken` (same claims, same algorithms, 30 s leeway, same answers).
 */
import { createHash, createPublicKey, timingSafeEqual, type KeyObject } from "node:crypto";
import { errors as joseErrors, jwtVerify } from "jose";

/** What a caller asks to do. `publish` reaches your function only for a caller without the publish key (see {@link Authorize}). */
export type AuthAction = "read" | "cancel" | "send" | "publish";

/** What an authorizer is told about a request. */
export interface AuthContext {
  /** The HTTP request (for a WebSocket frame: the upgrade request). */
  request: Request;
  /**
   * Where the credentials are: the request's headers, or for a WebSocket
   * frame the frame's `headers` object (its `Authorization`) plus the
   * upgrade request's `Cookie`.
   */
  headers: Headers;
  /** The action. */
  action: AuthAction;
  /** The run read or cancelled; for a send the session's chat run (its id is the session id); `""` for publish. */
  runId: string;
  /** For a send, the session sent into; otherwise the session the run was created with, if any. */
  sessionId: string | undefined;
  /** Whether the run exists (an unknown run is answered 404 after "allow", 403 after "forbidden": ids cannot be probed). */
  runExists: boolean;
  /** The session the run was created with (its chat session, or `session_id` given when it was published). */
  runSessionId: string | undefined;
}

/** An authorizer's answer. */
export type AuthDecision = "allow" | "unauthorized" | "forbidden";

/** Why a request was denied (logged and counted; never sent to the caller). */
export type DenyReason =
  | "missing"
  | "malformed"
  | "bad_signature"
  | "wrong_algorithm"
  | "expired"
  | "no_expiry"
  | "invalid_claims"
  | "not_granted"
  | "publisher_send"
  | "unknown_run";

/** An answer with details: when the credentials expire (streams end then) and who the caller is (logged). */
export interface AuthGrant {
  /** The decision. */
  decision: AuthDecision;
  /** Unix ms when the credentials stop being valid: an open stream ends then, and a WebSocket subscription gets `unauthorized`. */
  expiresAtMs?: number | undefined;
  /** The caller (a JWT's `sub`): logged, never trusted for access. */
  subject?: string | undefined;
  /** Why it was denied. */
  reason?: DenyReason | undefined;
}

/**
 * Decides a request. Called for every browser route (stream, snapshot, send,
 * cancel, and each WebSocket subscribe/send/cancel frame); also for a publish
 * route when the caller does not hold the publish key, where only
 * "unauthorized" (401) or "forbidden" (403) can result: the publish API is
 * opened by the key alone.
 */
export type Authorize = (ctx: AuthContext) => AuthDecision | AuthGrant | Promise<AuthDecision | AuthGrant>;

/** Clock leeway on `exp`/`nbf` (PROTOCOL §7: 30 s in every server). */
export const LEEWAY_S = 30;
/** The default cookie a token is read from. */
export const DEFAULT_COOKIE = "runstream_token";
/** Longest token read (longer ones are refused as malformed). */
export const MAX_TOKEN_BYTES = 8 * 1024;
/** Most entries in a token's `runs` or `sessions` claim. */
export const MAX_GRANTS = 1024;

/** Options of {@link jwtAuth} besides the key. */
export interface JwtOptions {
  /** The cookie a token is read from when there is no `Authorization` header (default `runstream_token`). */
  cookie?: string | undefined;
  /** Checked when set (`iss`). */
  issuer?: string | undefined;
  /** Checked when set (`aud`). */
  audience?: string | undefined;
}

/** The key of {@link jwtAuth}: a shared HS256 secret, or a PEM public key (RSA: RS256; EC P-256: ES256). */
export type JwtKey = { secret: string | Uint8Array } | { publicKey: string };

/** The bearer token of an `Authorization: Bearer <token>` value. */
export function bearer(value: string | null): string | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  const sp = v.indexOf(" ");
  if (sp < 0) return undefined;
  if (v.slice(0, sp).toLowerCase() !== "bearer") return undefined;
  const t = v.slice(sp + 1).trim();
  return t === "" ? undefined : t;
}

/** Cookie `name` of a `Cookie` header. */
export function cookie(header: string | null, name: string): string | undefined {
  if (header === null) return undefined;
  for (const kv of header.split(";")) {
    const eq = kv.indexOf("=");
    if (eq < 0) continue;
    if (kv.slice(0, eq).trim() === name) return kv.slice(eq + 1).trim().replace(/^"+|"+$/g, "");
  }
  return undefined;
}

/** A secret compared in constant time (both sides hashed first, so lengths leak nothing). */
export class PublishKey {
  #digest: Buffer;
  constructor(key: string) {
    this.#digest = createHash("sha256").update(key).digest();
  }
  /** True when `given` is the key. */
  matches(given: string | undefined): boolean {
    if (given === undefined) return false;
    return timingSafeEqual(createHash("sha256").update(given).digest(), this.#digest);
  }
}

interface Claims {
  exp: number;
  sub?: string | undefined;
  runs: string[];
  sessions: string[];
}

function stringList(v: unknown): string[] | null {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) return null;
  return v as string[];
}

/**
 * PROTOCOL §7's JWT rules as an {@link Authorize}: `HS256` with `secret`, or
 * `RS256`/`ES256` by the type of `publicKey`; `alg: none` and any other
 * algorithm refused; `exp` required, `nbf` checked if present, `iss`/`aud`
 * when configured, 30 s leeway; `runs` grants reading and cancelling those
 * runs, `sessions` grants sending into those sessions and reading and
 * cancelling every run of them (the session's chat run and any run created
 * with that `sessionId`). The token is read from `Authorization: Bearer`,
 * else from the cookie.
 */
export function jwtAuth(key: JwtKey, options: JwtOptions = {}): Authorize {
  let verifyKey: Uint8Array | KeyObject;
  let alg: "HS256" | "RS256" | "ES256";
  if ("secret" in key) {
    verifyKey = typeof key.secret === "string" ? new TextEncoder().encode(key.secret) : key.secret;
    if (verifyKey.length === 0) throw new Error("jwtAuth: the secret is empty");
    alg = "HS256";
  } else {
    const k = createPublicKey(key.publicKey);
    if (k.asymmetricKeyType === "rsa") alg = "RS256";
    else if (k.asymmetricKeyType === "ec" && k.asymmetricKeyDetails?.namedCurve === "prime256v1") alg = "ES256";
    else throw new Error("jwtAuth: not an RSA or EC (P-256) public key in PEM");
    verifyKey = k;
  }
  const cookieName = options.cookie ?? DEFAULT_COOKIE;

  const verify = async (headers: Headers): Promise<Claims | DenyReason> => {
    const token = bearer(headers.get("authorization")) ?? cookie(headers.get("cookie"), cookieName);
    if (token === undefined) return "missing";
    if (token.length > MAX_TOKEN_BYTES) return "malformed";
    try {
      const { payload } = await jwtVerify(token, verifyKey, {
        algorithms: [alg],
        clockTolerance: LEEWAY_S,
        requiredClaims: ["exp"],
        ...(options.issuer !== undefined ? { issuer: options.issuer } : {}),
        ...(options.audience !== undefined ? { audience: options.audience } : {}),
      });
      const runs = stringList(payload["runs"]);
      const sessions = stringList(payload["sessions"]);
      if (typeof payload.exp !== "number" || runs === null || sessions === null) return "malformed";
      if (runs.length > MAX_GRANTS || sessions.length > MAX_GRANTS) return "malformed";
      return { exp: payload.exp, sub: payload.sub, runs, sessions };
    } catch (e) {
      if (e instanceof joseErrors.JWTExpired) return "expired";
      if (e instanceof joseErrors.JWSSignatureVerificationFailed) return "bad_signature";
      if (e instanceof joseErrors.JOSEAlgNotAllowed) return "wrong_algorithm";
      if (e instanceof joseErrors.JWTClaimValidationFailed) return e.claim === "exp" ? "no_expiry" : "invalid_claims";
      return "malformed";
    }
  };

  return async (ctx: AuthContext): Promise<AuthGrant> => {
    const c = await verify(ctx.headers);
    if (typeof c === "string") return { decision: "unauthorized", reason: c };
    const grant = (decision: AuthDecision, reason?: DenyReason): AuthGrant => ({
      decision,
      expiresAtMs: (c.exp + LEEWAY_S) * 1000,
      subject: c.sub,
      reason,
    });
    const hasSession = (s: string | undefined): boolean => s !== undefined && c.sessions.includes(s);
    switch (ctx.action) {
      case "publish":
        return grant("forbidden", "not_granted");
      case "send":
        if (!hasSession(ctx.sessionId)) return grant("forbidden", "not_granted");
        // A run that exists under this id but is not that session's chat run.
        if (ctx.runExists && ctx.runSessionId !== ctx.sessionId) return grant("forbidden", "not_granted");
        return grant("allow");
      case "read":
      case "cancel": {
        const ok =
          c.runs.includes(ctx.runId) || (ctx.runExists ? hasSession(ctx.runSessionId) : hasSession(ctx.runId));
        return ok ? grant("allow") : grant("forbidden", "not_granted");
      }
    }
  };
}

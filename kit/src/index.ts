/**
 * `@runstream/server`: the runstream wire contract (PROTOCOL.md, SERVER.md §2)
 * inside a team's own Node backend.
 *
 * ```ts
 * const rs = createRunstream({ store: memoryStore(), auth: jwtAuth({ secret }), publishKey });
 * http.createServer(rs.node); rs.attachWebSocket(server);
 * ```
 */
export * from "./store.js";
export { redisStore, RedisStore, loadScripts, keySlot, type RedisStoreOptions, type LuaScript, type ScriptName } from "./redis.js";
export { memoryStore, type MemoryStoreOptions } from "./memory.js";
export {
  jwtAuth,
  type AuthAction,
  type AuthContext,
  type AuthDecision,
  type AuthGrant,
  type Authorize,
  type DenyReason,
  type JwtKey,
  type JwtOptions,
  LEEWAY_S,
  DEFAULT_COOKIE,
  MAX_TOKEN_BYTES,
  MAX_GRANTS,
} from "./auth.js";
export { Reducer, reduce, checkBatch, prunePoint } from "./reducer.js";
export {
  createRunstream,
  RunstreamError,
  type Runstream,
  type RunstreamOptions,
  type SendEvent,
  type EventInput,
  MAX_KEY_LEN,
  MIN_PUBLISH_KEY_BYTES,
  MAX_PENDING_FRAMES,
  MAX_WAIT_MS,
  SENDS_PER_POLL,
  SEND_CLAIM_BLOCK_MS,
  MAX_SENDS_IN_FLIGHT,
  MAX_REASON_CHARS,
  DEFAULT_SEND_CLAIM_IDLE_MS,
  MIN_SEND_CLAIM_IDLE_MS,
} from "./runstream.js";
export { fromAiSdk, MAX_DELTA_CHARS, MAX_APPEND_EVENTS } from "./ai.js";
export type { AiSdkStreamPart, AiSdkTarget, FromAiSdkOptions, FromAiSdkResult, FromAiSdkStatus } from "./ai.js";

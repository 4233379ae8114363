/**
 * `@runstream/server`: the runstream wire contract (PROTOCOL.md, SERVER.md §2)
 * inside a team's own Node backend.
 */
export * from "./store.js";
export { redisStore, RedisStore, loadScripts } from "./redis.js";
export type { RedisStoreOptions, QueuedSend } from "./redis.js";
export { fromAiSdk } from "./ai.js";
export type { AiSdkTarget, FromAiSdkOptions, FromAiSdkResult, FromAiSdkStatus } from "./ai.js";

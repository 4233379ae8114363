/**
 * `@runstream/server`: the runstream wire contract (PROTOCOL.md, SERVER.md §2)
 * inside a team's own Node backend.
 */
export * from "./store.js";

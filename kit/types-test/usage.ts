// SERVER.md §2's usage, type-checked against the published declarations
// (dist/*.d.ts) in strict mode: the names and shapes teams write against.
import http from "node:http";
import {
  createRunstream,
  memoryStore,
  jwtAuth,
  RunstreamError,
  type AuthContext,
  type AuthDecision,
  type Runstream,
  type SendEvent,
  type Store,
} from "@runstream/server";

const secret = "s".repeat(32);
const store: Store = memoryStore({ window: 1000, maxRuns: 100 });
const rs: Runstream = createRunstream({
  store,
  auth: jwtAuth({ secret }, { cookie: "tok", issuer: "me", audience: "you" }),
  publishKey: "k".repeat(16),
  heartbeatMs: 15000,
  basePath: "/api",
});
export const GET: (r: Request) => Promise<Response> = rs.fetch;
export const POST = rs.fetch;
const server = http.createServer(rs.node);
const ws: { close(): Promise<void> } = rs.attachWebSocket(server, { path: "/api/ws" });

const custom = createRunstream({
  store: memoryStore(),
  auth: async (ctx: AuthContext): Promise<AuthDecision> => (ctx.headers.get("authorization") ? "allow" : "unauthorized"),
});
const sync = createRunstream({ store: memoryStore(), auth: () => "forbidden" });
const open = createRunstream({ store: memoryStore(), auth: "none" });

export async function produce(sessionId: string, idempotencyKey: string): Promise<void> {
  const { runId, created }: { runId: string; created: boolean } = await rs.createRun({ sessionId });
  void created;
  const ids: { firstEventId: number; lastEventId: number } = await rs.append(
    runId,
    [{ type: "run.started", payload: { title: "x" } }],
    { idempotencyKey },
  );
  void ids;
  const signal: AbortSignal = rs.cancelSignal(runId);
  void signal;
  const off: () => void = rs.onSend(async ({ runId: chat, clientRequestId, content }: SendEvent) => {
    await rs.append(chat, [{ type: "message.created", payload: { message_id: "m", role: "assistant", reply_to: clientRequestId, content } }]);
  });
  off();
  try {
    await rs.append(runId, [{ type: "run.completed", payload: { status: "succeeded" } }]);
  } catch (e) {
    if (e instanceof RunstreamError && e.code === "finished") return;
    throw e;
  }
  await Promise.all([ws.close(), custom.close(), sync.close(), open.close()]);
}

// redisStore (docs/REDIS.md): SERVER.md §2's line as written, and every option.
import { redisStore, RedisStore, type RedisStoreOptions } from "@runstream/server";
const onRedis: Runstream = createRunstream({ store: redisStore({ url: process.env.REDIS_URL }), auth: "none" });
const opts: RedisStoreOptions = { url: "redis-cluster://127.0.0.1:7000,127.0.0.1:7001", window: 200_000, tailCache: 4096, snapshotCache: 256, sendTtlS: 86_400, commandTimeoutMs: 10_000 };
const typed: RedisStore = redisStore(opts);
const asStore: Store = typed;
void onRedis;
void asStore;

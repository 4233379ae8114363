import { test } from "node:test";
import assert from "node:assert/strict";
import { behind, cancelTargetKey, cancelTargetFromKey, validId, validCursor, envelopeText } from "../dist/index.js";

test("behind: events a resume replays, within the window", () => {
  const meta = { kind: "task", firstId: 11, lastId: 30, finished: false };
  assert.equal(behind(meta, 25), 5);
  assert.equal(behind(meta, 0), 20); // older than the window: the window only (a snapshot covers the rest)
  assert.equal(behind(meta, 30), 0);
  assert.equal(behind(meta, 40), 0);
});

test("cancel target keys are the gateway's", () => {
  assert.equal(cancelTargetKey({ kind: "run" }), "run");
  assert.equal(cancelTargetKey({ kind: "reply", replyTo: "c1" }), "reply:c1");
  assert.deepEqual(cancelTargetFromKey("reply:c:1"), { kind: "reply", replyTo: "c:1" });
  assert.equal(cancelTargetFromKey("x"), null);
});

test("ids and cursors", () => {
  assert.ok(validId("run_1"));
  assert.ok(!validId(""));
  assert.ok(!validId("a{b}"));
  assert.ok(!validId("a\nb"));
  assert.ok(!validId("x".repeat(129)));
  assert.ok(validId("é".repeat(128)));
  assert.ok(validCursor("0-12") && validCursor("17") && !validCursor("a-1") && !validCursor("1-"));
  const e = JSON.parse(envelopeText(3, "r", "run.started", {}));
  assert.deepEqual(Object.keys(e), ["event_id", "run_id", "type", "timestamp", "payload"]);
});

test("prunePoint: the window rule comes from the reducer module (the gateway's prune_point)", async () => {
  const { prunePoint } = await import("../dist/index.js");
  // window 100: pruned once more than 110 are held, keeping the newest 100.
  assert.equal(prunePoint(1, 110, 100), null);
  assert.equal(prunePoint(1, 111, 100), 12);
  assert.equal(prunePoint(12, 121, 100), null);
  assert.equal(prunePoint(12, 122, 100), 23);
  assert.equal(prunePoint(1, 6, 5), 2);
  assert.equal(prunePoint(1, 0, 1), null);
  // The default window (200 000): ids past 2^32 stay exact.
  assert.equal(prunePoint(2 ** 40, 2 ** 40 + 220_000, 200_000), 2 ** 40 + 20_001);
});

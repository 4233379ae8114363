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

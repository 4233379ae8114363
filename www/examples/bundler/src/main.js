// No init(): the bundler target instantiates the wasm on import.
import { RunStream } from "runstream";

const run = new URLSearchParams(location.search).get("run");
const stream = new RunStream({ runId: run, resume: "none" });
stream.subscribe(() => {
  const s = stream.getSnapshot();
  document.getElementById("out").textContent = JSON.stringify({ connection: s.status.connection, cursor: s.state.cursor, status: s.state.status });
});
stream.start();
window.stream = stream;

import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import init from "runstream";
import { App } from "./App";

// --target web: instantiate the wasm once, before the first stream.
await init();
const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}

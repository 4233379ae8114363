import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";

// No `await init()`: useRunStream loads the wasm itself after mount, once per page.
const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}

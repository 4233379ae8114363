// Gives the internal imports and exports between the wasm and its JS glue
// short names, in the wasm and in the glue together. Usage:
//   node scripts/short-names.mjs DIR     (DIR = pkg or pkg-bundler, after wasm-pack)
//
// wasm-bindgen names every import `__wbg_<name>_<16 hex>` and every closure
// shim `wasm_bindgen_<hash>___convert__closures_____invoke___<types>` (up to
// ~300 characters); each name is written twice, in the wasm's import or
// export section and in the glue (an object key or `wasm.<name>`), and gzip
// cannot share them between the two files. Renamed here (issue 29, size):
// - imports of the glue's own module ("./runstream_bg.js"): every one;
// - exports: all but `memory` and the class's (`runstream_*`,
//   `__wbg_runstream_free`), which `InitOutput` in runstream.d.ts lists for
//   users, and those the glue does not use; the renamed ones are renamed
//   in the declarations too.
// Snippet imports (js/*.js) keep their names: the glue passes those modules
// whole. Every rename must hit the glue exactly as expected, else this fails
// (a wasm-bindgen upgrade that changes the glue's shape stops the build
// instead of shipping a glue that cannot link).
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node scripts/short-names.mjs DIR");
  process.exit(2);
}
const GLUE_MODULE = "./runstream_bg.js";
const glueFiles = ["runstream.js", "runstream_bg.js"].map((f) => join(dir, f)).filter(existsSync);
const glue = new Map(glueFiles.map((f) => [f, readFileSync(f, "utf8")]));
const usedByGlue = (n) => [...glue.values()].some((text) => new RegExp(`\\bwasm\\.${n}\\b`).test(text));
// Exports the glue does not use (`__abort_handler`, say) keep their names too.
const keepExport = (n) => n === "memory" || n.startsWith("runstream_") || n === "__wbg_runstream_free" || !usedByGlue(n);

function fail(msg) {
  console.error("short-names: " + msg);
  process.exit(1);
}

// --- wasm binary reading/writing (only what the import/export sections need)
function readU32(buf, pos) {
  let result = 0;
  let shift = 0;
  for (;;) {
    const b = buf[pos++];
    if (b === undefined) fail("truncated LEB128");
    result |= (b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result >>> 0, pos];
    shift += 7;
    if (shift > 28) fail("LEB128 too long");
  }
}
function u32(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return Buffer.from(out);
}
function readName(buf, pos) {
  const [len, p] = readU32(buf, pos);
  return [buf.subarray(p, p + len).toString("utf8"), p + len];
}
const name = (s) => {
  const b = Buffer.from(s, "utf8");
  return Buffer.concat([u32(b.length), b]);
};
/** The end of a limits field at `pos` (flags, min, max if flagged). */
function skipLimits(buf, pos) {
  const flags = buf[pos++];
  let p = readU32(buf, pos)[1];
  if (flags & 1) p = readU32(buf, p)[1];
  return p;
}
/** The end of an import's descriptor (kind byte at `pos`). */
function skipImportDesc(buf, pos) {
  const kind = buf[pos++];
  switch (kind) {
    case 0: return readU32(buf, pos)[1]; // func: type index
    case 1: return skipLimits(buf, pos + 1); // table: reftype (one byte here), limits
    case 2: return skipLimits(buf, pos); // memory
    case 3: return pos + 2; // global: valtype (one byte here), mutability
    case 4: return readU32(buf, pos + 1)[1]; // tag: attribute, type index
    default: return fail("unknown import kind " + kind);
  }
}

// Short names: a, b, …, Z, _, $, then two characters, … (valid JS identifiers).
const FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$";
const REST = FIRST + "0123456789";
function shortName(i) {
  let s = FIRST[i % FIRST.length];
  i = Math.floor(i / FIRST.length);
  while (i > 0) {
    i -= 1;
    s += REST[i % REST.length];
    i = Math.floor(i / REST.length);
  }
  return s;
}

const wasmPath = join(dir, "runstream_bg.wasm");
const wasm = readFileSync(wasmPath);
if (wasm.readUInt32LE(0) !== 0x6d736100) fail(wasmPath + " is not a wasm module");
const imports = new Map(); // old → new
const exports = new Map();
let next = 0;
const parts = [wasm.subarray(0, 8)];
let pos = 8;
while (pos < wasm.length) {
  const id = wasm[pos];
  const [size, start] = readU32(wasm, pos + 1);
  const end = start + size;
  if (id === 2 || id === 7) {
    let [count, p] = readU32(wasm, start);
    const entries = [u32(count)];
    for (let i = 0; i < count; i++) {
      if (id === 2) {
        const [mod, p1] = readName(wasm, p);
        const [field, p2] = readName(wasm, p1);
        const p3 = skipImportDesc(wasm, p2);
        let renamed = field;
        if (mod === GLUE_MODULE) {
          if (!imports.has(field)) imports.set(field, shortName(next++));
          renamed = imports.get(field);
        }
        entries.push(name(mod), name(renamed), wasm.subarray(p2, p3));
        p = p3;
      } else {
        const [field, p1] = readName(wasm, p);
        const p2 = readU32(wasm, p1 + 1)[1];
        let renamed = field;
        if (!keepExport(field)) {
          renamed = shortName(next++);
          exports.set(field, renamed);
        }
        entries.push(name(renamed), wasm.subarray(p1, p2));
        p = p2;
      }
    }
    if (p !== end) fail(`section ${id} was not read to its end`);
    const content = Buffer.concat(entries);
    parts.push(Buffer.from([id]), u32(content.length), content);
  } else {
    parts.push(wasm.subarray(pos, end));
  }
  pos = end;
}
if (imports.size === 0) fail("no import of " + GLUE_MODULE + " found (already renamed?)");

// --- the glue: import keys (`name: function(`, --target web) or exported
// functions (`export function name(`, --target bundler's runstream_bg.js),
// and export uses (`wasm.name`).
const count = (re) => [...glue.values()].reduce((n, text) => n + (text.match(re) || []).length, 0);
const replaceAll = (re, to) => {
  for (const [f, text] of glue) glue.set(f, text.replace(re, to));
};
for (const [from, to] of imports) {
  const re = new RegExp(`(^|[\\s{,])${from}(: function\\(|\\()`, "gm");
  const defs = new RegExp(`(^\\s+${from}: function\\(|^export function ${from}\\()`, "gm");
  if (count(defs) !== 1) fail(`import ${from}: expected one definition in the glue, found ${count(defs)}`);
  replaceAll(defs, (m) => m.replace(from, to));
  if (count(re) !== 0) fail(`import ${from}: still named in the glue after renaming`);
}
for (const [from, to] of exports) {
  const re = new RegExp(`\\bwasm\\.${from}\\b`, "g");
  if (count(re) === 0) fail(`export ${from}: not used as wasm.${from} in the glue`);
  replaceAll(re, "wasm." + to);
}
for (const [f, text] of glue) writeFileSync(f, text);

// --- declarations: InitOutput's fields and the raw wasm's.
for (const f of ["runstream.d.ts", "runstream_bg.wasm.d.ts"].map((f) => join(dir, f)).filter(existsSync)) {
  let text = readFileSync(f, "utf8");
  for (const [from, to] of exports) {
    text = text.replace(new RegExp(`(readonly |export const )${from}:`, "g"), `$1${to}:`);
  }
  writeFileSync(f, text);
}
writeFileSync(wasmPath, Buffer.concat(parts));
console.log(`[pkg] short names: ${imports.size} imports and ${exports.size} exports renamed (${wasm.length} → ${Buffer.concat(parts).length} B raw)`);

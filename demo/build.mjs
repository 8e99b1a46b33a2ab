// Copies onnxruntime-web's WebAssembly build from node_modules into vendor/, so the page loads nothing from a CDN.
import { copyFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "onnxruntime-web", "dist");
const vendor = join(here, "vendor");
const files = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];

if (!existsSync(dist)) {
  console.error(`${dist} is missing: run "npm ci" in demo/ first.`);
  process.exit(1);
}
mkdirSync(vendor, { recursive: true });
for (const file of files) {
  copyFileSync(join(dist, file), join(vendor, file));
  console.log(`vendor/${file}`);
}

// Stable-SAM in the browser: the exported encoder computes the image embedding, the exported decoders (segment-anything's
// ONNX interface plus routing_weights) segment on every click or box. Files come from this folder only.
import * as ort from "./vendor/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
// One thread: multi-threaded WebAssembly needs cross-origin isolation headers that a static host may not send
ort.env.wasm.numThreads = 1;

const params = new URLSearchParams(window.location.search);
const modelDir = withSlash(params.get("model") || "model/");
const DISPLAY_SIZE = 384;
const MASK_COLOUR = [30, 110, 230];

// What the page has done, for people reading the console and for the browser test
const state = {
  ready: false, busy: false, error: null, decodeCount: 0, decoder: "stable",
  points: [], box: null, lastPrompt: null, lastOutput: null,
};
window.demoState = state;

let meta = null;
let sessions = {};
let embedding = null;
let image = null; // { bitmap, width, height, name }

const $ = (id) => document.getElementById(id);

function withSlash(path) {
  return path.endsWith("/") ? path : `${path}/`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  const message = error instanceof Error ? error.message : String(error);
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = false;
  setStatus("Something went wrong: see below.");
  console.error(error);
}

function clearError() {
  state.error = null;
  $("error").hidden = true;
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`Cannot load ${what} (${url}): ${error.message}`);
  }
  if (!response.ok) {
    throw new Error(`Cannot load ${what} (${url}): HTTP ${response.status} ${response.statusText}`.trim());
  }
  return response;
}

async function loadModel() {
  const jsonUrl = `${modelDir}model.json`;
  const response = await fetchOk(jsonUrl, "the model description");
  try {
    meta = await response.json();
  } catch (error) {
    throw new Error(`The model description ${jsonUrl} is not valid JSON: ${error.message}`);
  }
  if (meta.format !== "stable-sam-onnx") {
    throw new Error(`${jsonUrl} is not written by "python -m stable_sam_hf.onnx export" (format ${meta.format}).`);
  }
  const files = { stable: meta.files.decoder, sam: meta.files.sam_decoder, encoder: meta.files.encoder };
  for (const [name, file] of Object.entries(files)) {
    if (!file) continue;
    const buffer = await (await fetchOk(modelDir + file, `the model file ${file}`)).arrayBuffer();
    try {
      sessions[name] = await ort.InferenceSession.create(buffer, { executionProviders: ["wasm"] });
    } catch (error) {
      throw new Error(`onnxruntime-web cannot open the model file ${modelDir + file}: ${error.message}`);
    }
  }
  $("model-name").textContent = `${meta.model || "?"} (input ${meta.input_size} px)`;
  if (!sessions.sam) {
    document.querySelector('input[name="decoder"][value="sam"]').disabled = true;
  }
}

async function decodeImage(blob, name) {
  try {
    return await createImageBitmap(blob);
  } catch (error) {
    throw new Error(`Cannot decode the image ${name}: it is not an image format this browser reads (${error.message}).`);
  }
}

function resizedSize(width, height) {
  // The image processor's resize: longest side to input_size, rounded half up, neither side below one pixel; prompts
  // scale by each axis's own factor (segment-anything's ResizeLongestSide.apply_coords)
  const scale = meta.input_size / Math.max(width, height);
  const newHeight = Math.max(1, Math.floor(height * scale + 0.5));
  const newWidth = Math.max(1, Math.floor(width * scale + 0.5));
  return [newHeight, newWidth, newWidth / width, newHeight / height];
}

function pixelValues(bitmap) {
  // Resize the longest side to input_size, normalise, pad with zeros at the bottom and right (as pixel_values)
  const size = meta.input_size;
  const [height, width] = resizedSize(bitmap.width, bitmap.height);
  const canvas = new OffscreenCanvas(size, size);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0, width, height);
  const rgba = context.getImageData(0, 0, size, size).data;
  const values = new Float32Array(3 * size * size);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const pixel = y * size + x;
      for (let channel = 0; channel < 3; channel++) {
        const value = rgba[4 * pixel + channel] * meta.rescale_factor;
        values[channel * size * size + pixel] = (value - meta.pixel_mean[channel]) / meta.pixel_std[channel];
      }
    }
  }
  return new ort.Tensor("float32", values, [1, 3, size, size]);
}

function parseNpy(buffer, url) {
  // NumPy's .npy format, version 1-3: magic, header length, a Python dict literal, then the data
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error(`The embedding ${url} is not a .npy file.`);
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] || "")
    .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (descr !== "<f4" || fortran) {
    throw new Error(`The embedding ${url} must be little-endian float32 in C order, got ${descr}${fortran ? " (Fortran order)" : ""}.`);
  }
  return { shape, data: new Float32Array(buffer.slice(headerStart + headerLength)) };
}

async function computeEmbedding() {
  const expected = meta.image_embedding_shape;
  const embeddingUrl = params.get("embedding");
  if (embeddingUrl) {
    const buffer = await (await fetchOk(embeddingUrl, "the image embedding")).arrayBuffer();
    const { shape, data } = parseNpy(buffer, embeddingUrl);
    if (shape.join(",") !== expected.join(",")) {
      throw new Error(
        `The embedding ${embeddingUrl} has shape [${shape.join(", ")}], but model.json expects ` +
        `[${expected.join(", ")}]: write it with "python -m stable_sam_hf.onnx embed" and the exported model.`,
      );
    }
    return new ort.Tensor("float32", data, shape);
  }
  if (!sessions.encoder) {
    throw new Error(
      'This export has no encoder.onnx: pass ?embedding=<file.npy> written by "python -m stable_sam_hf.onnx embed".',
    );
  }
  setStatus("Computing the image embedding…");
  const output = await sessions.encoder.run({ pixel_values: pixelValues(image.bitmap) });
  return output.image_embeddings;
}

function setupStage() {
  const { width, height } = image;
  const scale = DISPLAY_SIZE / Math.max(width, height);
  const stage = $("stage");
  stage.style.width = `${Math.round(width * scale)}px`;
  stage.style.height = `${Math.round(height * scale)}px`;
  for (const id of ["image-canvas", "mask-canvas"]) {
    $(id).width = width;
    $(id).height = height;
  }
  $("prompt-canvas").width = Math.round(width * scale);
  $("prompt-canvas").height = Math.round(height * scale);
  $("image-canvas").getContext("2d").drawImage(image.bitmap, 0, 0);
  $("mask-canvas").getContext("2d").clearRect(0, 0, width, height);
}

async function setImage(blob, name) {
  clearError();
  state.ready = false;
  const bitmap = await decodeImage(blob, name);
  image = { bitmap, width: bitmap.width, height: bitmap.height, name };
  setupStage();
  state.points = [];
  state.box = null;
  embedding = await computeEmbedding();
  state.ready = true;
  setStatus(`Ready: ${name} (${image.width} x ${image.height}). Click or drag a box.`);
}

function promptTensors() {
  // segment-anything's encoding: points (label 1 / 0), then the box corners (2 / 3), else a padding point (-1)
  const [, , scaleX, scaleY] = resizedSize(image.width, image.height);
  const coords = [];
  const labels = [];
  for (const point of state.points) {
    coords.push([point.x * scaleX, point.y * scaleY]);
    labels.push(point.label);
  }
  if (state.box) {
    coords.push([state.box.x0 * scaleX, state.box.y0 * scaleY], [state.box.x1 * scaleX, state.box.y1 * scaleY]);
    labels.push(2, 3);
  } else {
    coords.push([0, 0]);
    labels.push(-1);
  }
  return { coords, labels };
}

async function decode() {
  if (!state.ready || (!state.points.length && !state.box)) return;
  const { coords, labels } = promptTensors();
  const size = meta.mask_input_size;
  const feeds = {
    image_embeddings: embedding,
    point_coords: new ort.Tensor("float32", Float32Array.from(coords.flat()), [1, coords.length, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, labels.length]),
    mask_input: new ort.Tensor("float32", new Float32Array(size * size), [1, 1, size, size]),
    has_mask_input: new ort.Tensor("float32", Float32Array.from([0]), [1]),
    orig_im_size: new ort.Tensor("float32", Float32Array.from([image.height, image.width]), [2]),
  };
  state.busy = true;
  const start = performance.now();
  const output = await sessions[state.decoder].run(feeds);
  const elapsed = performance.now() - start;
  const [alpha1, alpha2] = output.routing_weights.data;
  const iou = output.iou_predictions.data[0];
  drawMask(output.masks.data);
  state.lastPrompt = { coords, labels, decoder: state.decoder };
  state.lastOutput = { iou, alpha1, alpha2 };
  $("decoder-name").textContent = state.decoder === "sam" ? "SAM" : "Stable-SAM";
  $("iou").textContent = iou.toFixed(3);
  $("alpha1").textContent = alpha1.toFixed(3);
  $("alpha2").textContent = alpha2.toFixed(3);
  $("prompt").textContent = describePrompt();
  $("time").textContent = `${elapsed.toFixed(1)} ms`;
  state.decodeCount += 1;
  state.busy = false;
}

function describePrompt() {
  const positive = state.points.filter((p) => p.label === 1).length;
  const negative = state.points.length - positive;
  const parts = [];
  if (positive) parts.push(`${positive} positive`);
  if (negative) parts.push(`${negative} negative`);
  if (state.box) parts.push("1 box");
  return parts.join(", ");
}

function drawMask(logits) {
  const { width, height } = image;
  const context = $("mask-canvas").getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    if (logits[i] > 0) {
      pixels.data.set([...MASK_COLOUR, 255], 4 * i);
    }
  }
  context.putImageData(pixels, 0, 0);
}

function drawPrompts(drag) {
  const canvas = $("prompt-canvas");
  const context = canvas.getContext("2d");
  const scale = canvas.width / image.width;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.lineWidth = 2;
  const box = drag || state.box;
  if (box) {
    context.strokeStyle = "#ffd400";
    context.strokeRect(box.x0 * scale, box.y0 * scale, (box.x1 - box.x0) * scale, (box.y1 - box.y0) * scale);
  }
  for (const point of state.points) {
    context.beginPath();
    context.arc(point.x * scale, point.y * scale, 6, 0, 2 * Math.PI);
    context.fillStyle = point.label === 1 ? "#1fbf4f" : "#e0323c";
    context.fill();
    context.strokeStyle = "white";
    context.stroke();
  }
}

function eventPosition(event) {
  // Canvas pixels of the original image
  const rect = $("prompt-canvas").getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * image.width,
    y: ((event.clientY - rect.top) / rect.height) * image.height,
  };
}

function run(promise) {
  promise.catch(showError);
}

function setupInteraction() {
  const canvas = $("prompt-canvas");
  let dragStart = null;
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("mousedown", (event) => {
    if (state.ready) dragStart = eventPosition(event);
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!dragStart) return;
    const end = eventPosition(event);
    drawPrompts(normaliseBox(dragStart, end));
  });
  canvas.addEventListener("mouseup", (event) => {
    if (!dragStart) return;
    const end = eventPosition(event);
    const scale = canvas.getBoundingClientRect().width / image.width;
    const distance = Math.hypot(end.x - dragStart.x, end.y - dragStart.y) * scale;
    if (distance < 5) {
      const negative = event.shiftKey || event.button === 2
        || document.querySelector('input[name="click"]:checked').value === "0";
      state.points.push({ x: dragStart.x, y: dragStart.y, label: negative ? 0 : 1 });
    } else {
      state.box = normaliseBox(dragStart, end);
    }
    dragStart = null;
    drawPrompts();
    run(decode());
  });
  for (const input of document.querySelectorAll('input[name="decoder"]')) {
    input.addEventListener("change", () => {
      state.decoder = input.value;
      run(decode());
    });
  }
  $("clear").addEventListener("click", () => {
    state.points = [];
    state.box = null;
    drawPrompts();
    $("mask-canvas").getContext("2d").clearRect(0, 0, image.width, image.height);
  });
  $("image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) run(setImage(file, file.name));
  });
}

function normaliseBox(a, b) {
  return { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) };
}

async function main() {
  setStatus("Loading the model…");
  await loadModel();
  setupInteraction();
  // A Space built by examples/build_onnx_space.py opens with its sample image
  const imageUrl = params.get("image") || (meta.sample_image ? modelDir + meta.sample_image : null);
  if (!imageUrl) {
    setStatus("Model loaded: choose an image.");
    return;
  }
  setStatus("Loading the image…");
  const blob = await (await fetchOk(imageUrl, "the image")).blob();
  await setImage(blob, imageUrl);
}

run(main());

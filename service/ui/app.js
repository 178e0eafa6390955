// The web page's logic: send images to POST /compare in batches and show both models' answers.
// Served at /ui/app.js (service/webpage.py); plain JavaScript, no build step, no dependencies.
// Every URL is relative to /ui, so the page works under a path prefix too.
"use strict";

const MODELS = ["convnet", "dense"];
const BATCH = 32;  // images per request, lowered to the server's limits.max_images

const $ = (id) => document.getElementById(id);
const state = {
  classes: ["airplane", "bird"],
  batch: BATCH,
  queue: [],        // items waiting to be sent
  running: false,
  generation: 0,    // bumped by Clear: answers to older requests are dropped
  items: [],
  requests: 0,
  samples: null,    // the manifest, once loaded
};

// ---- adding images ----------------------------------------------------------------------

let counter = 0;

function addFiles(files, truths = []) {
  const fragment = document.createDocumentFragment();
  const added = [];
  Array.from(files).forEach((file, i) => {
    const name = file.name || `pasted-${counter + 1}.png`;
    const item = { id: ++counter, name, file, truth: truths[i] || null, state: "pending" };
    item.card = makeCard(item);
    fragment.appendChild(item.card);
    added.push(item);
  });
  if (!added.length) return;
  $("results").appendChild(fragment);
  state.items.push(...added);
  state.queue.push(...added);
  updateSummary();
  pump();
}

function makeCard(item) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.dataset.name = item.name;
  card.dataset.id = item.id;
  card.querySelector(".name").textContent = item.name;
  const img = card.querySelector(".thumb");
  item.url = URL.createObjectURL(item.file);
  img.loading = "lazy";
  img.src = item.url;
  img.alt = `Uploaded image ${item.name}`;
  img.addEventListener("error", () => {
    img.alt = "cannot display";
    img.classList.add("blank");
    card.querySelector(".thumb + figcaption").textContent = "upload (the browser cannot show it)";
  });
  const canvas = card.querySelector(".seen");
  canvas.setAttribute("aria-label", `${item.name} at 32x32 pixels, as the models see it`);
  canvas.file = item.file;
  seenObserver.observe(canvas);
  if (item.truth) {
    const badge = card.querySelector(".truth");
    badge.hidden = false;
    badge.textContent = `true label: ${item.truth}`;
    card.dataset.truth = item.truth;
  }
  return card;
}

// Decoding 200 images at once would freeze the page for a second: each 32x32 view is drawn
// when its card comes near the screen.
const seenObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    seenObserver.unobserve(entry.target);
    drawSeen(entry.target.file, entry.target);
    entry.target.file = null;
  }
}, { rootMargin: "600px 0px" });

// What the models see: the image at 32x32, upscaled without smoothing by CSS. Transparency on
// white, as the service does. The service resizes with Pillow's bicubic filter; the browser's
// resize is close but not identical, so for images that are not 32x32 this is an approximation.
async function drawSeen(file, canvas) {
  try {
    const bitmap = await createImageBitmap(file);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, 32, 32);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, 32, 32);
    bitmap.close();
  } catch {
    canvas.classList.add("blank");
  }
}

// ---- talking to the service -------------------------------------------------------------

async function pump() {
  if (state.running) return;
  state.running = true;
  try {
    while (state.queue.length) {
      const generation = state.generation;
      const chunk = state.queue.splice(0, state.batch);
      setStatus(`Classifying… ${state.queue.length + chunk.length} image(s) to go.`);
      await send(chunk, generation);
    }
    const errors = state.items.filter((it) => it.state === "error").length;
    setStatus(`Done: ${state.items.length - errors} classified` +
              (errors ? `, ${errors} with an error (shown next to the image).` : "."));
  } finally {
    state.running = false;
  }
}

async function send(chunk, generation) {
  const form = new FormData();
  chunk.forEach((it) => form.append("images", it.file, it.name));
  let res;
  let body = null;
  const t0 = performance.now();
  try {
    res = await fetch("compare", { method: "POST", body: form });
    body = await res.json().catch(() => null);
  } catch (e) {
    if (generation === state.generation) {
      chunk.forEach((it) => fail(it, `could not reach the server (${e.message}); is it running?`));
    }
    return;
  }
  if (generation !== state.generation) return;
  state.requests += 1;
  const request = readHeaders(res, chunk.length, performance.now() - t0);
  if (res.ok && body && Array.isArray(body.predictions) &&
      body.predictions.length === chunk.length) {
    chunk.forEach((it, i) => show(it, body.predictions[i], request));
    showTimings(body.models || {}, request);
    updateSummary();
    return;
  }
  const message = (body && typeof body.error === "string") ? body.error
    : `HTTP ${res.status} ${res.statusText || ""}`.trim();
  const index = body ? body.index : undefined;
  if (Number.isInteger(index) && index >= 0 && index < chunk.length) {
    // One bad file fails the whole request: mark it, and send the others again.
    fail(chunk[index], message.replace(/^image \d+: /, ""), res.status);
    state.queue.unshift(...chunk.filter((_, i) => i !== index));
  } else if (res.status === 413 && chunk.length > 1) {
    // Too many images or too many bytes for one request: smaller batches.
    state.batch = Math.max(1, Math.floor(chunk.length / 2));
    state.queue.unshift(...chunk);
  } else if (res.status === 503) {
    const why = /not ready/i.test(message) ? message : `not ready: ${message}`;
    chunk.forEach((it) => fail(it, `${why} (the server cannot classify yet; /info says why)`,
                               res.status));
  } else {
    chunk.forEach((it) => fail(it, message, res.status));
  }
}

// The reply headers the service adds to inference replies; absent on older servers.
function readHeaders(res, images, wallMs) {
  const get = (name) => {
    const v = res.headers.get(name);
    return v === null ? null : v.trim().slice(0, 80);
  };
  return { n: state.requests, images, wallMs, batchSize: get("X-Batch-Size"),
           queueMs: get("X-Queue-Ms"), id: get("X-Request-ID") };
}

// ---- showing results --------------------------------------------------------------------

function show(item, prediction, request) {
  item.state = "done";
  item.prediction = prediction;
  const card = item.card;
  card.dataset.state = "done";
  const labels = MODELS.map((m) => prediction[m] && prediction[m].label);
  item.agree = labels[0] === labels[1];
  card.dataset.agree = String(item.agree);
  card.querySelector(".disagree").hidden = item.agree;
  for (const model of MODELS) {
    const p = prediction[model] || {};
    const section = card.querySelector(`.model[data-model="${model}"]`);
    section.dataset.label = p.label;
    section.dataset.probs = JSON.stringify(p.probabilities || {});
    section.querySelector(".label").textContent = p.label;
    section.querySelector(".bars").replaceChildren(...bars(p.probabilities || {}, p.label));
    if (item.truth) {
      const right = p.label === item.truth;
      section.dataset.right = String(right);
      const mark = section.querySelector(".right");
      mark.textContent = right ? "✓ right" : "✗ wrong";
      mark.className = `right ${right ? "yes" : "no"}`;
    }
  }
  card.querySelector(".meta").textContent = requestText(request);
}

function bars(probabilities, label) {
  return Object.entries(probabilities).map(([cls, p]) => {
    const row = document.createElement("div");
    row.className = "bar" + (cls === label ? " top" : "");
    const pct = (100 * p).toFixed(1);
    row.innerHTML = '<span class="cls"></span><span class="track"><span class="fill"></span>' +
                    '</span><span class="pct"></span>';
    row.querySelector(".cls").textContent = cls;
    row.querySelector(".fill").style.width = `${pct}%`;
    row.querySelector(".pct").textContent = `${pct}%`;
    row.setAttribute("role", "img");
    row.setAttribute("aria-label", `${cls}: ${pct} percent`);
    return row;
  });
}

function fail(item, message, status) {
  item.state = "error";
  item.card.dataset.state = "error";
  const error = item.card.querySelector(".error");
  error.hidden = false;
  error.textContent = status ? `Error ${status}: ${message}` : `Error: ${message}`;
  item.card.querySelectorAll(".model .label").forEach((el) => { el.textContent = "–"; });
  updateSummary();
}

// Each model's time for the model call this request rode in, and that call's batch size (the
// reply's per-model figures when the server gives them, else the X-Batch-Size header).
function showTimings(models, request) {
  for (const model of MODELS) {
    const m = models[model] || {};
    if (typeof m.inference_ms !== "number") continue;
    const size = Number.isInteger(m.batch_size) ? m.batch_size : request.batchSize;
    const parts = [`${m.inference_ms.toFixed(2)} ms`,
                   size !== null ? `batch of ${size}` : `${request.images} image(s) sent`];
    if (typeof m.queue_ms === "number") parts.push(`queued ${m.queue_ms.toFixed(2)} ms`);
    $(`ms-${model}`).textContent = parts.join(" · ");
  }
  $("last-request").textContent = requestText(request);
}

function requestText(r) {
  const parts = [`request ${r.n}: ${r.images} image(s), ${Math.round(r.wallMs)} ms round trip`];
  if (r.batchSize !== null) parts.push(`batch size ${r.batchSize}`);
  if (r.queueMs !== null) parts.push(`queued ${r.queueMs} ms`);
  if (r.id !== null) parts.push(`id ${r.id}`);
  return parts.join(" · ");
}

function updateSummary() {
  const done = state.items.filter((it) => it.state === "done");
  const errors = state.items.filter((it) => it.state === "error").length;
  setStat("n-done", done.length, `${done.length} of ${state.items.length}`);
  setStat("n-errors", errors, String(errors));
  const agree = done.filter((it) => it.agree).length;
  setStat("agreement", done.length ? agree / done.length : "",
          done.length ? `${pct(agree / done.length)} (${agree} of ${done.length})` : "–");
  const judged = done.filter((it) => it.truth);
  for (const model of MODELS) {
    const right = judged.filter((it) => it.prediction[model].label === it.truth).length;
    setStat(`acc-${model}`, judged.length ? right / judged.length : "",
            judged.length ? `${pct(right / judged.length)} (${right} of ${judged.length})` : "–");
  }
}

function setStat(id, value, text) {
  $(id).dataset.value = String(value);
  $(id).textContent = text;
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const setStatus = (text) => { $("status").textContent = text; };

// ---- the /info panel --------------------------------------------------------------------

async function loadInfo() {
  const panel = $("info-body");
  let info;
  try {
    const res = await fetch("info");
    info = await res.json();
    if (!res.ok) throw new Error(info.error || `HTTP ${res.status}`);
  } catch (e) {
    panel.replaceChildren(para(`Could not read /info: ${e.message}`, "error"));
    return;
  }
  const maxImages = info.limits && info.limits.max_images;
  if (Number.isInteger(maxImages) && maxImages > 0) state.batch = Math.min(BATCH, maxImages);
  const nodes = [];
  if (!info.ready) nodes.push(para(`Not ready: ${info.error || "starting"}`, "error"));
  const table = document.createElement("table");
  table.innerHTML = "<caption>Models</caption><thead><tr><th scope=col>model</th><th scope=col>" +
    "tag</th><th scope=col>params</th><th scope=col>val. accuracy</th><th scope=col>parity</th>" +
    "<th scope=col>provider in use</th></tr></thead><tbody></tbody>";
  for (const [key, m] of Object.entries(info.models || {})) {
    if (m.classes) state.classes = m.classes;
    const row = table.tBodies[0].insertRow();
    row.dataset.model = key;
    const head = Object.assign(document.createElement("th"), { scope: "row", textContent: key });
    row.appendChild(head);
    const cells = { tag: m.tag, params: num(m.params), parity: parity(m.parity),
                    val_acc: typeof m.val_acc === "number" ? pct(m.val_acc) : null,
                    provider: m.provider };
    for (const field of ["tag", "params", "val_acc", "parity", "provider"]) {
      const cell = row.insertCell();
      cell.textContent = cells[field] ?? "–";
      cell.dataset.field = field;
    }
  }
  nodes.push(table);
  const b = info.batching || {};
  const l = info.limits || {};
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [k, v] of [
    ["device setting", info.device],
    ["batching", b.enabled === undefined ? "–" : (b.enabled ? "on" : "off") +
      (b.max_batch_size ? `, up to ${b.max_batch_size} images per model call` : "") +
      (typeof b.max_latency_ms === "number" ? `, waits ≤ ${b.max_latency_ms} ms` : "")],
    ["concurrent batches", b.concurrent_batches],
    ["images per request", l.max_images],
    ["workers × ORT threads", `${info.workers} × ${info.ort_threads}`],
    ["versions", Object.entries(info.versions || {}).map(([n, v]) => `${n} ${v}`).join(", ")],
  ]) {
    const div = document.createElement("div");
    div.append(Object.assign(document.createElement("dt"), { textContent: k }),
               Object.assign(document.createElement("dd"), { textContent: v ?? "–" }));
    list.appendChild(div);
  }
  nodes.push(list);
  panel.replaceChildren(...nodes);
  panel.dataset.loaded = "true";
}

// "✓ onnxruntime_cpu, torchscript (max |Δ| ≤ 9.5e-7)": the formats checked against the
// checkpoint at export, and the largest probability difference found.
function parity(p) {
  if (!p || typeof p !== "object" || !Object.keys(p).length) return "–";
  const runs = Object.entries(p);
  const passed = runs.every(([, r]) => r && r.passed);
  const worst = Math.max(...runs.map(([, r]) => (r && typeof r.max_abs === "number" ? r.max_abs : 0)));
  return `${passed ? "✓" : "✗ failed:"} ${runs.map(([fmt]) => fmt).join(", ")}` +
         ` (max |Δ| ≤ ${worst.toExponential(1)})`;
}

const num = (x) => (typeof x === "number" ? x.toLocaleString("en-US") : x);

function para(text, cls) {
  return Object.assign(document.createElement("p"), { textContent: text, className: cls || "" });
}

// ---- the sample set ---------------------------------------------------------------------

async function loadManifest() {
  if (!state.samples) {
    const res = await fetch("ui/samples/samples.json");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    state.samples = (await res.json()).samples;
    $("sample-count").textContent = state.samples.length;
  }
  return state.samples;
}

async function runSamples() {
  const button = $("samples");
  button.disabled = true;
  try {
    const samples = await loadManifest();
    const files = await Promise.all(samples.map(async (s) => {
      const res = await fetch(`ui/samples/${encodeURIComponent(s.file)}`);
      if (!res.ok) throw new Error(`${s.file}: HTTP ${res.status}`);
      return new File([await res.blob()], s.file, { type: "image/png" });
    }));
    addFiles(files, samples.map((s) => s.label));
  } catch (e) {
    setStatus(`Could not load the sample set: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------

function clearAll() {
  state.generation += 1;
  state.queue = [];
  seenObserver.disconnect();
  state.items.forEach((it) => URL.revokeObjectURL(it.url));
  state.items = [];
  state.requests = 0;
  $("results").replaceChildren();
  MODELS.forEach((m) => { $(`ms-${m}`).textContent = "–"; });
  $("last-request").textContent = "–";
  updateSummary();
  setStatus("Cleared.");
}

function init() {
  const input = $("files");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  $("samples").addEventListener("click", runSamples);
  $("clear").addEventListener("click", clearAll);
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData ? e.clipboardData.files : []);
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  loadInfo();
  loadManifest().catch(() => {});
}

init();

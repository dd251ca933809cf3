// memvos interactive segmentation UI: plain JS, no dependencies, talks to the JSON API of server.py.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  info: null,        // video info from /api/state
  objects: [],       // [{id, name, color}]
  selected: null,    // selected object id
  frame: 0,
  version: -1,
  image: null,       // HTMLImageElement of the current frame
  labels: null,      // Uint8Array (H*W) object ids of the current frame
  annotations: {},   // per object id: {points, scribbles, box, mask}
  annotated: [],
  propagated: [],
  drag: null,        // {tool, start: [x, y], points: [[x, y]...]}
  actions: 0,        // annotation requests completed (their result rendered)
};
const body = document.body;
const canvas = $("view");
const ctx = canvas.getContext("2d");
const overlayCanvas = document.createElement("canvas");

// ------------------------------------------------------------------ messages and API
let messageTimer = null;
function showMessage(text, kind = "error") {
  $("message-text").textContent = text;
  $("message").className = kind;
  $("message").hidden = false;
  if (kind === "error") body.dataset.error = text;
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(() => { $("message").hidden = true; }, 4000);
}
$("message-close").onclick = () => { $("message").hidden = true; };

async function api(method, url, data) {
  const opts = { method, headers: {} };
  if (data !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(data);
  }
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (err) {
    showMessage(`the memvos server does not answer (${err})`);
    throw err;
  }
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try { msg = (await resp.json()).error || msg; } catch (_) { /* not JSON */ }
    showMessage(msg);
    throw new Error(msg);
  }
  return resp;
}
const getJSON = async (url) => (await api("GET", url)).json();
const send = async (method, url, data) => (await api(method, url, data)).json();

// ------------------------------------------------------------------ state
async function loadState() {
  const s = await getJSON("/api/state");
  ui.info = s.video;
  ui.objects = s.objects;
  ui.annotated = s.annotated_frames;
  ui.propagated = s.propagated_frames;
  if (ui.selected === null || !ui.objects.some((o) => o.id === ui.selected)) {
    ui.selected = ui.objects.length ? ui.objects[ui.objects.length - 1].id : null;
  }
  $("video-info").textContent =
    `${s.video.path} — ${s.video.num_frames} frames, ${s.video.width}×${s.video.height}`;
  $("embed-info").textContent = s.trained_embeddings ? "" : "untrained pixel embeddings: clicks are approximate";
  $("slider").max = String(s.video.num_frames - 1);
  canvas.width = s.video.width;
  canvas.height = s.video.height;
  overlayCanvas.width = s.video.width;
  overlayCanvas.height = s.video.height;
  renderObjects();
  renderMarks();
  fitCanvas();
  if (s.propagation.running) pollPropagation();
  return s;
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren();
  for (const o of ui.objects) {
    const li = document.createElement("li");
    li.dataset.id = String(o.id);
    li.className = o.id === ui.selected ? "selected" : "";
    const pick = document.createElement("input");
    pick.type = "radio"; pick.name = "object"; pick.checked = o.id === ui.selected;
    pick.title = `select object ${o.id}`;
    pick.onchange = () => { ui.selected = o.id; renderObjects(); };
    const color = document.createElement("input");
    color.type = "color"; color.value = o.color; color.title = "colour";
    color.onchange = async () => { await updateObject(o.id, { color: color.value }); };
    const name = document.createElement("input");
    name.type = "text"; name.value = o.name; name.className = "object-name"; name.title = `object ${o.id}`;
    name.onchange = async () => { await updateObject(o.id, { name: name.value }); };
    name.onfocus = () => { if (ui.selected !== o.id) { ui.selected = o.id; renderObjects(); } };
    const del = document.createElement("button");
    del.type = "button"; del.textContent = "✕"; del.title = "delete object (and its annotations)";
    del.className = "delete-object";
    del.onclick = async () => {
      if (!confirm(`Delete ${o.name} and all its annotations?`)) return;
      await send("DELETE", `/api/objects/${o.id}`);
      await loadState();
      await showFrame(ui.frame, true);
    };
    li.append(pick, color, name, del);
    list.append(li);
  }
}

async function updateObject(id, patch) {
  try {
    await send("PATCH", `/api/objects/${id}`, patch);
  } finally {
    await loadState();
    render();
  }
}

$("add-object").onclick = async () => {
  const o = await send("POST", "/api/objects", {});
  ui.selected = o.id;
  await loadState();
};

// ------------------------------------------------------------------ frames
let showToken = 0;
async function showFrame(i, force = false) {
  if (!ui.info) return;
  i = Math.max(0, Math.min(ui.info.num_frames - 1, i));
  const token = ++showToken;
  body.dataset.rendered = "";
  const changed = force || i !== ui.frame || !ui.image;
  ui.frame = i;
  $("slider").value = String(i);
  $("frame-label").textContent = `${i} / ${ui.info.num_frames - 1}  (${ui.info.names[i]})`;
  try {
    const [image, labels, annotations] = await Promise.all([
      changed ? loadImage(`/api/frames/${i}.jpg`) : Promise.resolve(ui.image),
      api("GET", `/api/frames/${i}/labels`).then(async (r) => {
        ui.version = Number(r.headers.get("X-Version"));
        return new Uint8Array(await r.arrayBuffer());
      }),
      getJSON(`/api/frames/${i}/annotations`),
    ]);
    if (token !== showToken) return;  // a newer frame was asked for meanwhile
    ui.image = image; ui.labels = labels; ui.annotations = annotations;
    render();
    body.dataset.rendered = `${i}:${ui.version}`;
  } catch (err) {
    if (token === showToken) { ui.image = null; ui.labels = null; render(); body.dataset.rendered = `${i}:error`; }
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = async () => {
      let msg = `frame ${ui.frame} could not be loaded`;
      try { const r = await fetch(url); msg = (await r.json()).error || msg; } catch (_) { /* keep */ }
      showMessage(msg);
      reject(new Error(msg));
    };
    img.src = url;
  });
}

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function render() {
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (ui.image) ctx.drawImage(ui.image, 0, 0, w, h);
  if (ui.labels && $("show-overlay").checked && ui.labels.length === w * h) {
    const lut = new Uint8ClampedArray(256 * 4);
    const alpha = Math.round(2.55 * Number($("opacity").value));
    for (const o of ui.objects) {
      const [r, g, b] = hexToRgb(o.color);
      lut.set([r, g, b, alpha], o.id * 4);
    }
    const octx = overlayCanvas.getContext("2d");
    const img = octx.createImageData(w, h);
    const px = img.data, labels = ui.labels;
    for (let p = 0; p < labels.length; p++) {
      const id = labels[p];
      if (id) { const k = id * 4, q = p * 4; px[q] = lut[k]; px[q + 1] = lut[k + 1]; px[q + 2] = lut[k + 2]; px[q + 3] = lut[k + 3]; }
    }
    octx.putImageData(img, 0, 0);
    ctx.drawImage(overlayCanvas, 0, 0);
  }
  drawAnnotations();
  drawDrag();
}

function objectColor(id) {
  const o = ui.objects.find((x) => x.id === Number(id));
  return o ? o.color : "#ffffff";
}

function drawAnnotations() {
  const r = Math.max(3, canvas.width / 160);
  ctx.lineWidth = Math.max(1.5, canvas.width / 400);
  for (const [id, a] of Object.entries(ui.annotations)) {
    const color = objectColor(id);
    for (const s of a.scribbles) {
      ctx.strokeStyle = color;
      ctx.setLineDash(s.positive ? [] : [6, 4]);
      ctx.beginPath();
      s.points.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (a.box) {
      ctx.strokeStyle = color;
      const [x0, y0, x1, y1] = a.box;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    for (const [x, y, label] of a.points) {
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = label ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.strokeStyle = color;
      ctx.stroke();
    }
  }
}

function drawDrag() {
  const d = ui.drag;
  if (!d || d.tool === "click-pos" || d.tool === "click-neg") return;
  ctx.strokeStyle = objectColor(ui.selected);
  ctx.setLineDash(d.tool === "scribble-neg" ? [6, 4] : []);
  if (d.tool === "box") {
    const [x0, y0] = d.start, [x1, y1] = d.points[d.points.length - 1];
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  } else {
    ctx.beginPath();
    d.points.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

function fitCanvas() {
  // show the frame as large as the viewer allows (small videos enlarged, large ones shrunk)
  const wrap = $("canvas-wrap");
  const scale = Math.min(wrap.clientWidth / canvas.width, wrap.clientHeight / canvas.height);
  if (scale > 0 && Number.isFinite(scale)) {
    canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
    canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
  }
}

function renderMarks() {
  const m = $("marks");
  const w = m.clientWidth || 800;
  m.width = w;
  const c = m.getContext("2d");
  c.clearRect(0, 0, w, m.height);
  if (!ui.info) return;
  const n = ui.info.num_frames;
  const cell = Math.max(1, w / n);
  c.fillStyle = "#666";
  for (const i of ui.propagated) c.fillRect((i * w) / n, 3, cell, 4);
  c.fillStyle = "#f39c12";
  for (const i of ui.annotated) c.fillRect((i * w) / n, 0, Math.max(2, cell), 10);
}

// ------------------------------------------------------------------ tools
const tool = () => document.querySelector("input[name=tool]:checked").value;

function toImage(e) {
  const rect = canvas.getBoundingClientRect();
  const x = ((e.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((e.clientY - rect.top) * canvas.height) / rect.height;
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

canvas.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 || !ui.info) return;
  canvas.setPointerCapture(e.pointerId);
  const p = toImage(e);
  ui.drag = { tool: tool(), start: p, points: [p] };
});

canvas.addEventListener("pointermove", (e) => {
  if (!ui.drag) return;
  ui.drag.points.push(toImage(e));
  render();
});

canvas.addEventListener("pointerup", async (e) => {
  const d = ui.drag;
  ui.drag = null;
  if (!d) return;
  const end = toImage(e);
  if (ui.selected === null) {
    render();
    showMessage("add an object first (+ Add object), then click on it");
    return;
  }
  const i = ui.frame;
  body.dataset.busy = "1";
  try {
    if (d.tool === "click-pos" || d.tool === "click-neg") {
      await send("POST", `/api/frames/${i}/clicks`,
        { obj_id: ui.selected, x: end[0], y: end[1], positive: d.tool === "click-pos" });
    } else if (d.tool === "box") {
      await send("POST", `/api/frames/${i}/box`, { obj_id: ui.selected, box: [...d.start, ...end] });
    } else {
      d.points.push(end);
      await send("POST", `/api/frames/${i}/scribbles`,
        { obj_id: ui.selected, points: d.points, positive: d.tool === "scribble-pos" });
    }
  } catch (_) {
    // the message is shown; nothing was changed on the server. The page may be stale (an object
    // deleted elsewhere): re-read the objects.
    try { await loadState(); } catch (_) { /* message shown */ }
  } finally {
    body.dataset.busy = "";
    await refresh();
    ui.actions += 1;
    body.dataset.actions = String(ui.actions);  // annotations sent and their result shown
  }
});

async function refresh() {
  const s = await getJSON("/api/state");
  ui.annotated = s.annotated_frames;
  ui.propagated = s.propagated_frames;
  renderMarks();
  await showFrame(ui.frame);
}

$("clear-frame").onclick = async () => {
  if (ui.selected === null) return;
  await send("DELETE", `/api/frames/${ui.frame}/annotations?obj_id=${ui.selected}`);
  await refresh();
};

// ------------------------------------------------------------------ propagation and export
$("propagate").onclick = async () => {
  try {
    await send("POST", "/api/propagate", { frame: ui.frame, direction: $("direction").value });
  } catch (_) { return; }
  body.dataset.propagation = "running";
  pollPropagation();
};

async function pollPropagation() {
  $("propagate").disabled = true;
  $("export").disabled = true;
  let s;
  try {
    s = await getJSON("/api/propagate");
  } catch (_) {
    setTimeout(pollPropagation, 1000);
    return;
  }
  $("progress").max = Math.max(1, s.total);
  $("progress").value = s.done;
  $("progress-text").textContent = s.running ? `${s.done} / ${s.total} frames` : s.error ? "failed" : `done: ${s.done} frames in ${s.seconds} s`;
  if (s.running) {
    setTimeout(pollPropagation, 250);
    return;
  }
  $("propagate").disabled = false;
  $("export").disabled = false;
  if (s.error) showMessage(s.error);
  await refresh();
  body.dataset.propagation = s.error ? "error" : "done";
}

$("export").onclick = async () => {
  body.dataset.export = "running";
  $("export").disabled = true;
  $("export-result").textContent = "exporting…";
  try {
    const r = await send("POST", "/api/export", { overlay: $("export-overlay").checked });
    const out = $("export-result");
    out.replaceChildren();
    const note = document.createElement("div");
    note.textContent = `${r.frames} masks in ${r.masks_dir}` + (r.not_segmented ? ` (${r.not_segmented} frames not segmented yet)` : "");
    const zip = document.createElement("a");
    zip.href = "/api/export/masks.zip"; zip.textContent = "download masks.zip"; zip.id = "download-masks";
    out.append(note, zip);
    if (r.overlay) {
      const mp4 = document.createElement("a");
      mp4.href = "/api/export/overlay.mp4"; mp4.textContent = "download overlay.mp4"; mp4.id = "download-overlay";
      out.append(mp4);
    }
    body.dataset.export = "done";
    showMessage("exported", "info");
  } catch (_) {
    $("export-result").textContent = "";
    body.dataset.export = "error";
  } finally {
    $("export").disabled = false;
  }
};

// ------------------------------------------------------------------ navigation
$("slider").oninput = () => showFrame(Number($("slider").value));
$("prev").onclick = () => showFrame(ui.frame - 1);
$("next").onclick = () => showFrame(ui.frame + 1);
$("show-overlay").onchange = render;
$("opacity").oninput = render;
window.addEventListener("resize", () => { renderMarks(); fitCanvas(); });
document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement && e.target.type === "text") return;
  if (e.key === "ArrowLeft") showFrame(ui.frame - 1);
  else if (e.key === "ArrowRight") showFrame(ui.frame + 1);
  else if (e.key >= "1" && e.key <= "5") document.querySelectorAll("input[name=tool]")[Number(e.key) - 1].checked = true;
});

window.memvosUI = ui;  // for debugging and the browser tests

(async () => {
  try {
    await loadState();
    await showFrame(0, true);
    body.dataset.state = "ready";
  } catch (err) {
    body.dataset.state = "error";
  }
})();

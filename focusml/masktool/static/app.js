// focusml mask tool: plain JS, no build step. The mask is a Uint8Array (1 = irrelevant) at the
// image's own resolution; the canvas shows image, CAM, mask and previews at that resolution and
// CSS scales it up (pixelated). Saving sends the raw bytes; the server writes a 0/255 PNG.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  info: null, split: null, cls: null, images: [], pos: 0,
  path: null, W: 0, H: 0, pixels: null, mask: null, cam: null,
  undo: [], dirty: false, drag: null, lastRect: null,
};

// ---- helpers ---------------------------------------------------------------------------------
function b64ToBytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function bytesToB64(a) {
  let s = "";
  for (let i = 0; i < a.length; i += 0x8000) s += String.fromCharCode.apply(null, a.subarray(i, i + 0x8000));
  return btoa(s);
}

async function api(url, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(url, opts);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

const q = (params) => new URLSearchParams(params).toString();

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}

function setDirty(d) {
  state.dirty = d;
  if (d) status("unsaved changes", "dirty");
}

function jet(v) { // v in [0, 1] → [r, g, b] 0..255
  const c = (x) => Math.max(0, Math.min(1, x));
  return [c(1.5 - Math.abs(4 * v - 3)) * 255, c(1.5 - Math.abs(4 * v - 2)) * 255, c(1.5 - Math.abs(4 * v - 1)) * 255];
}

// ---- rendering -------------------------------------------------------------------------------
function suggestionAt(i) {
  return state.cam && state.cam[i] >= Math.round(parseFloat($("threshold").value) * 255);
}

function render() {
  const { W, H, pixels, mask, cam } = state;
  if (!pixels) return;
  const out = ctx.createImageData(W, H);
  const d = out.data;
  const alpha = parseFloat($("opacity").value);
  const showCam = cam && $("show-cam").checked;
  const outline = cam && $("show-suggestion").checked;
  const r = state.drag && state.drag.kind === "rect" ? rectOf(state.drag) : null;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x, o = 4 * i;
      let R = pixels[o], G = pixels[o + 1], B = pixels[o + 2];
      if (showCam) {
        const [cr, cg, cb] = jet(cam[i] / 255);
        R = 0.55 * R + 0.45 * cr; G = 0.55 * G + 0.45 * cg; B = 0.55 * B + 0.45 * cb;
      }
      if (mask[i]) { R = (1 - alpha) * R + alpha * 255; G = (1 - alpha) * G; B = (1 - alpha) * B; }
      if (r && x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h) {
        const [pr, pg, pb] = state.drag.erase ? [60, 120, 255] : [255, 220, 0];
        R = 0.4 * R + 0.6 * pr; G = 0.4 * G + 0.6 * pg; B = 0.4 * B + 0.6 * pb;
      }
      if (outline && suggestionAt(i)) {
        const edge = x === 0 || y === 0 || x === W - 1 || y === H - 1 ||
          !suggestionAt(i - 1) || !suggestionAt(i + 1) || !suggestionAt(i - W) || !suggestionAt(i + W);
        if (edge) { R = 255; G = 0; B = 255; }
      }
      d[o] = R; d[o + 1] = G; d[o + 2] = B; d[o + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
}

// ---- editing ---------------------------------------------------------------------------------
function pushUndo() {
  state.undo.push(state.mask.slice());
  if (state.undo.length > 100) state.undo.shift();
}

function undo() {
  if (!state.undo.length) return status("nothing to undo");
  state.mask = state.undo.pop();
  setDirty(true);
  render();
}

function toPixel(e) {
  const b = canvas.getBoundingClientRect();
  const x = Math.floor((e.clientX - b.left) / b.width * state.W);
  const y = Math.floor((e.clientY - b.top) / b.height * state.H);
  return [Math.max(0, Math.min(state.W - 1, x)), Math.max(0, Math.min(state.H - 1, y))];
}

function rectOf(drag) {
  const x0 = Math.min(drag.x0, drag.x1), x1 = Math.max(drag.x0, drag.x1);
  const y0 = Math.min(drag.y0, drag.y1), y1 = Math.max(drag.y0, drag.y1);
  return { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

function fillRect(r, value) {
  for (let y = r.y; y < r.y + r.h; y++) state.mask.fill(value, y * state.W + r.x, y * state.W + r.x + r.w);
}

function stamp(cx, cy, radius, value) {
  const { W, H, mask } = state;
  for (let y = Math.max(0, Math.floor(cy - radius)); y <= Math.min(H - 1, Math.ceil(cy + radius)); y++) {
    for (let x = Math.max(0, Math.floor(cx - radius)); x <= Math.min(W - 1, Math.ceil(cx + radius)); x++) {
      if ((x - cx) ** 2 + (y - cy) ** 2 <= radius * radius + 0.25) mask[y * W + x] = value;
    }
  }
}

function strokeTo(x, y) {
  const drag = state.drag, radius = parseInt($("brush").value, 10), value = drag.erase ? 0 : 1;
  const steps = Math.max(1, Math.ceil(Math.hypot(x - drag.x1, y - drag.y1) * 2));
  for (let s = 1; s <= steps; s++) {
    stamp(drag.x1 + (x - drag.x1) * s / steps, drag.y1 + (y - drag.y1) * s / steps, radius, value);
  }
  drag.x1 = x; drag.y1 = y;
}

canvas.addEventListener("pointerdown", (e) => {
  if (!state.mask || e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  const [x, y] = toPixel(e);
  const kind = $("tool-brush").checked ? "brush" : "rect";
  pushUndo();
  state.drag = { kind, erase: $("erase").checked, x0: x, y0: y, x1: x, y1: y };
  if (kind === "brush") stamp(x, y, parseInt($("brush").value, 10), state.drag.erase ? 0 : 1);
  render();
});

canvas.addEventListener("pointermove", (e) => {
  if (!state.drag) return;
  const [x, y] = toPixel(e);
  if (state.drag.kind === "brush") strokeTo(x, y);
  else { state.drag.x1 = x; state.drag.y1 = y; }
  render();
});

function endDrag(e) {
  const drag = state.drag;
  if (!drag) return;
  if (e && e.type === "pointerup") {
    const [x, y] = toPixel(e);
    if (drag.kind === "brush") strokeTo(x, y);
    else { drag.x1 = x; drag.y1 = y; }
  }
  if (drag.kind === "rect") {
    const r = rectOf(drag);
    fillRect(r, drag.erase ? 0 : 1);
    state.lastRect = { ...r, erase: drag.erase };
    $("last-rect").textContent = `${drag.erase ? "erase " : ""}x=${r.x} y=${r.y} w=${r.w} h=${r.h}`;
    $("apply-class").disabled = $("apply-split").disabled = false;
  }
  state.drag = null;
  setDirty(true);
  render();
}

canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);

// ---- server round trips ----------------------------------------------------------------------
async function save() {
  if (!state.path) return;
  const path = state.path;
  try {
    const res = await api("/api/mask", { path, width: state.W, height: state.H, data: bytesToB64(state.mask) });
    const item = state.images.find((im) => im.path === path);
    if (item) item.annotated = res.annotated;
    renderList();
    if (path === state.path) { state.dirty = false; status(`saved ${path}`, "saved"); }
  } catch (err) {
    status(`could not save: ${err.message}`, "error");
    throw err;
  }
}

async function applyRect(whole) {
  const r = state.lastRect;
  if (!r) return;
  try {
    if (state.dirty) await save();
    const res = await api("/api/apply_rect", {
      split: state.split, class: whole ? null : state.cls, rect: { x: r.x, y: r.y, w: r.w, h: r.h }, erase: r.erase,
    });
    await reloadMaskKeepingUndo();
    await loadList(state.path);
    status(`${r.erase ? "erased" : "applied"} the rectangle on ${res.written} masks of ` +
      `${whole ? "split " + state.split : "class " + state.cls} (Undo apply reverts)`, "saved");
  } catch (err) { status(`apply failed: ${err.message}`, "error"); }
}

async function undoApply() {
  try {
    const res = await api("/api/undo_apply", {});
    await reloadMaskKeepingUndo();
    await loadList(state.path);
    status(`restored ${res.restored} masks`, "saved");
  } catch (err) { status(err.message, "error"); }
}

async function reloadMaskKeepingUndo() {
  const m = await api("/api/mask?" + q({ path: state.path }));
  pushUndo();
  state.mask = b64ToBytes(m.data);
  state.dirty = false;
  render();
}

async function loadImage(pos) {
  if (state.dirty && state.path) {
    if (confirm(`Save the changes to ${state.path} before leaving it?`)) await save();
  }
  if (!state.images.length) {
    state.path = state.pixels = state.mask = state.cam = null;
    canvas.removeAttribute("data-path");
    $("counter").textContent = "0 / 0";
    $("name").textContent = "";
    return;
  }
  state.pos = Math.max(0, Math.min(state.images.length - 1, pos));
  const path = state.images[state.pos].path;
  status(`loading ${path}…`);
  const [blob, m, cam] = await Promise.all([
    fetch("/api/image?" + q({ path })).then((r) => { if (!r.ok) throw new Error(r.statusText); return r.blob(); }),
    api("/api/mask?" + q({ path })),
    state.info.has_cam ? api("/api/cam?" + q({ path })) : Promise.resolve(null),
  ]);
  const bitmap = await createImageBitmap(blob);
  const off = document.createElement("canvas");
  off.width = bitmap.width; off.height = bitmap.height;
  const octx = off.getContext("2d");
  octx.drawImage(bitmap, 0, 0);
  Object.assign(state, {
    path, W: m.width, H: m.height, pixels: octx.getImageData(0, 0, m.width, m.height).data,
    mask: b64ToBytes(m.data), cam: cam ? b64ToBytes(cam.data) : null, undo: [], dirty: false,
  });
  canvas.width = state.W; canvas.height = state.H;
  const scale = Math.min(600 / state.W, 600 / state.H);
  const s = scale >= 1 ? Math.floor(scale) : scale;
  canvas.style.width = `${state.W * s}px`;
  canvas.style.height = `${state.H * s}px`;
  canvas.dataset.path = path;
  $("counter").textContent = `${state.pos + 1} / ${state.images.length}`;
  $("name").textContent = path;
  $("pred").textContent = cam ? `predicted: ${cam.pred} (p=${cam.prob.toFixed(2)})` : "";
  renderList();
  render();
  status(`${path} (${state.W}×${state.H})`);
}

function renderList() {
  const ul = $("list");
  ul.textContent = "";
  state.images.forEach((im, i) => {
    const li = document.createElement("li");
    li.textContent = im.name;
    li.dataset.path = im.path;
    if (im.annotated) li.classList.add("annotated");
    if (im.broken) { li.classList.add("broken"); li.title = im.broken; }
    if (i === state.pos) li.classList.add("current");
    li.addEventListener("click", () => loadImage(i).catch((e) => status(e.message, "error")));
    ul.appendChild(li);
  });
}

async function loadList(keepPath) {
  const res = await api("/api/list?" + q({ split: state.split, class: state.cls }));
  state.images = res.images;
  const pos = keepPath ? state.images.findIndex((im) => im.path === keepPath) : -1;
  if (pos >= 0) { state.pos = pos; renderList(); return; }
  renderList();
  await loadImage(0);
}

function fillSelect(sel, values, current) {
  sel.textContent = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = o.textContent = v;
    sel.appendChild(o);
  }
  if (current && values.includes(current)) sel.value = current;
}

async function chooseSplit(split) {
  state.split = split;
  const classes = state.info.splits[split] || [];
  fillSelect($("class"), classes, state.cls);
  state.cls = $("class").value || null;
  await chooseClass(state.cls);
}

async function chooseClass(cls) {
  if (state.dirty && state.path && confirm(`Save the changes to ${state.path} first?`)) await save();
  state.dirty = false;
  state.cls = cls;
  state.images = [];
  if (cls) await loadList(null);
  else await loadImage(0);
}

// ---- wiring ----------------------------------------------------------------------------------
const guard = (fn) => (...args) => Promise.resolve(fn(...args)).catch((e) => status(e.message, "error"));

$("split").addEventListener("change", guard((e) => chooseSplit(e.target.value)));
$("class").addEventListener("change", guard((e) => chooseClass(e.target.value)));
$("prev").addEventListener("click", guard(() => loadImage(state.pos - 1)));
$("next").addEventListener("click", guard(() => loadImage(state.pos + 1)));
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { if (!state.mask) return; pushUndo(); state.mask.fill(0); setDirty(true); render(); });
$("save").addEventListener("click", guard(save));
$("apply-class").addEventListener("click", guard(() => applyRect(false)));
$("apply-split").addEventListener("click", guard(() => applyRect(true)));
$("undo-apply").addEventListener("click", guard(undoApply));
$("accept").addEventListener("click", acceptSuggestion);
for (const id of ["opacity", "show-cam", "show-suggestion"]) $(id).addEventListener("input", render);
$("threshold").addEventListener("input", () => {
  $("threshold-value").textContent = parseFloat($("threshold").value).toFixed(2);
  render();
});
$("brush").addEventListener("input", () => { $("brush-value").textContent = $("brush").value; });

function acceptSuggestion() {
  if (!state.cam || !state.mask) return;
  pushUndo();
  for (let i = 0; i < state.mask.length; i++) state.mask[i] = suggestionAt(i) ? 1 : 0;
  setDirty(true);
  render();
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || (e.target.tagName === "INPUT" && e.target.type === "text")) return;
  if (state.mode === "proposals") { proposalKey(e); return; }
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = {
    ArrowLeft: guard(() => loadImage(state.pos - 1)), ArrowRight: guard(() => loadImage(state.pos + 1)),
    r: () => { $("tool-rect").checked = true; }, b: () => { $("tool-brush").checked = true; },
    e: () => { $("erase").checked = !$("erase").checked; }, s: guard(save), a: acceptSuggestion, u: undo,
  };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

window.addEventListener("beforeunload", (e) => { if (state.dirty) { e.preventDefault(); e.returnValue = ""; } });

// ---- proposals: yes / no / mixed on the groups `focusml discover` found ------------------------------
// One proposal at a time: its members as thumbnails with the region (their cells) outlined in magenta.
// The server writes the masks (proposals.py); the page only sends the answer and shows the counts.
const PAGE = 24, THUMB = 152;
const prop = { list: [], summary: null, next: null, current: null, page: 0, picking: false, picks: new Set(),
  bitmaps: new Map(), file: null };
state.mode = "draw";
state.stale = false; // masks changed by an answer: reload the draw view when it is shown again

function pStatus(text, kind) { const el = $("p-status"); el.textContent = text; el.className = kind || ""; }

function setMode(mode) {
  state.mode = mode;
  $("proposals-view").hidden = mode !== "proposals";
  $("draw-view").hidden = $("draw-nav").hidden = mode !== "draw";
  $("mode-draw").setAttribute("aria-pressed", String(mode === "draw"));
  $("mode-proposals").setAttribute("aria-pressed", String(mode === "proposals"));
  if (mode === "draw" && state.stale && state.cls) {
    state.stale = false;
    return loadList(state.path).then(() => (state.dirty || !state.path ? null : reloadMaskKeepingUndo()));
  }
  return Promise.resolve();
}

function pct(v) { return v === null || v === undefined ? "—" : `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`; }

function renderCounter() {
  const s = prop.summary;
  const left = s.proposals - s.answers;
  $("p-counter").textContent =
    `${s.answers} answered · ${s.annotated} images annotated · ${left} proposal${left === 1 ? "" : "s"} left`;
  $("p-counter").dataset.answered = s.answers;
}

function renderProposalList() {
  const ul = $("p-list");
  ul.textContent = "";
  for (const p of prop.list) {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    li.innerHTML = `<span class="ans"></span><b>#${p.rank}</b> <span class="scope"></span><br><small></small>`;
    li.querySelector(".scope").textContent = p.scope;
    li.querySelector("small").textContent = `${p.members} images · region ${pct(p.size)} · flips ${pct(p.flip_rate)}`;
    const ans = li.querySelector(".ans");
    if (p.answer) { ans.textContent = p.answer; ans.classList.add(p.answer); }
    if (prop.current && p.id === prop.current.id) li.classList.add("current");
    li.addEventListener("click", guardP(() => showProposal(p.id)));
    ul.appendChild(li);
  }
}

async function loadProposals() {
  const res = await api("/api/proposals");
  Object.assign(prop, { list: res.proposals, summary: res.summary, next: res.next, file: res.file });
  renderCounter();
  renderProposalList();
  return res;
}

async function showProposal(id) {
  if (!id) return;
  const p = await api("/api/proposal?" + q({ id }));
  Object.assign(prop, { current: p, page: 0, picking: false, picks: new Set(p.picked) });
  const index = prop.list.findIndex((x) => x.id === id);
  $("p-title").textContent = `Proposal ${index + 1} of ${prop.list.length} · ${p.scope}`;
  const drawn = p.members.filter((m) => m.state === "drawn").length;
  $("p-facts").innerHTML = "region <b></b> of the image · flip rate <b></b> · <b></b> images";
  const b = $("p-facts").querySelectorAll("b");
  b[0].textContent = pct(p.size); b[1].textContent = pct(p.flip_rate); b[2].textContent = p.members.length;
  if (drawn) $("p-facts").append(` (${drawn} drawn by hand: kept)`);
  for (const [key, btn] of [["yes", "p-yes"], ["no", "p-no"], ["mixed", "p-mixed"]]) {
    $(btn).classList.toggle("chosen", p.answer === key);
  }
  pStatus(p.answer ? `answered: ${p.answer}` + (p.answer === "mixed" ? ` (${p.picked.length} picked)` : "") : "");
  renderProposalList();
  renderPicking();
  await renderGrid();
  $("proposals-view").dataset.id = p.id;
}

function renderPicking() {
  $("p-pick").hidden = !prop.picking;
  $("p-grid").classList.toggle("picking", prop.picking);
  $("p-picked").textContent = prop.picks.size;
  for (const fig of $("p-grid").children) fig.classList.toggle("picked", prop.picks.has(fig.dataset.path));
}

async function bitmapOf(path) {
  if (!prop.bitmaps.has(path)) {
    if (prop.bitmaps.size > 400) prop.bitmaps.clear();
    prop.bitmaps.set(path, fetch("/api/image?" + q({ path })).then((r) => {
      if (!r.ok) throw new Error(`${path}: ${r.statusText}`);
      return r.blob();
    }).then(createImageBitmap));
  }
  return prop.bitmaps.get(path);
}

function cellsOf(rows) { return rows.map((r) => Array.from(r, (c) => c === "1")); }

function drawThumb(canvas, bitmap, rows) {
  // The image fitted into the square, then each set cell's footprint (cells_to_pixels: pixel y belongs to
  // cell floor(y·h/H), so cell i covers rows ceil(i·H/h) .. ceil((i+1)·H/h)−1) filled lightly, its border
  // against unset cells outlined in magenta.
  const dpr = window.devicePixelRatio || 1, size = Math.round(THUMB * dpr);
  canvas.width = canvas.height = size;
  const c = canvas.getContext("2d");
  const W = bitmap.width, H = bitmap.height, s = size / Math.max(W, H);
  const ox = (size - W * s) / 2, oy = (size - H * s) / 2;
  c.fillStyle = "#fff"; c.fillRect(0, 0, size, size);
  c.imageSmoothingEnabled = s < 1;
  c.drawImage(bitmap, ox, oy, W * s, H * s);
  const cells = cellsOf(rows), h = cells.length, w = cells[0].length;
  const ys = Array.from({ length: h + 1 }, (_, i) => oy + Math.ceil(i * H / h) * s);
  const xs = Array.from({ length: w + 1 }, (_, j) => ox + Math.ceil(j * W / w) * s);
  const on = (i, j) => i >= 0 && j >= 0 && i < h && j < w && cells[i][j];
  c.fillStyle = "rgba(255, 0, 255, 0.18)";
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) if (on(i, j)) c.fillRect(xs[j], ys[i], xs[j + 1] - xs[j], ys[i + 1] - ys[i]);
  }
  c.strokeStyle = "#ff00ff"; c.lineWidth = Math.max(2, 3 * dpr); c.lineCap = "square";
  c.beginPath();
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      if (!on(i, j)) continue;
      if (!on(i - 1, j)) { c.moveTo(xs[j], ys[i]); c.lineTo(xs[j + 1], ys[i]); }
      if (!on(i + 1, j)) { c.moveTo(xs[j], ys[i + 1]); c.lineTo(xs[j + 1], ys[i + 1]); }
      if (!on(i, j - 1)) { c.moveTo(xs[j], ys[i]); c.lineTo(xs[j], ys[i + 1]); }
      if (!on(i, j + 1)) { c.moveTo(xs[j + 1], ys[i]); c.lineTo(xs[j + 1], ys[i + 1]); }
    }
  }
  c.stroke();
}

async function renderGrid() {
  const p = prop.current, grid = $("p-grid");
  const pages = Math.max(1, Math.ceil(p.members.length / PAGE));
  prop.page = Math.max(0, Math.min(pages - 1, prop.page));
  const shown = p.members.slice(prop.page * PAGE, (prop.page + 1) * PAGE);
  grid.textContent = "";
  grid.dataset.ready = "";
  const draws = shown.map((m) => {
    const fig = document.createElement("figure");
    fig.className = "thumb" + (m.state === "drawn" ? " drawn" : "");
    fig.dataset.path = m.path;
    fig.title = m.path + (m.state === "drawn" ? " (a mask drawn by hand: kept as it is)" : "");
    const cv = document.createElement("canvas");
    const cap = document.createElement("figcaption");
    cap.textContent = m.path.split("/").slice(1).join("/");
    fig.append(cv, cap);
    fig.addEventListener("click", () => {
      if (!prop.picking) return;
      if (prop.picks.has(m.path)) prop.picks.delete(m.path); else prop.picks.add(m.path);
      renderPicking();
    });
    grid.appendChild(fig);
    return bitmapOf(m.path).then((bm) => drawThumb(cv, bm, m.cells));
  });
  $("p-pages").hidden = pages < 2;
  $("p-page").textContent = `images ${prop.page * PAGE + 1}–${prop.page * PAGE + shown.length} of ${p.members.length}`;
  renderPicking();
  await Promise.all(draws);
  if (prop.current === p) grid.dataset.ready = "1";
}

async function sendAnswer(answer, members) {
  const p = prop.current;
  if (!p) return;
  const body = { id: p.id, answer };
  if (members) body.members = members;
  const res = await api("/api/answer", body);
  state.stale = true;
  const parts = [`${p.id}: ${answer}`];
  if (res.written) parts.push(`${res.written} mask${res.written === 1 ? "" : "s"} written`);
  if (res.kept_drawn) parts.push(`${res.kept_drawn} drawn by hand kept`);
  if (res.removed) parts.push(`${res.removed} taken back`);
  if (res.skipped) parts.push(`${res.skipped} unreadable skipped`);
  await loadProposals();
  await showProposal(res.next || p.id);
  pStatus(parts.join(" · ") + (res.next ? "" : " · all proposals answered"), "saved");
}

function startPicking() {
  if (!prop.current) return;
  prop.picking = true;
  renderPicking();
  pStatus("mixed: click the images whose region is a shortcut, then Save picks");
}

function cancelPicking() {
  prop.picking = false;
  prop.picks = new Set(prop.current ? prop.current.picked : []);
  renderPicking();
  pStatus("");
}

function stepProposal(delta) {
  if (!prop.current) return;
  const i = prop.list.findIndex((x) => x.id === prop.current.id) + delta;
  if (i >= 0 && i < prop.list.length) return showProposal(prop.list[i].id);
}

const guardP = (fn) => (...args) => Promise.resolve(fn(...args)).catch((e) => pStatus(e.message, "error"));

function proposalKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = prop.picking
    ? { Enter: () => sendAnswer("mixed", [...prop.picks]), Escape: cancelPicking }
    : { y: () => sendAnswer("yes"), n: () => sendAnswer("no"), m: startPicking,
        ArrowLeft: () => stepProposal(-1), ArrowRight: () => stepProposal(1) };
  if (keys[e.key]) { e.preventDefault(); guardP(keys[e.key])(); }
}

$("mode-draw").addEventListener("click", guard(() => setMode("draw")));
$("mode-proposals").addEventListener("click", guardP(() => setMode("proposals")));
$("p-yes").addEventListener("click", guardP(() => sendAnswer("yes")));
$("p-no").addEventListener("click", guardP(() => sendAnswer("no")));
$("p-mixed").addEventListener("click", startPicking);
$("p-submit").addEventListener("click", guardP(() => sendAnswer("mixed", [...prop.picks])));
$("p-cancel").addEventListener("click", cancelPicking);
$("p-all").addEventListener("click", () => {
  prop.current.members.forEach((m) => prop.picks.add(m.path));
  renderPicking();
});
$("p-none").addEventListener("click", () => { prop.picks.clear(); renderPicking(); });
$("p-prev").addEventListener("click", guardP(() => stepProposal(-1)));
$("p-next").addEventListener("click", guardP(() => stepProposal(1)));
$("p-page-prev").addEventListener("click", guardP(() => { prop.page -= 1; return renderGrid(); }));
$("p-page-next").addEventListener("click", guardP(() => { prop.page += 1; return renderGrid(); }));

async function initProposals() {
  $("modes").hidden = false;
  await setMode("proposals");
  const res = await loadProposals();
  await showProposal(res.next || (res.proposals[0] && res.proposals[0].id));
  $("proposals-view").dataset.ready = "1";
}

async function init() {
  state.info = await api("/api/info");
  $("root").textContent = state.info.root + (state.info.run_id ? ` · CAM of run ${state.info.run_id}` : "");
  $("cam-tools").hidden = !state.info.has_cam;
  const splits = Object.keys(state.info.splits);
  if (state.info.proposals) $("root").textContent += ` · proposals ${state.info.proposals}`;
  if (!splits.length) return status("no splits under images/", "error");
  fillSelect($("split"), splits, splits.includes("train") ? "train" : splits[0]);
  await chooseSplit($("split").value);
  document.body.dataset.ready = "1";
  if (state.info.proposals) {
    await initProposals().catch((e) => pStatus(`could not load the proposals: ${e.message}`, "error"));
  }
}

init().catch((e) => status(`could not start: ${e.message}`, "error"));

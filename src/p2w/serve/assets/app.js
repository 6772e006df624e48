// The p2w page: pick a reference image (file, drop, paste, or a result), type words, see results, refine.
// No framework, no CDN: everything is served by `p2w serve` itself. The token lives in an HttpOnly cookie.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ref: null, status: null, busy: false };

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

async function loadStatus() {
  try {
    const s = await api("/api/status");
    state.status = s;
    const mapper = s.mapper ? `mapper ${s.mapper}` : "no mapper";
    $("about").textContent = `${s.backbone} · ${mapper} · ${s.photos} photos`;
    if (!$("prompt").value) $("prompt").placeholder = s.prompt;
    showMessage(s.message);
  } catch (e) {
    showMessage(e.message);
  }
}

function setReference(ref) {
  state.ref = ref;
  const img = $("ref-image");
  if (ref) {
    img.src = ref.src;
    img.alt = ref.label;
    img.hidden = false;
    $("drop").classList.add("has-image");
    $("ref-label").textContent = ref.label;
    $("clear-ref").hidden = false;
  } else {
    img.removeAttribute("src");
    img.hidden = true;
    $("drop").classList.remove("has-image");
    $("ref-label").textContent = "";
    $("clear-ref").hidden = true;
  }
}

async function uploadFile(file) {
  if (!file) return;
  if (state.status && file.size > state.status.max_upload_bytes) {
    showMessage(`${file.name} is ${file.size} bytes, over the server's limit of ${state.status.max_upload_bytes}`);
    return;
  }
  showMessage("");
  try {
    const answer = await api("/api/upload", {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    setReference({ kind: "upload", id: answer.upload, src: URL.createObjectURL(file), label: file.name || "pasted image" });
    await search();
  } catch (e) {
    showMessage(`cannot use ${file.name || "that image"}: ${e.message}`);
  }
}

function queryBody(mode) {
  const body = { text: $("text").value.trim() || null, mode: mode || null, k: Number($("k").value) || 24 };
  const prompt = $("prompt").value.trim();
  const within = $("within").value.trim();
  if (prompt) body.prompt = prompt;
  if (within) body.within = within;
  if (state.ref && state.ref.kind === "upload") body.upload = state.ref.id;
  if (state.ref && state.ref.kind === "photo") body.photo = state.ref.id;
  return body;
}

async function search(event) {
  if (event) event.preventDefault();
  if (state.busy) return;
  const body = queryBody($("mode").value);
  if (!body.text && !body.upload && body.photo == null && !body.prompt) {
    showMessage("give a reference image, some words, or both");
    return;
  }
  state.busy = true;
  $("search").disabled = true;
  try {
    const columns = [];
    const main = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) });
    columns.push({ title: body.mode || (body.upload || body.photo != null ? (body.text ? "pic2word" : "image") : "text"),
                   results: main.results });
    if ($("compare").checked && (body.upload || body.photo != null)) {
      const average = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body: JSON.stringify({ ...body, mode: "average" }) });
      columns[0].title = body.mode || "pic2word";
      columns.push({ title: "average (baseline)", results: average.results });
    }
    showMessage(state.status && state.status.message && !main.results.length ? state.status.message : "");
    render(columns);
  } catch (e) {
    showMessage(e.message);
  } finally {
    state.busy = false;
    $("search").disabled = false;
  }
}

function render(columns) {
  const root = $("results");
  root.replaceChildren();
  root.classList.toggle("two", columns.length > 1);
  for (const column of columns) {
    const section = document.createElement("section");
    section.className = "column";
    const h2 = document.createElement("h2");
    h2.textContent = column.title;
    section.append(h2);
    const grid = document.createElement("div");
    grid.className = "grid";
    if (!column.results.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "no results";
      grid.append(p);
    }
    for (const hit of column.results) grid.append(card(hit));
    section.append(grid);
    root.append(section);
  }
}

function card(hit) {
  const item = document.createElement("div");
  item.className = "hit card";
  const pick = document.createElement("button");
  pick.type = "button";
  pick.className = "pick";
  pick.title = "use as the reference image";
  pick.dataset.photo = String(hit.id);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = `/api/thumb/${hit.id}`;
  img.alt = hit.path;
  img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 96));
  pick.append(img);
  pick.addEventListener("click", () => {
    setReference({ kind: "photo", id: hit.id, src: `/api/thumb/${hit.id}`, label: hit.path });
    search();
  });
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `${hit.rank}. ${hit.score.toFixed(3)}`;
  const path = document.createElement("span");
  path.className = "path";
  path.textContent = hit.path;
  const open = document.createElement("a");
  open.href = `/api/photo/${hit.id}`;
  open.target = "_blank";
  open.rel = "noopener noreferrer";
  open.textContent = "open original";
  item.append(pick, score, path, open);
  return item;
}

function wire() {
  const drop = $("drop");
  $("query").addEventListener("submit", search);
  $("file").addEventListener("change", (e) => uploadFile(e.target.files[0]));
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    if (item) uploadFile(item.getAsFile());
  });
  $("clear-ref").addEventListener("click", () => { setReference(null); search(); });
  $("mode").addEventListener("change", () => search());
  $("compare").addEventListener("change", () => search());
}

wire();
loadStatus();

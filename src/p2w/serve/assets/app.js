// The p2w page: pick a reference image (file, drop, paste, or a result), type words, see results, refine.
// No framework, no CDN: everything is served by `p2w serve` itself. The token lives in an HttpOnly cookie.
// The page's CSP allows no inline script or style: all styling is by class in style.css, all wiring here.
"use strict";

const $ = (id) => document.getElementById(id);
const JSON_POST = { method: "POST", headers: { "Content-Type": "application/json" } };
// refs: the reference images, in the order of the prompt's * ({kind: "upload"|"photo", id, src, label}); notice: what
// the server says is missing (no catalog, no mapper), shown whenever no error of the last action is; again: a search
// asked for while one ran.
const state = { refs: [], status: null, notice: "", busy: false, again: null };
const MAX_REFS = 8; // the server's Limits.images

function showMessage(text) {
  const box = $("message");
  const shown = text || state.notice;
  box.textContent = shown;
  box.hidden = !shown;
  box.classList.toggle("notice", !text);
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new ApiError((body && body.error) || `the server answered ${response.status}`, response.status);
  }
  return body;
}

function hasMapper() {
  return !state.status || Boolean(state.status.mapper);
}

async function loadStatus() {
  try {
    const s = await api("/api/status");
    state.status = s;
    const mapper = s.mapper ? `mapper ${s.mapper}` : "no mapper";
    // the catalog counts its photos; an index its rows; a remote back end does not say (photos is null)
    const photos = s.photos == null ? s.gallery : `${s.photos} photo${s.photos === 1 ? "" : "s"}`;
    $("about").textContent = `${s.backbone} · ${mapper} · ${photos}`;
    if (!$("prompt").value) $("prompt").placeholder = s.prompt;
    const notes = [];
    // Without a mapper the server's message is the mapper's (unless the catalog's took its place): say it for a page.
    if (s.message && (s.photos === 0 || s.mapper)) notes.push(s.message);
    if (!s.mapper) {
      notes.push(`no mapper for ${s.backbone}, so pic2word is off (restart with p2w serve --mapper NAME|FILE); ` +
                 "image and words are composed by slerp, and every other mode works");
      for (const option of document.querySelectorAll("#mode option, #compare option")) {
        if (MAPPED.includes(option.value)) option.disabled = true;
      }
    }
    showAlpha();
    state.notice = notes.join(". ");
    showMessage("");
  } catch (e) {
    showMessage(`cannot reach p2w serve: ${e.message}`);
  }
}

// The one reference image (none: null), in place of all of them.
function setReference(ref) {
  replaceReferences(ref ? [ref] : []);
}

function addReference(ref) {
  if (state.refs.length >= MAX_REFS) {
    showMessage(`a query takes at most ${MAX_REFS} reference images`);
    return false;
  }
  replaceReferences([...state.refs, ref]);
  return true;
}

function replaceReferences(refs) {
  for (const old of state.refs) {
    if (!refs.includes(old) && old.src.startsWith("blob:")) URL.revokeObjectURL(old.src);
  }
  state.refs = refs;
  const first = refs[0];
  const img = $("ref-image");
  if (first && first.src) {
    img.src = first.src;
    img.alt = first.label;
  } else {  // no reference, or one with no image to show (a layout's row without a local file)
    img.removeAttribute("src");
    img.alt = "";
  }
  $("ref-label").textContent = refs.map((r) => r.label).join(" + ");
  img.hidden = !first || !first.src;
  $("clear-ref").hidden = !refs.length;
  $("clear-ref").textContent = refs.length > 1 ? "Clear the references" : "Clear the reference";
  $("add-ref").hidden = !refs.length || refs.length >= MAX_REFS;
  $("drop").classList.toggle("has-image", Boolean(first));
  renderReferences(refs);
}

// With several references, each with the * it fills (the i-th * of the prompt takes the i-th) and a way to remove it.
function renderReferences(refs) {
  const list = $("ref-list");
  list.replaceChildren();
  list.hidden = refs.length < 2;
  refs.forEach((ref, i) => {
    const item = document.createElement("li");
    const star = document.createElement("span");
    star.className = "star";
    star.textContent = `* ${i + 1}`;
    star.title = `fills the ${ordinal(i + 1)} * of the prompt`;
    const img = document.createElement("img");
    img.alt = "";
    if (ref.src) img.src = ref.src;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = ref.label;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `remove reference ${i + 1}, ${ref.label}`);
    remove.addEventListener("click", () => {
      replaceReferences(state.refs.filter((r) => r !== ref));
      search(null, true);
    });
    item.append(star, img, name, remove);
    list.append(item);
  });
}

function ordinal(n) {
  return n === 1 ? "1st" : n === 2 ? "2nd" : n === 3 ? "3rd" : `${n}th`;
}

// Upload a file as the reference (add: as one more reference) and search.
async function uploadFile(file, add = false) {
  $("file").value = ""; // the same file can be chosen again
  $("add-file").value = "";
  if (!file) {
    showMessage("drop or paste an image file (a photo from your computer, or a result below)");
    return;
  }
  const name = file.name || "the pasted image";
  if (state.status && file.size > state.status.max_upload_bytes) {
    showMessage(`cannot use ${name}: it is ${file.size} bytes, over the server's limit of ` +
                `${state.status.max_upload_bytes}`);
    return;
  }
  try {
    const answer = await api("/api/upload", {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    showMessage("");
    const ref = { kind: "upload", id: answer.upload, src: URL.createObjectURL(file), label: file.name || "pasted image" };
    if (add) {
      if (!addReference(ref)) return;
    } else {
      setReference(ref);
    }
    await search();
  } catch (e) {
    const hint = e.status === 415 ? "; choose a photo (JPEG, PNG, WebP, ...)" : "";
    showMessage(`cannot use ${name}: ${e.message}${hint}`);
  }
}

// The forms of a date p2w.core.dates.parse_bound takes (the server checks that it exists: not 2023-02-30).
const DATE = /^\d{4}(-\d{2}(-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?)?)?$/;

// The search request of the form; an Error with a message for the user when a field cannot be sent.
function queryBody() {
  const body = { text: $("text").value.trim() || null, mode: $("mode").value || null, k: clampK() };
  const prompt = $("prompt").value.trim();
  const within = $("within").value.trim();
  if (prompt) body.prompt = prompt;
  if (within) body.within = within;
  for (const key of ["after", "before"]) {
    const value = $(key).value.trim();
    if (value && !DATE.test(value)) throw new Error(`${key} "${value}" is not a date: give 2023, 2023-07 or 2023-07-14`);
    if (value) body[key] = value;
  }
  const alpha = $("alpha").value.trim();
  if (alpha && WEIGHED.includes(resolvedMode(body))) body.alpha = checkedAlpha(alpha);
  const floor = $("min-score").value.trim();
  if (floor !== "" && Number.isFinite(Number(floor))) body.min_score = Number(floor);
  if ($("cutoff").checked) body.drop = (state.status && state.status.drop) || 30;
  const refs = state.refs.map((r) => (r.kind === "upload" ? { upload: r.id } : { photo: r.id }));
  if (refs.length === 1) Object.assign(body, refs[0]);
  if (refs.length > 1) body.images = refs;
  const template = body.prompt || (state.status && state.status.prompt) || "";
  const stars = (template.match(/\*/g) || []).length;
  // pic2word: one * an image (the server's rule, p2w.core.compose.plan), said here before a request is sent
  const mapped = MAPPED.includes(resolvedMode(body));
  if (refs.length && mapped && (refs.length > 1 || body.prompt) && stars !== refs.length) {
    throw new Error(refs.length > 1
      ? `${refs.length} reference images need a prompt with one * each (the i-th * takes the i-th image), ` +
        'e.g. "a * wearing the hat of *"; or choose the average mode'
      : `the prompt needs one * for the reference image, e.g. "a photo of * , {text}"`);
  }
  return body;
}

function clampK() {
  const k = Math.round(Number($("k").value) || 24);
  return Math.min(200, Math.max(1, k));
}

// The mode the server will use (p2w.core.compose.plan): explicit, else by what the query has. Without a mapper,
// "auto" with an image and words asks for slerp (p2w.mappers.choice.AUTO_FUSION), not a pic2word query that cannot run.
function resolvedMode(body) {
  if (body.mode) return body.mode;
  const image = Boolean(body.upload) || body.photo != null || Boolean(body.images);
  if (!image) return "text";
  if (!(body.text || body.prompt)) return "image";
  return hasMapper() ? "pic2word" : "slerp";
}

// The modes weighed by alpha (p2w.core.compose.WEIGHED), and those that need a mapper (MAPPED).
const WEIGHED = ["slerp", "weighted", "pic2word-slerp"];
const MAPPED = ["pic2word", "pic2word-slerp"];

function checkedAlpha(value) {
  const alpha = Number(value);
  if (!Number.isFinite(alpha) || alpha < 0 || alpha > 1) {
    throw new Error(`text weight "${value}" is not a number from 0 (the image alone) to 1 (the words alone)`);
  }
  return alpha;
}

// A column's title: the mode, and for a fusion the alpha it ran with (the server's default when none is given).
function modeLabel(mode, alpha) {
  if (!WEIGHED.includes(mode)) return mode;
  const defaults = (state.status && state.status.alphas) || {};
  return `${mode} a=${alpha ?? defaults[mode]}`;
}

// The text weight is asked for only while a fusion mode is chosen, as the mode or beside it.
function showAlpha() {
  const fused = [$("mode").value, $("compare").value].filter((m) => WEIGHED.includes(m));
  $("alpha-field").hidden = fused.length === 0;
  const defaults = (state.status && state.status.alphas) || {};
  if (fused.length) $("alpha").placeholder = String(defaults[fused[0]] ?? "");
}

// Search now, or right after the search in flight (the latest request wins). `quiet`: asked for by a change of
// mode, baseline or reference, so a query with nothing in it just clears the results instead of complaining.
async function search(event, quiet = false) {
  if (event) event.preventDefault();
  if (state.busy) {
    state.again = { quiet: quiet && (!state.again || state.again.quiet) };
    return;
  }
  let body;
  try {
    body = queryBody();
  } catch (e) {
    showMessage(e.message);
    return;
  }
  if (!body.text && !body.upload && body.photo == null && !body.images && !body.prompt) {
    render([]);
    showMessage(quiet ? "" : "give a reference image, some words, or both");
    return;
  }
  const mode = resolvedMode(body);
  if (!body.mode && mode === "slerp") body.mode = mode; // no mapper: slerp, not a pic2word refusal
  const results = $("results");
  const focusInResults = results.contains(document.activeElement);
  state.busy = true;
  results.setAttribute("aria-busy", "true");
  $("search").disabled = true;
  try {
    const columns = [];
    const main = await api("/api/search", { ...JSON_POST, body: JSON.stringify(body) });
    columns.push({ title: modeLabel(mode, body.alpha), results: main.results });
    const beside = $("compare").value;
    if (beside && beside !== mode) {
      if (mode !== "text" && (body.text || body.prompt)) {
        const other = { ...body, mode: beside };
        if (!WEIGHED.includes(beside)) delete other.alpha;
        else if ($("alpha").value.trim()) other.alpha = checkedAlpha($("alpha").value.trim());
        const answer = await api("/api/search", { ...JSON_POST, body: JSON.stringify(other) });
        columns.push({ title: `${modeLabel(beside, other.alpha)} (baseline)`, results: answer.results });
      } else {
        columns[0].note = `the ${beside} baseline needs a reference image and words`;
      }
    }
    showMessage("");
    render(columns);
    if (focusInResults) { // a result picked with the keyboard: keep the focus among the results
      const first = results.querySelector(".pick");
      if (first) first.focus();
    }
  } catch (e) {
    showMessage(e.message);
  } finally {
    state.busy = false;
    results.setAttribute("aria-busy", "false");
    $("search").disabled = false;
    if (state.again) {
      const again = state.again;
      state.again = null;
      search(null, again.quiet);
    }
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
    if (column.note) {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = column.note;
      section.append(note);
    }
    const grid = document.createElement("div");
    grid.className = "grid";
    if (!column.results.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = filtered() ? "no results pass the folder, dates or cutoff" : "no results";
      grid.append(p);
    }
    for (const hit of column.results) grid.append(card(hit));
    section.append(grid);
    root.append(section);
  }
}

// 83.4 -> "01:23"; an hour or more: "1:02:03" (p2w.cli.render.clock)
function clock(seconds) {
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
}

function filtered() {
  return $("cutoff").checked || ["within", "after", "before", "min-score"].some((id) => $(id).value.trim() !== "");
}

function card(hit) {
  // hit.local: the server shows its thumbnail and file; hit.refine: it may be the reference image (stored features
  // or a local file); a hit of a remote back end or a shard has neither: its caption and a link to its URL instead.
  const item = document.createElement("div");
  item.className = "hit";
  const pick = document.createElement("button");
  pick.type = "button";
  pick.className = "pick";
  pick.title = hit.refine ? "use as the reference image" : "this result cannot be a reference here";
  pick.setAttribute("aria-label", `use ${hit.path} as the reference image`);
  pick.disabled = !hit.refine;
  pick.dataset.photo = String(hit.id);
  if (hit.local) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `/api/thumb/${hit.id}`;
    img.alt = hit.path;
    img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 96));
    pick.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "nothumb";
    none.textContent = hit.caption || hit.path || "no image here";
    pick.append(none);
  }
  pick.addEventListener("click", () => {
    const src = hit.local ? `/api/thumb/${hit.id}` : "";
    setReference({ kind: "photo", id: hit.id, src, label: hit.path || hit.caption || `item ${hit.id}` });
    search();
  });
  const score = document.createElement("span");
  score.className = "score";
  score.title = "rank and cosine similarity";
  score.textContent = `${hit.rank}. ${hit.score.toFixed(3)}`;
  // The path: the file's name on its own line, its folder below (cut at the left when long); all of it on hover.
  const path = document.createElement("span");
  path.className = "path";
  path.title = hit.path;
  const cut = Math.max(hit.path.lastIndexOf("/"), hit.path.lastIndexOf("\\")) + 1;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = hit.path.slice(cut) + (hit.times && hit.times.length ? ` @ ${hit.times.map(clock).join(", ")}` : "");
  const folder = document.createElement("span");
  folder.className = "folder";
  const inner = document.createElement("bdi");
  inner.textContent = hit.path.slice(0, cut);
  folder.append(inner);
  path.append(folder, name);
  item.append(pick, score, path);
  if (hit.taken) { // when it was taken: the EXIF date, or the file's time where the photo has none
    const taken = document.createElement("span");
    taken.className = "taken";
    taken.title = hit.taken_from === "exif" ? "taken (EXIF)" : "the file's time (no EXIF date)";
    taken.textContent = hit.taken.slice(0, 16).replace("T", " ") + (hit.taken_from === "exif" ? "" : " (file)");
    item.append(taken);
  }
  if (hit.caption && hit.local) {
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = hit.caption;
    item.append(caption);
  }
  const target = hit.local ? `/api/photo/${hit.id}` : /^https?:\/\//i.test(hit.url || "") ? hit.url : null;
  if (target) {
    const open = document.createElement("a");
    // a video's frame: the video, played from that frame's time (a media fragment)
    open.href = hit.time != null ? `${target}#t=${hit.time}` : target;
    open.target = "_blank";
    open.rel = "noopener noreferrer";
    open.textContent = hit.time != null ? `play from ${clock(hit.time)}` : hit.local ? "open original" : "open link";
    item.append(open);
  }
  return item;
}

// The catalog's groups of near-identical photos (under the folder, when one is given), one section a group, the
// largest file first; each photo may be picked as the reference like a result.
async function showDuplicates() {
  const root = $("results");
  const within = $("within").value.trim();
  root.setAttribute("aria-busy", "true");
  try {
    const answer = await api("/api/duplicates", { ...JSON_POST, body: JSON.stringify(within ? { within } : {}) });
    showMessage("");
    root.replaceChildren();
    root.classList.remove("two");
    const title = document.createElement("h2");
    title.className = "label";
    const shown = answer.groups.length;
    title.textContent = !answer.count ? "No near-identical photos" + (within ? " under that folder" : "")
      : `Near-identical photos: ${answer.count} group${answer.count === 1 ? "" : "s"}` +
        (shown < answer.count ? ` (the ${shown} largest shown)` : "") + "; nothing is moved or deleted";
    root.append(title);
    answer.groups.forEach((group, i) => {
      const section = document.createElement("section");
      section.className = "column duplicates";
      const h2 = document.createElement("h2");
      h2.textContent = `Group ${i + 1} · ${group.photos.length} photos`;
      const grid = document.createElement("div");
      grid.className = "grid";
      group.photos.forEach((p, j) => {
        grid.append(card({ ...p, rank: j + 1, score: p.similarity, local: true, refine: true }));
      });
      section.append(h2, grid);
      root.append(section);
    });
  } catch (e) {
    showMessage(e.message);
  } finally {
    root.setAttribute("aria-busy", "false");
  }
}

// A result's thumbnail dragged onto the drop zone is that catalog photo (same origin, /api/thumb/ID).
function droppedPhoto(data) {
  const uri = (data.getData("text/uri-list") || "").split("\n").find((line) => line && !line.startsWith("#"));
  if (!uri) return null;
  try {
    const url = new URL(uri.trim(), location.href);
    const match = url.origin === location.origin && /^\/api\/(?:thumb|photo)\/(\d+)$/.exec(url.pathname);
    return match ? Number(match[1]) : null;
  } catch (e) {
    return null;
  }
}

function wire() {
  const drop = $("drop");
  $("query").addEventListener("submit", (e) => search(e));
  $("file").addEventListener("change", (e) => { if (e.target.files.length) uploadFile(e.target.files[0]); });
  $("add-file").addEventListener("change", (e) => { if (e.target.files.length) uploadFile(e.target.files[0], true); });
  $("show-duplicates").addEventListener("click", () => showDuplicates());
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", (e) => { if (!drop.contains(e.relatedTarget)) drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      uploadFile(e.dataTransfer.files[0]);
      return;
    }
    const photo = droppedPhoto(e.dataTransfer);
    if (photo == null) {
      uploadFile(null);
      return;
    }
    const hit = document.querySelector(`#results .pick[data-photo="${photo}"]`);
    const label = hit ? hit.closest(".hit").querySelector(".path").textContent : `photo ${photo}`;
    showMessage("");
    setReference({ kind: "photo", id: photo, src: `/api/thumb/${photo}`, label });
    search();
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    const file = files.find((f) => f.type.startsWith("image/"));
    if (file) {
      e.preventDefault();
      uploadFile(file);
    }
  });
  $("clear-ref").addEventListener("click", () => {
    setReference(null);
    search(null, true);
    $("drop").focus();
  });
  for (const id of ["mode", "compare"]) {
    $(id).addEventListener("change", () => {
      showAlpha();
      search(null, true);
    });
  }
  $("alpha").addEventListener("change", () => search(null, true));
  $("cutoff").addEventListener("change", () => search(null, true));
}

wire();
loadStatus();

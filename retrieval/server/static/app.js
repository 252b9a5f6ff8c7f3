// The search page: plain JavaScript against the JSON API, no build step.
// The whole query lives in the URL (except an uploaded image, which never leaves memory
// but for the upload itself), so a search can be shared and reloaded. Every piece of text
// that comes from the server or the user goes into the DOM through textContent, never HTML.

const PAGE = 36;
const FILTERS = ["after", "before", "folder", "camera"];
const $ = (id) => document.getElementById(id);

const el = {
  form: $("search"), q: $("q"), file: $("file"), indexPicker: $("index-picker"), index: $("index"),
  not: $("not"), weight: $("weight"), weightOut: $("weight-out"), weightField: $("weight-field"),
  filters: $("filters"), status: $("status"), weak: $("weak"), message: $("message"), grid: $("results"),
  captions: $("captions"), texts: $("texts"), subject: $("subject"), subjectImg: $("subject-img"),
  subjectName: $("subject-name"), more: $("more"), drop: $("drop"), login: $("login"),
  loginForm: $("login-form"), token: $("token"), loginError: $("login-error"),
  example: $("example"), exampleImg: $("example-img"), exampleLabel: $("example-label"),
  exampleClear: $("example-clear"), viewer: $("viewer"), viewerImg: $("viewer-img"),
  viewerName: $("viewer-name"), viewerPath: $("viewer-path"), viewerSize: $("viewer-size"),
  viewerScore: $("viewer-score"), viewerRank: $("viewer-rank"), viewerLike: $("viewer-like"),
  viewerCaptions: $("viewer-captions"), viewerOpen: $("viewer-open"), viewerClose: $("viewer-close"),
  viewerPrev: $("viewer-prev"), viewerNext: $("viewer-next"), viewerDownload: $("viewer-download"),
  viewerVideo: $("viewer-video"), viewerTime: $("viewer-time"),
  viewerCompanions: $("viewer-companions"), viewerMotion: $("viewer-motion"), viewerMotionLink: $("viewer-motion-link"),
  people: $("people"), viewerPeople: $("viewer-people"),
};

// What is being searched; mirrored in the URL.
const state = { index: "", q: "", like: [], not: [], target: "images", sort: "score", weight: 0.5, k: PAGE, filters: {}, people: [] };
// The orders the page offers, as the API names them; captions have no dates.
const SORTS = ["score", "date", "date-asc"];
// An uploaded example image: { file, url } (url is a blob: URL for the chip).
let upload = null;
let indexes = [];
// The running result list: one per search, replaced as a whole when the query changes.
// `live`: this run asks the server for pages. Until search() decides to ask (no query, an empty
// index, an index without captions: a message instead), scrolling and the viewer load nothing.
const newRun = (seq) => ({ seq, items: [], ids: new Set(), next: null, loading: false, error: null, live: false });
let run = newRun(0);
let viewerAt = -1;
let viewerSeq = 0; // the search whose result the viewer shows
const knownPaths = new Map(); // "index/id" -> path, to label the example image
const pathKey = (id) => `${state.index}/${id}`;
let supported = []; // the filters this server's search accepts

class AuthNeeded extends Error {}

// ---------- URL <-> state ----------

function readURL() {
  const p = new URLSearchParams(location.search);
  state.index = p.get("index") || "";
  state.q = p.get("q") || "";
  state.like = p.getAll("like").flatMap(splitList).filter((v) => /^\d+$/.test(v));
  state.not = p.getAll("not").flatMap(splitList);
  state.people = p.getAll("person").map((v) => v.trim()).filter(Boolean); // names or ids, all in the photo
  state.target = p.get("target") === "texts" ? "texts" : "images";
  state.sort = SORTS.includes(p.get("sort")) ? p.get("sort") : "score";
  const w = parseFloat(p.get("weight"));
  state.weight = Number.isFinite(w) && w >= 0 && w <= 1 ? w : 0.5;
  const k = parseInt(p.get("k"), 10);
  state.k = k >= 1 && k <= 200 ? k : PAGE;
  state.filters = {};
  for (const name of FILTERS) {
    const v = (p.get(name) || "").trim();
    if (v) state.filters[name] = v;
  }
}

// The typed fields into the state: the words, "not", and the filters the server accepts.
function readFields() {
  state.q = el.q.value.trim();
  state.not = splitList(el.not.value);
  state.filters = {};
  for (const name of supported) {
    const v = $("f-" + name).value.trim();
    if (v) state.filters[name] = v;
  }
}

function splitList(value) {
  return value.split(",").map((s) => s.trim()).filter(Boolean);
}

function stateParams({ forApi }) {
  const p = new URLSearchParams();
  if (state.index && (forApi || indexes.length > 1)) p.set("index", state.index);
  if (state.q) p.set("q", state.q);
  for (const id of state.like) p.append("like", id);
  for (const n of state.not) p.append("not", n);
  if (state.target !== "images") p.set("target", state.target);
  if (state.sort !== "score" && state.target === "images") p.set("sort", state.sort);
  const fused = state.q && (state.like.length || upload);
  if (fused && (forApi || state.weight !== 0.5)) p.set("weight", String(state.weight));
  if (state.k !== PAGE || forApi) p.set("k", String(state.k));
  for (const [name, v] of Object.entries(state.filters)) p.set(name, v);
  for (const person of state.people) p.append("person", person);
  return p;
}

function writeURL(push) {
  const qs = stateParams({ forApi: false }).toString();
  const url = location.pathname + (qs ? "?" + qs : "");
  if (url === location.pathname + location.search) return;
  history[push ? "pushState" : "replaceState"](null, "", url);
}

// Put the state into the controls (after a load or a back/forward step).
function syncControls() {
  el.q.value = state.q;
  el.not.value = state.not.join(", ");
  el.weight.value = String(state.weight);
  for (const radio of document.querySelectorAll('input[name="target"]')) radio.checked = radio.value === state.target;
  for (const radio of document.querySelectorAll('input[name="sort"]')) radio.checked = radio.value === state.sort;
  for (const name of FILTERS) $("f-" + name).value = state.filters[name] || "";
  if (Object.keys(state.filters).length) el.filters.open = true;
  if (state.index && [...el.index.options].some((o) => o.value === state.index)) el.index.value = state.index;
  updateControls();
}

function updateControls() {
  const fused = Boolean(state.q && (state.like.length || upload));
  el.weightField.classList.toggle("inactive", !fused);
  el.weight.disabled = !fused;
  for (const radio of document.querySelectorAll('input[name="sort"]')) radio.disabled = state.target !== "images";
  el.weightOut.textContent = `${Math.round(state.weight * 100)}%`;
  el.filters.classList.toggle("active", Object.keys(state.filters).length > 0);
  renderExample();
}

// ---------- the API ----------

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch {
    throw new Error("the server did not answer; is `retrieval serve` still running?");
  }
  if (response.status === 401) throw new AuthNeeded();
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const text = body && typeof body.error === "string" ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(text);
  }
  return body;
}

function searchRequest(offset) {
  const params = stateParams({ forApi: true });
  params.set("offset", String(offset));
  if (!upload) return api("api/search?" + params.toString());
  const form = new FormData();
  form.append("file", upload.file, upload.file.name || "image");
  for (const [key, value] of params) form.append(key, value);
  return api("api/search/upload", { method: "POST", body: form });
}

// What to write after --index in a suggested command: the name, or PATH for an index the
// server was given by path (its name is only its folder's, and would name another index).
function indexArgument(index) {
  return index && index.by_path ? "PATH" : index ? index.name : "NAME";
}

function currentIndex() {
  return indexes.find((i) => i.name === state.index) || indexes[0] || null;
}

async function loadIndexes() {
  const body = await api("api/indexes");
  indexes = body.indexes || [];
  el.index.replaceChildren(
    ...indexes.map((i) => {
      const option = document.createElement("option");
      option.value = i.name;
      option.textContent = `${i.name} · ${formatHoldings(i)}`;
      return option;
    }),
  );
  el.indexPicker.hidden = indexes.length < 2;
  if (!indexes.some((i) => i.name === state.index)) state.index = indexes.length ? indexes[0].name : "";
  el.index.value = state.index;
}

// ---------- searching ----------

function hasQuery() {
  return Boolean(state.q || state.like.length || upload || state.people.length);
}

async function search({ push = false } = {}) {
  writeURL(push);
  updateControls();
  markPeople();
  closeViewer();
  run = newRun(run.seq + 1);
  el.weak.hidden = true;
  setBusy(false);
  el.grid.replaceChildren();
  el.captions.replaceChildren();
  el.grid.hidden = state.target !== "images";
  el.texts.hidden = state.target !== "texts";
  showMessage(null);

  const index = currentIndex();
  if (!index) return showMessage("info", "No index is served", "Start the server with: retrieval serve --index NAME");
  if (!index.images && !index.captions) {
    setStatus([]);
    return showMessage(
      "info", `The index “${index.name}” is empty`,
      `Add photos to it with: retrieval index FOLDER --index ${indexArgument(index)}`,
    );
  }
  if (state.target === "texts" && !index.captions) {
    setStatus([]);
    return showMessage(
      "info", `The index “${index.name}” has no captions`,
      `Add a caption corpus with: retrieval index --captions FILE --index ${indexArgument(index)}`,
    );
  }
  if (!hasQuery()) {
    setStatus([]);
    if (state.target === "texts") {
      return showMessage(
        "info", "Find captions for a photo",
        "Open a result and choose “Captions for this photo”, drop an image here, or type words.",
      );
    }
    return showMessage(
      "info", `Search ${formatHoldings(index)} in “${index.name}”`,
      "Describe what you are looking for, or drop a photo anywhere on the page to find similar ones.",
    );
  }
  run.live = true;
  await loadMore();
}

async function loadMore() {
  const seq = run.seq;
  if (!run.live || run.loading || run.error || (run.items.length && run.next === null)) return;
  run.loading = true;
  setBusy(true);
  setStatus(["Searching…"]);
  try {
    const body = await searchRequest(run.next ?? 0);
    if (seq !== run.seq) return; // a newer search replaced this one
    const fresh = (body.results || []).filter((r) => !run.ids.has(r.id));
    for (const r of fresh) {
      run.ids.add(r.id);
      if (r.path) knownPaths.set(pathKey(r.id), r.path);
    }
    const start = run.items.length;
    run.items.push(...fresh);
    // A cursor that does not move forward would ask for the same page forever.
    const requested = run.next ?? 0;
    run.next = Number.isInteger(body.next_offset) && body.next_offset > requested ? body.next_offset : null;
    if (state.target === "images") appendCards(fresh, start);
    else appendCaptions(fresh, start);
    describeResults();
  } catch (error) {
    if (seq !== run.seq) return;
    run.error = error;
    if (error instanceof AuthNeeded) return showLogin();
    setStatus([]);
    showMessage("error", "The search failed", error.message);
  } finally {
    if (seq === run.seq) {
      run.loading = false;
      setBusy(false);
    }
  }
  // A short first page can leave the sentinel on screen: the observer will not fire again.
  if (seq === run.seq && run.next !== null && nearBottom()) loadMore();
}

// aria-busy tells assistive technology (and the browser test) that results are still arriving.
function setBusy(busy) {
  el.more.classList.toggle("loading", busy);
  for (const list of [el.grid, el.captions]) list.setAttribute("aria-busy", String(busy));
}

function nearBottom() {
  return el.more.getBoundingClientRect().top < window.innerHeight + 600;
}

function describeResults() {
  const n = run.items.length;
  if (!n) {
    setStatus([]);
    const filtered = Object.keys(state.filters).length > 0 || state.people.length > 0;
    const dated = state.sort !== "score" && state.target === "images";
    return showMessage(
      "info", "Nothing matched",
      filtered ? "Try removing some filters."
        : dated ? "No match is close enough to sort by date: try Best match."
        : "Try other words, or another example image.",
    );
  }
  const videos = state.target === "texts" ? 0 : run.items.filter(isVideo).length;
  const count = state.target === "texts" ? formatCount(n, "caption") : formatMedia(n - videos, videos);
  const parts = [strong(count + (run.next !== null ? "+" : ""))];
  if (state.q) parts.push(" for ", strong(`“${state.q}”`));
  if (state.like.length || upload) {
    parts.push(state.q ? " and the example image" : state.target === "texts" ? " for the example image" : " like the example image");
  }
  if (state.not.length) parts.push(", not ", strong(state.not.join(", ")));
  if (state.people.length && state.target === "images") parts.push(" with ", strong(state.people.join(" and ")));
  if (state.sort !== "score" && state.target === "images") parts.push(state.sort === "date" ? ", newest first" : ", oldest first");
  const index = currentIndex();
  if (index && indexes.length > 1) parts.push(` in ${index.name}`);
  setStatus(parts);
  el.weak.hidden = !noCloseMatch(index);
  if (!el.weak.hidden) {
    el.weak.title = `The best score, ${run.items[0].score.toFixed(2)}, is under ${index.weak_below}: `
      + "for this model, words rarely fit a photo that scores less.";
  }
}

// The server measures, per model, the best score under which words have no close match
// (weak_below, null where unmeasured). It holds for words alone against photos: an example
// image, "not" words or the captions put scores on other scales.
function noCloseMatch(index) {
  const cutoff = index?.weak_below;
  if (typeof cutoff !== "number" || state.target !== "images") return false;
  if (!state.q || state.like.length || upload || state.not.length) return false;
  if (state.sort !== "score") return false; // sorted by date, weak matches were cut and the first is not the best
  return run.items.length > 0 && run.items[0].score < cutoff;
}

function strong(text) {
  const b = document.createElement("strong");
  b.textContent = text;
  return b;
}

function setStatus(parts) {
  el.status.replaceChildren(...parts);
}

function showMessage(kind, title, detail) {
  if (!kind) {
    el.message.hidden = true;
    el.message.replaceChildren();
    return;
  }
  const h = document.createElement("h2");
  h.textContent = title;
  const p = document.createElement("p");
  p.textContent = detail;
  el.message.replaceChildren(h, p);
  el.message.className = "message " + kind;
  el.message.setAttribute("role", kind === "error" ? "alert" : "status");
  el.message.hidden = false;
}

// ---------- rendering ----------

function thumbURL(r, size) {
  const url = new URL(r.thumb || `api/thumb/${r.id}`, location.href);
  url.searchParams.set("size", String(size));
  if (!url.searchParams.has("index") && state.index) url.searchParams.set("index", state.index);
  return url.pathname + url.search;
}

function imageURL(r) {
  if (r.url) return r.url;
  return `api/image/${r.id}?index=${encodeURIComponent(state.index)}`;
}

function baseName(path) {
  return (path || "").split(/[\\/]/).pop() || "";
}

function appendCards(results, start) {
  const cards = results.map((r, i) => {
    const a = document.createElement("a");
    a.className = "card";
    a.href = imageURL(r);
    a.dataset.pos = String(start + i);
    a.dataset.id = String(r.id);
    a.style.animationDelay = `${Math.min(i, 12) * 18}ms`;
    // Very wide or tall photos are cropped a little so one of them cannot take a whole row.
    const ratio = r.width > 0 && r.height > 0 ? r.width / r.height : 1;
    a.style.setProperty("--ar", Math.min(2.4, Math.max(0.6, ratio)).toFixed(3));
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = `${baseName(r.path) || "photo " + r.id}, score ${r.score.toFixed(3)}`;
    img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
    img.srcset = `${thumbURL(r, 256)} 1x, ${thumbURL(r, 512)} 2x`;
    img.src = thumbURL(r, 256);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(2);
    score.setAttribute("aria-hidden", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = r.path || "";
    name.setAttribute("aria-hidden", "true");
    a.append(img, score, name);
    if (isVideo(r)) {
      // A video's card shows the frame of its best moment (the thumb URL names the time) and when it is.
      const moment = document.createElement("span");
      moment.className = "moment";
      moment.textContent = `▶ ${formatTime(r.time)}`;
      moment.setAttribute("aria-hidden", "true");
      a.append(moment);
      a.classList.add("video");
      a.href = `${imageURL(r)}#t=${r.time}`; // opened in a tab of its own, it plays from there too
      img.alt = `${baseName(r.path) || "video " + r.id} at ${formatTime(r.time)}, score ${r.score.toFixed(3)}`;
    }
    const badge = pairBadge(r);
    if (badge) {
      const mark = document.createElement("span");
      mark.className = "badge";
      mark.textContent = badge;
      a.append(mark);
      img.alt += ` (${badge})`;
    }
    return a;
  });
  el.grid.append(...cards);
}

function appendCaptions(results, start) {
  const top = Math.max(run.items[0]?.score ?? 1, 1e-6);
  const rows = results.map((r, i) => {
    const li = document.createElement("li");
    li.className = "caption";
    li.dataset.pos = String(start + i);
    li.dataset.id = String(r.id);
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${r.rank}`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = r.text || "";
    const meter = document.createElement("span");
    meter.className = "meter";
    meter.title = `score ${r.score.toFixed(4)}`;
    const track = document.createElement("i");
    const bar = document.createElement("b");
    bar.style.width = `${Math.max(0, Math.min(1, r.score / top)) * 100}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.textContent = r.score.toFixed(3);
    meter.append(track, value);
    li.append(rank, text, meter);
    return li;
  });
  el.captions.append(...rows);
}

// The example image: a chip above the results, and a larger figure beside the captions.
function renderExample() {
  const has = Boolean(upload || state.like.length);
  let src = "";
  let name = "";
  if (upload) {
    src = upload.url;
    name = upload.file.name || "your image";
    el.exampleLabel.textContent = upload.file.name ? `Example: ${upload.file.name}` : "Example image";
  } else if (has) {
    const id = Number(state.like[0]);
    const path = knownPaths.get(pathKey(id));
    if (!path) learnPath(id);
    src = thumbURL({ id }, 128);
    name = path || `photo #${id}`;
    const more = state.like.length > 1 ? ` and ${state.like.length - 1} more` : "";
    el.exampleLabel.textContent = `Like ${path ? baseName(path) : "photo #" + id}${more}`;
  }
  if (has) setImage(el.exampleImg, src);
  el.example.hidden = !has;
  const subject = has && state.target === "texts";
  if (subject) {
    setImage(el.subjectImg, upload ? upload.url : thumbURL({ id: Number(state.like[0]) }, 512));
    el.subjectImg.alt = `The image the captions are ranked for: ${name}`;
    el.subjectName.textContent = name;
  }
  el.subject.hidden = !subject;
}

// A liked image named only by id (a shared link): ask for its path once, to label it.
const asked = new Set();
async function learnPath(id) {
  const key = pathKey(id);
  if (asked.has(key)) return;
  asked.add(key);
  try {
    const meta = await api(`api/image/${id}/meta?index=${encodeURIComponent(state.index)}`);
    knownPaths.set(key, meta.path);
    if (state.like.includes(String(id))) renderExample();
  } catch {
    // An unknown id: the search itself reports it.
  }
}

function setImage(img, src) {
  if (img.getAttribute("src") === src) return;
  img.classList.remove("broken");
  img.onerror = () => img.classList.add("broken");
  img.src = src;
}

function formatCount(n, noun) {
  const value = Number(n || 0);
  return `${value.toLocaleString()} ${noun}${value === 1 ? "" : "s"}`;
}

// What an index holds, as its heading says it: "12 photos and 3 videos" (images counts both).
function formatHoldings(index) {
  const videos = Number(index.videos || 0);
  return formatMedia(Math.max(0, Number(index.images || 0) - videos), videos);
}

// Photos and videos counted apart: "12 photos", "3 videos", "12 photos and 3 videos".
function formatMedia(photos, videos) {
  if (!videos) return formatCount(photos, "photo");
  if (!photos) return formatCount(videos, "video");
  return `${formatCount(photos, "photo")} and ${formatCount(videos, "video")}`;
}

function isVideo(r) {
  return r.media === "video" && Number.isFinite(r.time);
}

// Seconds as a player shows them: 75.4 -> "1:15", 3725 -> "1:02:05".
function formatTime(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const two = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  return h ? `${h}:${two(Math.floor((s % 3600) / 60))}:${two(s % 60)}` : `${Math.floor(s / 60)}:${two(s % 60)}`;
}

// A video plays from its moment: "#t=" asks the browser to start there, and once the metadata is in the
// time is set again where the browser ignored it. Seeking works because the server answers Range requests.
let videoReady = null; // the shown video's loadedmetadata handler, dropped when another is shown

function showVideo(r) {
  const video = el.viewerVideo;
  video.poster = thumbURL(r, 512);
  videoReady = () => {
    videoReady = null;
    if (Math.abs(video.currentTime - r.time) > 0.25) video.currentTime = r.time;
    video.play().catch(() => {}); // a browser that refuses to start it shows the controls at the moment
  };
  video.addEventListener("loadedmetadata", videoReady, { once: true });
  video.src = `${imageURL(r)}#t=${r.time}`;
}

function stopVideo() {
  const video = el.viewerVideo;
  if (videoReady) video.removeEventListener("loadedmetadata", videoReady);
  videoReady = null;
  if (!video.getAttribute("src")) return;
  video.pause();
  video.removeAttribute("src");
  video.removeAttribute("poster");
  video.load(); // drops the connection that is still fetching it
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return i ? `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}` : `${n} bytes`;
}

// ---------- the viewer ----------

async function openViewer(pos) {
  const r = run.items[pos];
  if (!r || state.target !== "images") return;
  viewerAt = pos;
  viewerSeq = run.seq;
  const video = isVideo(r);
  stopVideo();
  el.viewerImg.hidden = video;
  el.viewerVideo.hidden = !video;
  for (const part of document.querySelectorAll(".viewer-moment")) part.hidden = !video;
  el.viewerTime.textContent = video ? formatTime(r.time) : "";
  if (video) {
    el.viewerImg.removeAttribute("src");
    showVideo(r);
  } else {
    el.viewerImg.src = imageURL(r);
  }
  el.viewerImg.alt = baseName(r.path) || `photo ${r.id}`;
  el.viewerName.textContent = baseName(r.path) || `Photo ${r.id}`;
  el.viewerPath.textContent = r.path || "";
  el.viewerScore.textContent = r.score.toFixed(4);
  el.viewerRank.textContent = `${r.rank}`;
  el.viewerSize.textContent = r.width && r.height ? `${r.width} × ${r.height}` : "";
  showPair(r);
  el.viewerOpen.href = video ? `${imageURL(r)}#t=${r.time}` : imageURL(r);
  // "Open original" shows a JPEG where browsers cannot draw the file (TIFF); this link is the file itself.
  el.viewerDownload.href = `${imageURL(r)}${imageURL(r).includes("?") ? "&" : "?"}download=1`;
  const captions = currentIndex()?.captions > 0;
  el.viewerCaptions.disabled = !captions;
  el.viewerCaptions.title = captions ? "" : `This index has no captions (retrieval index --captions FILE --index ${indexArgument(currentIndex())})`;
  el.viewerPrev.disabled = pos === 0;
  el.viewerNext.disabled = pos >= run.items.length - 1 && run.next === null;
  if (!el.viewer.open) el.viewer.showModal();
  el.viewerLike.focus();
  showFaces([]);
  try {
    const meta = await api(`api/image/${r.id}/meta?index=${encodeURIComponent(state.index)}`);
    if (viewerAt !== pos) return;
    showFaces(meta.people || []);
    const dims = meta.width && meta.height ? `${meta.width} × ${meta.height}` : el.viewerSize.textContent;
    el.viewerSize.textContent = [dims, formatBytes(meta.size)].filter(Boolean).join(" · ");
  } catch {
    // The dimensions from the result are enough; the byte size is a bonus.
  }
}

// A photo with other files of its shot: a RAW beside its JPEG ("companions"), a Live Photo's .mov ("motion").
function pairBadge(r) {
  if (r.motion) return "LIVE";
  if (!Array.isArray(r.companions) || !r.companions.length) return "";
  // A RAW's extension varies by maker (CR2, NEF, DNG...): the badge names the kind, the viewer the files.
  const still = (baseName(r.path).split(".").pop() || "").toUpperCase();
  return `RAW+${still === "JPG" || still === "JPE" || !still ? "JPEG" : still}`;
}

function motionURL(r) {
  return `api/image/${r.id}/motion?index=${encodeURIComponent(state.index)}`;
}

// The viewer's "Also" (companion file names) and "Live" (the motion file, muted, looping) rows.
function showPair(r) {
  const names = Array.isArray(r.companions) ? r.companions.map(baseName) : [];
  el.viewerCompanions.replaceChildren(...names.map((name) => {
    const li = document.createElement("li");
    li.textContent = name;
    return li;
  }));
  for (const part of document.querySelectorAll(".viewer-pair")) part.hidden = !names.length;
  for (const part of document.querySelectorAll(".viewer-live")) part.hidden = !r.motion;
  const motion = el.viewerMotion;
  if (r.motion) {
    el.viewerMotionLink.href = motionURL(r);
    el.viewerMotionLink.textContent = baseName(r.motion);
    motion.src = motionURL(r);
    motion.play().catch(() => {}); // autoplay refused: the link still opens the file
  } else if (motion.getAttribute("src")) {
    motion.pause();
    motion.removeAttribute("src");
    motion.load(); // drops the connection that is still fetching it
  }
}

function closeViewer() {
  if (el.viewer.open) el.viewer.close();
}

async function stepViewer(delta) {
  const target = viewerAt + delta;
  if (target < 0) return;
  if (target >= run.items.length) {
    if (run.next === null) return;
    await loadMore();
  }
  if (target < run.items.length) {
    openViewer(target);
    el.grid.querySelector(`[data-pos="${target}"]`)?.scrollIntoView({ block: "nearest" });
  }
}

function searchLike(target) {
  const r = run.items[viewerAt];
  if (!r) return;
  dropUpload();
  state.like = [String(r.id)];
  state.q = "";
  state.target = target;
  syncControls();
  search({ push: true });
}

// ---------- example images ----------

function setUpload(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showMessage("error", "That file is not an image", `${file.name} is ${file.type}; drop a JPEG, PNG or WebP photo.`);
    return;
  }
  dropUpload();
  upload = { file, url: URL.createObjectURL(file) };
  state.like = [];
  search({ push: true });
}

function dropUpload() {
  if (upload) URL.revokeObjectURL(upload.url);
  upload = null;
  el.file.value = "";
}

// ---------- login ----------

function showLogin() {
  setStatus([]);
  showMessage(null);
  el.grid.replaceChildren();
  el.captions.replaceChildren();
  el.login.hidden = false;
  el.token.focus();
}

async function login(event) {
  event.preventDefault();
  el.loginError.textContent = "";
  try {
    await api("api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: el.token.value }),
    });
  } catch (error) {
    el.loginError.textContent = error instanceof AuthNeeded ? "That token is not right." : error.message;
    return;
  }
  el.token.value = "";
  el.login.hidden = true;
  start();
}

// ---------- events ----------

function wire() {
  // Enter in the box, in "not" or in a filter searches with all of them, as typed.
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    readFields();
    search({ push: true });
  });
  el.file.addEventListener("change", () => setUpload(el.file.files[0]));
  el.index.addEventListener("change", () => {
    state.index = el.index.value;
    state.like = []; // ids belong to one index
    state.people = []; // and so do people
    search({ push: true });
    loadPeople();
  });
  for (const radio of document.querySelectorAll('input[name="target"]')) {
    radio.addEventListener("change", () => {
      state.target = radio.value;
      search({ push: true });
    });
  }
  for (const radio of document.querySelectorAll('input[name="sort"]')) {
    radio.addEventListener("change", () => {
      state.sort = radio.value;
      search({ push: true });
    });
  }
  for (const field of [el.not, ...FILTERS.map((name) => $("f-" + name))]) {
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        el.form.requestSubmit();
      }
    });
  }
  el.weight.addEventListener("input", () => {
    el.weightOut.textContent = `${Math.round(Number(el.weight.value) * 100)}%`;
  });
  el.weight.addEventListener("change", () => {
    state.weight = Number(el.weight.value);
    search({ push: false });
  });
  for (const name of FILTERS) {
    $("f-" + name).addEventListener("change", () => {
      const before = JSON.stringify(state.filters);
      readFields();
      if (JSON.stringify(state.filters) === before) return; // Enter already searched with it
      if (hasQuery()) search({ push: true });
      else updateControls();
    });
  }
  $("filters-clear").addEventListener("click", () => {
    for (const name of FILTERS) $("f-" + name).value = "";
    readFields();
    if (hasQuery()) search({ push: true });
    else updateControls();
  });
  el.exampleClear.addEventListener("click", () => {
    dropUpload();
    state.like = [];
    search({ push: true });
    el.q.focus();
  });

  el.grid.addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (!card || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openViewer(Number(card.dataset.pos));
  });
  el.grid.addEventListener("keydown", gridKeys);

  el.viewerClose.addEventListener("click", closeViewer);
  el.viewerPrev.addEventListener("click", () => stepViewer(-1));
  el.viewerNext.addEventListener("click", () => stepViewer(1));
  el.viewerLike.addEventListener("click", () => searchLike("images"));
  el.viewerCaptions.addEventListener("click", () => searchLike("texts"));
  el.viewer.addEventListener("click", (event) => {
    if (event.target === el.viewer) closeViewer(); // a click on the backdrop
  });
  el.viewer.addEventListener("close", () => {
    el.viewerImg.removeAttribute("src");
    stopVideo();
    showPair({}); // stops a Live Photo's motion
    // After the dialog's own focus restoration (to the card that opened it): focus the card
    // last shown, which arrow keys may have changed.
    // After "more like this" the grid holds other results: focus the grid itself instead.
    const pos = viewerAt;
    const same = viewerSeq === run.seq;
    setTimeout(() => (same ? el.grid.querySelector(`[data-pos="${pos}"]`) : el.grid)?.focus(), 0);
  });
  el.viewer.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") stepViewer(-1);
    else if (event.key === "ArrowRight") stepViewer(1);
  });

  el.loginForm.addEventListener("submit", login);

  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
    if (event.key === "/" && !typing && !el.viewer.open && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      el.q.focus();
      el.q.select();
    }
  });

  // Dropping a file anywhere searches by it. The counter survives dragenter/leave of children.
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    el.drop.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) el.drop.hidden = true;
  });
  window.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    el.drop.hidden = true;
    setUpload(event.dataTransfer.files[0]);
  });

  window.addEventListener("popstate", () => {
    readURL();
    dropUpload();
    syncControls();
    search({ push: false });
  });

  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && hasQuery()) loadMore();
  }, { rootMargin: "600px 0px" }).observe(el.more);
}

// Arrow keys move between cards; up and down go to the nearest card of the row above or
// below (rows hold different numbers of photos). Enter opens (the cards are links).
function gridKeys(event) {
  const card = event.target.closest(".card");
  if (!card) {
    // The grid itself has focus (after "more like this"): any arrow enters it at the first photo.
    if (event.target === el.grid && event.key.startsWith("Arrow")) {
      event.preventDefault();
      el.grid.querySelector(".card")?.focus();
    }
    return;
  }
  const cards = [...el.grid.querySelectorAll(".card")];
  const pos = cards.indexOf(card);
  let next;
  if (event.key === "ArrowRight") next = cards[pos + 1];
  else if (event.key === "ArrowLeft") next = cards[pos - 1];
  else if (event.key === "Home") next = cards[0];
  else if (event.key === "End") next = cards[cards.length - 1];
  else if (event.key === "ArrowDown" || event.key === "ArrowUp") next = verticalNeighbour(cards, card, event.key === "ArrowDown");
  else return;
  event.preventDefault();
  if (!next) return;
  next.focus();
  next.scrollIntoView({ block: "nearest" });
  if (cards.indexOf(next) >= cards.length - 12 && run.next !== null) loadMore();
}

function verticalNeighbour(cards, card, down) {
  const here = card.getBoundingClientRect();
  const centre = here.left + here.width / 2;
  const rows = cards
    .map((c) => ({ c, box: c.getBoundingClientRect() }))
    .filter(({ box }) => (down ? box.top > here.bottom - 2 : box.bottom < here.top + 2));
  if (!rows.length) return null;
  const rowTop = down ? Math.min(...rows.map((r) => r.box.top)) : Math.max(...rows.map((r) => r.box.top));
  const row = rows.filter((r) => Math.abs(r.box.top - rowTop) < 2);
  const distance = (r) => Math.abs(r.box.left + r.box.width / 2 - centre);
  return row.reduce((best, r) => (distance(r) < distance(best) ? r : best)).c;
}

// Filters (after, before, folder, camera) appear only when the server's search accepts them,
// so an older server never gets a field it would refuse.
async function loadFilters() {
  let names = [];
  try {
    const schema = await api("openapi.json");
    names = (schema.paths?.["/api/search"]?.get?.parameters || []).map((p) => p.name);
  } catch (error) {
    if (error instanceof AuthNeeded) throw error;
  }
  supported = FILTERS.filter((name) => names.includes(name));
  for (const name of FILTERS) $("f-" + name).closest("label").hidden = !supported.includes(name);
  el.filters.hidden = supported.length === 0;
  for (const name of Object.keys(state.filters)) if (!supported.includes(name)) delete state.filters[name];
}

// ---------- people ----------

// A face as a button: its picture (by face id only) and the person's name.
function faceButton(face, name, pressed) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "person";
  const img = document.createElement("img");
  img.alt = "";
  img.loading = "lazy";
  if (face) img.src = `${face}${face.includes("?") ? "&" : "?"}size=128`;
  const label = document.createElement("span");
  label.textContent = name;
  button.append(img, label);
  if (pressed !== null) button.setAttribute("aria-pressed", String(pressed));
  return button;
}

// The strip of named people (GET /api/people); a click shows that person's photos, or stops
// filtering by them. A server without people (an older one, an index without faces) shows none.
async function loadPeople() {
  let people = [];
  try {
    const body = await api(`api/people?index=${encodeURIComponent(state.index)}`);
    people = body.people || [];
  } catch (error) {
    if (error instanceof AuthNeeded) throw error;
  }
  el.people.replaceChildren(
    ...people.map((p) => {
      const button = faceButton(p.thumb, p.name, false);
      button.dataset.name = p.name;
      button.title = `${p.name}: ${formatCount(p.count, "photo")}`;
      button.addEventListener("click", () => togglePerson(p.name));
      return button;
    }),
  );
  el.people.hidden = people.length === 0;
  markPeople();
}

function samePerson(a, b) {
  return a.toLowerCase() === b.toLowerCase();
}

function togglePerson(name) {
  const on = state.people.some((p) => samePerson(p, name));
  state.people = on ? state.people.filter((p) => !samePerson(p, name)) : [...state.people, name];
  search({ push: true });
}

function markPeople() {
  for (const button of el.people.querySelectorAll(".person")) {
    button.setAttribute("aria-pressed", String(state.people.some((p) => samePerson(p, button.dataset.name))));
  }
}

// Who is in the photo the viewer shows; a named face filters the search by that person.
function showFaces(faces) {
  el.viewerPeople.replaceChildren(
    ...faces.map((face) => {
      const button = faceButton(face.thumb, face.name || "Not named", null);
      button.disabled = !face.name;
      button.title = face.name ? `Show the photos of ${face.name}` : "Name this person with: retrieval people name ID NAME";
      if (face.name) {
        button.addEventListener("click", () => {
          closeViewer();
          state.people = [face.name];
          search({ push: true });
        });
      }
      return button;
    }),
  );
  for (const part of document.querySelectorAll(".viewer-people")) part.hidden = faces.length === 0;
}

async function start() {
  try {
    await Promise.all([loadIndexes(), loadFilters()]);
    await loadPeople();
  } catch (error) {
    if (error instanceof AuthNeeded) return showLogin();
    return showMessage("error", "The server did not list its indexes", error.message);
  }
  syncControls();
  search({ push: false });
}

readURL();
wire();
start();

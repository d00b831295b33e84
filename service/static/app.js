// The web page: the library (recent videos, failures), search with filters (by text, by an image, or by a
// moment of a video: "More from this moment"), a player that starts at the moment and marks the query's
// moments on its timeline, similar videos, zero-shot labels and grounded answers about a video. No dependencies, no
// network beyond this server. The API key (when the server wants one) goes in the X-API-Key header for
// fetch() and in a same-site cookie for <img> and <video>, which cannot send headers (and for fetch() too,
// where the header cannot carry the key). The server reads both with service.deps.given_api_key.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_COOKIE = "alpro_api_key";
const LIBRARY_PAGE = 24;
let apiKey = localStorage.getItem("alpro_api_key") || "";
const MAX_IMAGE_FILE = 64 * 2 ** 20;  // a larger file is not read at all (the server's own limit is lower)
let lastQuery = null;
let lastWhat = "";  // how the status line names the search: "" for text, else e.g. "Image search (cat.png)"
let nextCursor = null;
let currentVideo = null;
const segmentsOf = new Map();  // video id -> its indexed segments (GET /videos/{id}), for "More from this moment"
let libraryRoots = [];
let libraryOffset = 0;

// The cookie's one encoding: encodeURIComponent (UTF-8, percent-escaped; the server percent-decodes it
// once, to bytes). A raw key would break the cookie at ";" and lose characters like "," or spaces.
function setKeyCookie(key) {
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
}
// fetch() refuses header values beyond Latin-1 and sends U+0080-U+00FF as one byte, not the UTF-8 the
// server compares; such keys travel in the cookie alone (same-origin fetch() sends it).
const HEADER_SAFE_KEY = /^[\x20-\x7e]*$/;
if (apiKey) setKeyCookie(apiKey);

function headers(extra) {
  const h = { ...extra };
  if (apiKey && HEADER_SAFE_KEY.test(apiKey)) h["X-API-Key"] = apiKey;
  return h;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) $("key-box").hidden = false;
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return data;
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return (h ? `${h}:` : "") + `${mm}:${String(r).padStart(2, "0")}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumbBox(url, alt, label) {
  const thumb = el("div", "thumb");
  if (url) {
    const img = el("img");
    img.src = url;
    img.alt = alt;
    img.loading = "lazy";
    thumb.appendChild(img);
  }
  if (label) thumb.appendChild(el("span", "moment", label));
  return thumb;
}

function scoreText(hit) {
  return hit.scored_by === "vtm" ? `match ${(100 * hit.score).toFixed(0)}% · re-ranked`
    : `similarity ${hit.score.toFixed(2)}`;
}

function card(hit) {
  const button = el("button", "card");
  button.type = "button";
  button.dataset.videoId = hit.video_id;
  button.dataset.start = hit.start;
  const name = el("div", "name", hit.relative_path);
  name.title = hit.relative_path;
  const score = el("div", "score", scoreText(hit));
  score.title = hit.scored_by === "vtm" ? "ALPRO's video-text match probability (VTM)"
    : `(1 + cosine similarity) / 2; cosine ${hit.vtc_score.toFixed(3)}`;
  const meta = el("div", "meta");
  meta.append(name, score);
  button.append(thumbBox(hit.thumbnail_url, `${hit.relative_path} at ${clock(hit.start)}`,
    `${clock(hit.start)}–${clock(hit.end)}`), meta);
  button.addEventListener("click", () => openPlayer(hit));
  return button;
}

function videoCard(video) {
  const button = el("button", "card");
  button.type = "button";
  button.dataset.videoId = video.video_id;
  const name = el("div", "name", video.relative_path);
  name.title = video.relative_path;
  const facts = [video.duration_s != null ? clock(video.duration_s) : null,
    video.width && video.height ? `${video.width}×${video.height}` : null,
    video.partial ? "partly decodable" : null].filter(Boolean).join(" · ");
  const meta = el("div", "meta");
  meta.append(name, el("div", "score", facts));
  button.append(thumbBox(video.thumbnail_url, video.relative_path, null), meta);
  button.addEventListener("click", () => openPlayer({ ...video, start: 0, end: 0, moments: [] }));
  return button;
}

function showResults(visible) {
  $("library").hidden = visible;
  $("score-legend").hidden = !visible;
  if (!visible) { $("results").replaceChildren(); $("more").hidden = true; }
}

function filters() {
  const f = {};
  const folder = $("folder").value.trim().replace(/^\/+|\/+$/g, "");
  const root = $("root").value || libraryRoots[0] || "";
  if (folder) f.path_prefix = $("folder").value.trim().startsWith("/") ? "/" + folder : `${root.replace(/\/+$/, "")}/${folder}`;
  const min = $("min-duration").value, max = $("max-duration").value;
  if (min !== "") f.min_duration = Number(min);
  if (max !== "") f.max_duration = Number(max);
  return Object.keys(f).length ? f : undefined;
}

function fail(status, message) {
  status.textContent = message;
  status.classList.add("error");
}

async function runSearch(append) {
  const status = $("status");
  status.classList.remove("error");
  if (append && lastQuery) { await search({ ...lastQuery, cursor: nextCursor }, lastWhat, true); return; }
  const query = $("query").value.trim();
  if (!query) {  // nothing to look for: no stale results under the message
    showResults(false);
    $("library").hidden = true;
    fail(status, "Type what to look for: a few words that describe a moment.");
    return;
  }
  await search({ query, top_k: Number($("top-k").value), rerank: $("rerank").checked, filters: filters() }, "", false);
}

// One /search request of any kind (text, image, example); `what` names it in the status line.
async function search(body, what, append) {
  const status = $("status");
  status.classList.remove("error");
  if (!append) { lastQuery = body; lastWhat = what; }
  const prefix = what ? `${what}: ` : "";
  $("search-button").disabled = true;
  $("image-file").disabled = true;
  status.textContent = what ? `${what}: searching…` : "Searching…";
  try {
    const data = await api("/search", body);
    if (!append) $("results").replaceChildren();
    showResults(true);
    $("results").dataset.queryType = data.query_type || "text";
    data.results.forEach((hit) => $("results").appendChild(card(hit)));
    const shown = $("results").children.length;
    status.textContent = prefix + (shown ? `${shown} video${shown === 1 ? "" : "s"} · ${data.took_ms.toFixed(0)} ms` +
      (data.reranked ? ` · ${data.reranked} re-ranked` : "") : "No matching video.");
    nextCursor = data.next_cursor;
    $("more").hidden = !nextCursor;
  } catch (e) {
    if (!append) { showResults(false); $("library").hidden = true; }
    fail(status, prefix + e.message);
  } finally {
    $("search-button").disabled = false;
    $("image-file").disabled = false;
  }
}

// --- search by image: a PNG or JPEG, read as a data: URL (the API takes the prefix), sent as `image`

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function searchImage(file) {
  if (!file) return;
  const what = `Image search (${file.name})`;
  const preview = $("image-preview");
  preview.hidden = true;
  if (file.size > MAX_IMAGE_FILE) {
    showResults(false);
    $("library").hidden = true;
    fail($("status"), `${what}: ${file.name} is too large to search with (${(file.size / 2 ** 20).toFixed(0)} MiB).`);
    return;
  }
  let image;
  try { image = await readAsDataURL(file); } catch (e) {
    showResults(false);
    $("library").hidden = true;
    fail($("status"), `${what}: ${e.message}`);
    return;
  }
  // the server says whether it is an image it can read (a non-image file gets its `invalid_image` message)
  await search({ image, top_k: Number($("top-k").value), filters: filters() }, what, false);
  if (lastQuery && lastQuery.image === image && !$("status").classList.contains("error")) {
    preview.src = image;  // the picture searched with, in the zone
    preview.hidden = false;
  }
}

// --- the player

function markMoments(moments, duration) {
  const line = $("timeline");
  line.replaceChildren();
  if (!moments.length || !(duration > 0)) { line.hidden = true; return; }
  line.hidden = false;
  moments.forEach((m, i) => {
    const mark = el("button", i === 0 ? "mark best" : "mark");
    mark.type = "button";
    mark.style.left = `${(100 * m.start / duration).toFixed(3)}%`;
    mark.style.width = `${Math.max(0.6, 100 * (m.end - m.start) / duration).toFixed(3)}%`;
    mark.title = `${clock(m.start)}–${clock(m.end)} · similarity ${m.similarity.toFixed(2)}`;
    mark.setAttribute("aria-label", `play from ${clock(m.start)}`);
    mark.addEventListener("click", () => { $("video").currentTime = m.start; $("video").play().catch(() => {}); });
    line.appendChild(mark);
  });
}

// One moment picked on the page (an answer's, a label's) marked on the timeline, apart from the query's.
function markSpot(m, label) {
  const line = $("timeline");
  line.querySelectorAll(".mark.spot").forEach((n) => n.remove());
  const duration = $("video").duration;
  if (!(duration > 0)) return;
  const mark = el("button", "mark spot");
  mark.type = "button";
  mark.style.left = `${(100 * m.start / duration).toFixed(3)}%`;
  mark.style.width = `${Math.max(0.6, 100 * (m.end - m.start) / duration).toFixed(3)}%`;
  mark.title = `${label}: ${clock(m.start)}–${clock(m.end)}`;
  mark.setAttribute("aria-label", `${label}: play from ${clock(m.start)}`);
  mark.addEventListener("click", () => seekTo(m, label));
  line.hidden = false;
  line.appendChild(mark);
}

function seekTo(m, label) {
  const video = $("video");
  video.currentTime = m.start;
  video.play().catch(() => {});
  markSpot(m, label);
}

async function explainPlaybackError(item, src) {
  // a <video> error says nothing about why: ask the server (a 404/409 has a message), else it is the format
  let message = null;
  try {
    const r = await fetch(src, { headers: headers({ Range: "bytes=0-0" }) });
    if (!r.ok) { const data = await r.json().catch(() => null); message = data && data.message; }
  } catch (e) { message = e.message; }
  if (!message) {
    let format = "";
    try {
      const d = await api(`/videos/${item.video_id}`);
      format = [d.codec, d.container].filter(Boolean).join(" in ");
    } catch (e) { /* the message below still holds */ }
    message = `This browser cannot play this file${format ? ` (${format})` : ""}, and the indexer made no ` +
      "browser preview of it (see ALPRO_PREVIEWS).";
  }
  const box = $("player-error");
  box.replaceChildren(el("span", null, message + " "));
  const link = el("a", null, "Download the original");
  link.href = item.stream_url;
  link.setAttribute("download", item.name || "");
  box.appendChild(link);
  box.hidden = false;
}

function openPlayer(item) {
  currentVideo = item;
  $("player-title").textContent = item.relative_path;
  $("player-moment").textContent = item.end > item.start ? `Moment ${clock(item.start)}–${clock(item.end)}` : "";
  $("answers").replaceChildren();
  $("qa-status").textContent = "";
  $("qa-status").classList.remove("error");
  $("qa-note").hidden = true;
  $("label-results").replaceChildren();
  $("label-status").textContent = "";
  $("label-status").classList.remove("error");
  $("more-moment").disabled = false;
  $("player-error").hidden = true;
  $("timeline").replaceChildren();
  $("timeline").hidden = true;
  const video = $("video");
  video.dataset.videoId = item.video_id;
  const src = item.preview_url || item.stream_url;
  video.dataset.source = item.preview_url ? "preview" : "original";
  video.onloadedmetadata = () => {
    markMoments(item.moments || [], video.duration);
    video.currentTime = item.start;
    const playing = video.play();
    if (playing) playing.catch(() => { video.muted = true; video.play().catch(() => {}); });
  };
  video.onerror = () => { if (currentVideo === item) explainPlaybackError(item, src); };
  video.src = src;
  video.load();
  $("player").hidden = false;
  $("question").focus();
  loadSimilar(item);
}

function closePlayer() {
  const video = $("video");
  video.onerror = null;
  video.pause();
  video.removeAttribute("src");
  video.load();
  $("player").hidden = true;
  currentVideo = null;
}

// --- more from this moment: the moment being played, as an `example` search

// The interval of `list` that holds time t (the first whose [start, end) holds it, else the nearest one).
function intervalAt(list, t) {
  if (!list || !list.length) return null;
  const inside = list.find((m) => m.start <= t && t < m.end) || list.find((m) => m.start <= t && t <= m.end);
  if (inside) return inside;
  const gap = (m) => (t < m.start ? m.start - t : t - m.end);
  return list.reduce((best, m) => (gap(m) < gap(best) ? m : best));
}

async function segmentsFor(videoId) {
  if (!segmentsOf.has(videoId)) {
    const detail = await api(`/videos/${encodeURIComponent(videoId)}`);
    segmentsOf.set(videoId, detail.segments || []);
  }
  return segmentsOf.get(videoId);
}

async function momentPlaying(item) {
  const t = $("video").currentTime || 0;
  const moments = item.moments || [];
  const hit = moments.find((m) => m.start <= t && t < m.end) || moments.find((m) => m.start <= t && t <= m.end);
  if (hit) return hit;
  // a library video (no moments), or a time outside the result's moments: the indexed segment that holds it
  const segment = intervalAt(await segmentsFor(item.video_id), t);
  if (segment) return segment;
  return item.end > item.start ? item : null;
}

async function moreFromMoment() {
  const item = currentVideo;
  if (!item) return;
  const button = $("more-moment");
  button.disabled = true;
  let moment;
  try { moment = await momentPlaying(item); } catch (e) {
    if (currentVideo === item) { fail($("qa-status"), e.message); button.disabled = false; }
    return;
  }
  if (currentVideo !== item) return;
  if (!moment) { fail($("qa-status"), "This video has no indexed moment to search with."); button.disabled = false; return; }
  const example = { video_id: item.video_id, start: moment.start, end: moment.end };
  closePlayer();
  $("query").value = "";
  await search({ example, top_k: Number($("top-k").value), filters: filters() },
    `More from ${item.relative_path} ${clock(moment.start)}–${clock(moment.end)}`, false);
}

// --- similar videos: a row of cards under the player

async function loadSimilar(item) {
  const row = $("similar"), status = $("similar-status");
  row.replaceChildren();
  status.classList.remove("error");
  status.textContent = "Looking for similar videos…";
  try {
    const data = await api(`/videos/${encodeURIComponent(item.video_id)}/similar?top_k=6`);
    if (currentVideo !== item) return;
    row.replaceChildren(...data.results.map(card));
    status.textContent = data.results.length ? "" : "No other video is similar.";
  } catch (e) {
    if (currentVideo === item) fail(status, e.message);
  }
}

// --- labels: zero-shot probabilities of the labels typed, each at the moment that fits it best

function labelRow(l) {
  const li = el("li");
  const row = el("button", "label-row");
  row.type = "button";
  row.dataset.label = l.label;
  row.dataset.probability = l.probability;
  const pct = `${(100 * l.probability).toFixed(1)}%`;
  const track = el("span", "track");
  const fill = el("span", "fill");
  fill.style.width = `${(100 * l.probability).toFixed(2)}%`;
  track.appendChild(fill);
  row.append(el("span", "label-name", l.label), track, el("span", "pct", pct));
  const m = l.moment;
  if (m) {
    row.dataset.start = m.start;
    row.title = `Fits best at ${clock(m.start)}–${clock(m.end)} (similarity ${l.similarity.toFixed(2)}): click to play there`;
    row.setAttribute("aria-label", `${l.label}: ${pct}; play from ${clock(m.start)}`);
    row.addEventListener("click", () => seekTo(m, `“${l.label}”`));
  } else {
    row.disabled = true;
  }
  li.appendChild(row);
  return li;
}

async function classify(event) {
  event.preventDefault();
  const item = currentVideo;
  if (!item) return;
  const status = $("label-status");
  status.classList.remove("error");
  const labels = [...new Set($("labels").value.split(",").map((x) => x.trim()).filter(Boolean))];
  if (!labels.length) {
    $("label-results").replaceChildren();
    fail(status, "Type one or more labels, separated by commas.");
    return;
  }
  status.textContent = "Scoring labels…";
  $("classify").disabled = true;
  try {
    const data = await api("/classify", { labels, video_id: item.video_id });
    if (currentVideo !== item) return;
    $("label-results").replaceChildren(...data.labels.map(labelRow));
    status.textContent = `Probabilities over the ${data.labels.length} label${data.labels.length === 1 ? "" : "s"}` +
      ` · ${data.took_ms.toFixed(0)} ms`;
  } catch (e) {
    if (currentVideo !== item) return;
    $("label-results").replaceChildren();
    fail(status, e.message);
  } finally {
    $("classify").disabled = false;
  }
}

async function ask(event) {
  event.preventDefault();
  const item = currentVideo;
  if (!item) return;
  const status = $("qa-status"), note = $("qa-note");
  status.classList.remove("error");
  note.hidden = true;
  const question = $("question").value.trim();
  if (!question) { $("answers").replaceChildren(); fail(status, "Type a question about the video."); return; }
  status.textContent = "Thinking…";
  $("ask").disabled = true;
  try {
    const data = await api("/qa", { video_id: item.video_id, question, top_k: 5 });
    if (currentVideo !== item) return;
    const list = $("answers");
    list.replaceChildren();
    $("timeline").querySelectorAll(".mark.spot").forEach((n) => n.remove());
    for (const a of data.answers) {
      const li = el("li", "answer", `${a.answer} (${(100 * a.score).toFixed(1)}%)`);
      const bar = el("span", "bar");
      bar.style.width = `${Math.max(2, Math.round(120 * a.score))}px`;
      li.appendChild(bar);
      if (a.moment) {  // the part of the video the answer comes from
        const m = a.moment;
        const link = el("button", "answer-moment", `${clock(m.start)}–${clock(m.end)}`);
        link.type = "button";
        link.dataset.start = m.start;
        link.dataset.end = m.end;
        link.title = `“${a.answer}” comes from this part of the video: click to play it`;
        link.setAttribute("aria-label", `“${a.answer}” comes from ${clock(m.start)}–${clock(m.end)}: play it`);
        link.addEventListener("click", () => seekTo(m, `answer “${a.answer}”`));
        li.appendChild(link);
      }
      list.appendChild(li);
    }
    if (data.abstained) {
      note.textContent = "Not sure: no answer above the confidence threshold.";
      note.hidden = false;
    } else if (data.grounded) {
      const parts = (data.moments || []).length;
      note.textContent = (parts > 1 ? `Answered from the ${parts} parts of the video that best match the question`
        : "Answered from the part of the video that best matches the question") +
        ": each answer comes from the part of the video its time shows (click the time to play it).";
      note.hidden = false;
    }
    status.textContent = `${data.took_ms.toFixed(0)} ms`;
  } catch (e) {
    if (currentVideo !== item) return;
    $("answers").replaceChildren();
    fail(status, e.message);
  } finally {
    $("ask").disabled = false;
  }
}

// --- the library

async function loadLibrary(reset) {
  if (reset) { libraryOffset = 0; $("library-videos").replaceChildren(); }
  const [sort, order] = $("library-sort").value.split(":");
  $("library-title").textContent = { indexed_at: "Recently indexed", path: "All videos", mtime: "Newest files",
    duration: order === "desc" ? "Longest videos" : "Shortest videos" }[sort];
  try {
    const page = await api(`/videos?sort=${sort}&order=${order}&limit=${LIBRARY_PAGE}&offset=${libraryOffset}`);
    page.videos.forEach((v) => $("library-videos").appendChild(videoCard(v)));
    libraryOffset += page.videos.length;
    $("library-more").hidden = libraryOffset >= page.total;
    $("library-empty").hidden = page.total > 0;
  } catch (e) { fail($("status"), e.message); }
}

async function loadFailures() {
  try {
    const page = await api("/failures?limit=200");
    const rows = page.failures.map((f) => {
      const tr = el("tr");
      const file = el("td", "path", f.relative_path);
      file.title = f.path;
      tr.append(file, el("td", null, f.reason),
        el("td", "muted", f.recorded_at ? new Date(f.recorded_at).toLocaleString() : ""));
      return tr;
    });
    $("failures-list").replaceChildren(...rows);
    $("failures-title").textContent = `${page.total} file${page.total === 1 ? "" : "s"} could not be indexed` +
      (page.total > page.failures.length ? ` (newest ${page.failures.length} shown)` : "");
    $("failures").hidden = page.total === 0;
  } catch (e) { /* the stats line still says how many */ }
}

async function loadStats() {
  try {
    const s = await api("/stats");
    $("stats").textContent = `${s.videos} videos · ${s.segments} moments` +
      (s.failures ? ` · ${s.failures} failed` : "") + (s.partial ? ` · ${s.partial} partly decodable` : "") +
      (s.index ? ` · index v${s.index.version}` : "");
    libraryRoots = s.library_roots || [];
    $("root").replaceChildren(...libraryRoots.map((r) => { const o = el("option", null, r); o.value = r; return o; }));
    $("root-label").hidden = libraryRoots.length < 2;
  } catch (e) { return; /* the key box shows on 401 */ }
  loadLibrary(true);
  loadFailures();
}

function goHome(event) {
  if (event) event.preventDefault();
  $("query").value = "";
  $("status").textContent = "";
  $("status").classList.remove("error");
  lastQuery = null;
  showResults(false);
  loadStats();
}

$("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(false); });
$("more").addEventListener("click", () => runSearch(true));
$("home").addEventListener("click", goHome);
$("library-sort").addEventListener("change", () => loadLibrary(true));
$("library-more").addEventListener("click", () => loadLibrary(false));
$("qa-form").addEventListener("submit", ask);
$("classify-form").addEventListener("submit", classify);
$("more-moment").addEventListener("click", moreFromMoment);
$("image-file").addEventListener("change", () => {
  const file = $("image-file").files[0];
  $("image-file").value = "";  // the same file chosen again searches again
  searchImage(file);
});
{
  const zone = $("image-drop");
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  zone.addEventListener("dragenter", (e) => { if (hasFiles(e)) { e.preventDefault(); zone.classList.add("over"); } });
  zone.addEventListener("dragover", (e) => { if (hasFiles(e)) { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; } });
  zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("over"); });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) searchImage(e.dataTransfer.files[0]);
  });
  // a file dropped beside the zone does not navigate away from the page
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => { if (hasFiles(e)) e.preventDefault(); });
}
$("close").addEventListener("click", closePlayer);
$("player").addEventListener("click", (e) => { if (e.target === $("player")) closePlayer(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("player").hidden) closePlayer(); });
$("key-button").addEventListener("click", () => {
  apiKey = $("api-key").value.trim();
  localStorage.setItem("alpro_api_key", apiKey);
  setKeyCookie(apiKey);
  $("key-box").hidden = true;
  loadStats();
});
loadStats();

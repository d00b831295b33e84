// The web page: the library (recent videos, failures), search with filters, a player that starts at the
// moment and marks the query's moments on its timeline, questions about a video. No dependencies, no
// network beyond this server. The API key (when the server wants one) goes in the X-API-Key header for
// fetch() and in a same-site cookie for <img> and <video>, which cannot send headers (and for fetch() too,
// where the header cannot carry the key). The server reads both with service.deps.given_api_key.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_COOKIE = "alpro_api_key";
const LIBRARY_PAGE = 24;
let apiKey = localStorage.getItem("alpro_api_key") || "";
let lastQuery = null;
let nextCursor = null;
let currentVideo = null;
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
  const query = $("query").value.trim();
  if (!append && !query) {  // nothing to look for: no stale results under the message
    showResults(false);
    $("library").hidden = true;
    fail(status, "Type what to look for: a few words that describe a moment.");
    return;
  }
  const body = lastQuery && append ? { ...lastQuery, cursor: nextCursor } : {
    query, top_k: Number($("top-k").value), rerank: $("rerank").checked, filters: filters(),
  };
  if (!append) lastQuery = body;
  $("search-button").disabled = true;
  status.textContent = "Searching…";
  try {
    const data = await api("/search", body);
    if (!append) $("results").replaceChildren();
    showResults(true);
    data.results.forEach((hit) => $("results").appendChild(card(hit)));
    const shown = $("results").children.length;
    status.textContent = shown ? `${shown} video${shown === 1 ? "" : "s"} · ${data.took_ms.toFixed(0)} ms` +
      (data.reranked ? ` · ${data.reranked} re-ranked` : "") : "No matching video.";
    nextCursor = data.next_cursor;
    $("more").hidden = !nextCursor;
  } catch (e) {
    if (!append) { showResults(false); $("library").hidden = true; }
    fail(status, e.message);
  } finally {
    $("search-button").disabled = false;
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

async function ask(event) {
  event.preventDefault();
  if (!currentVideo) return;
  const status = $("qa-status");
  status.classList.remove("error");
  const question = $("question").value.trim();
  if (!question) { $("answers").replaceChildren(); fail(status, "Type a question about the video."); return; }
  status.textContent = "Thinking…";
  $("ask").disabled = true;
  try {
    const data = await api("/qa", { video_id: currentVideo.video_id, question, top_k: 5 });
    const list = $("answers");
    list.replaceChildren();
    for (const a of data.answers) {
      const li = el("li", "answer", `${a.answer} (${(100 * a.score).toFixed(1)}%)`);
      const bar = el("span", "bar");
      bar.style.width = `${Math.max(2, Math.round(120 * a.score))}px`;
      li.appendChild(bar);
      list.appendChild(li);
    }
    status.textContent = `${data.took_ms.toFixed(0)} ms`;
  } catch (e) {
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

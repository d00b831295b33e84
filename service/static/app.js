// The search page: POST /search, show thumbnails, play a moment, POST /qa. No dependencies, no network
// beyond this server. The API key (when the server wants one) goes in the X-API-Key header for fetch()
// and in a same-site cookie for <img> and <video>, which cannot send headers (and for fetch() too, where
// the header cannot carry the key). The server reads both with service.deps.given_api_key.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_COOKIE = "alpro_api_key";
let apiKey = localStorage.getItem("alpro_api_key") || "";
let lastQuery = null;
let nextCursor = null;
let currentVideo = null;

// The cookie's one encoding: encodeURIComponent (UTF-8, percent-escaped; the server percent-decodes it
// once, to bytes). A raw key would break the cookie at ";" and lose characters like "," or spaces.
function setKeyCookie(key) {
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
}
// fetch() refuses header values beyond Latin-1 and sends U+0080-U+00FF as one byte, not the UTF-8 the
// server compares; such keys travel in the cookie alone (same-origin fetch() sends it).
const HEADER_SAFE_KEY = /^[\x20-\x7e]*$/;
if (apiKey) setKeyCookie(apiKey);

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey && HEADER_SAFE_KEY.test(apiKey)) headers["X-API-Key"] = apiKey;
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
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

function card(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.videoId = hit.video_id;
  button.dataset.start = hit.start;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  if (hit.thumbnail_url) {
    const img = document.createElement("img");
    img.src = hit.thumbnail_url;
    img.alt = `${hit.name} at ${clock(hit.start)}`;
    img.loading = "lazy";
    thumb.appendChild(img);
  }
  const moment = document.createElement("span");
  moment.className = "moment";
  moment.textContent = `${clock(hit.start)}–${clock(hit.end)}`;
  thumb.appendChild(moment);
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = hit.name;
  name.title = hit.path;
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = `score ${hit.score.toFixed(3)}` + (hit.vtm_score !== null ? " · re-ranked" : "");
  meta.append(name, score);
  button.append(thumb, meta);
  button.addEventListener("click", () => openPlayer(hit));
  return button;
}

async function runSearch(append) {
  const status = $("status");
  const body = lastQuery && append ? { ...lastQuery, cursor: nextCursor } : {
    query: $("query").value, top_k: Number($("top-k").value), rerank: $("rerank").checked,
  };
  if (!append) lastQuery = body;
  $("search-button").disabled = true;
  status.classList.remove("error");
  status.textContent = "Searching…";
  try {
    const data = await api("/search", body);
    if (!append) $("results").replaceChildren();
    data.results.forEach((hit) => $("results").appendChild(card(hit)));
    const shown = $("results").children.length;
    status.textContent = shown ? `${shown} video${shown === 1 ? "" : "s"} · ${data.took_ms.toFixed(0)} ms` +
      (data.reranked ? ` · ${data.reranked} re-ranked` : "") : "No matching video.";
    nextCursor = data.next_cursor;
    $("more").hidden = !nextCursor;
  } catch (e) {
    status.textContent = e.message;
    status.classList.add("error");
  } finally {
    $("search-button").disabled = false;
  }
}

function openPlayer(hit) {
  currentVideo = hit;
  $("player-title").textContent = hit.name;
  $("player-moment").textContent = `Moment ${clock(hit.start)}–${clock(hit.end)} · ${hit.path}`;
  $("answers").replaceChildren();
  $("qa-status").textContent = "";
  const video = $("video");
  video.dataset.videoId = hit.video_id;
  const seekAndPlay = () => {
    video.currentTime = hit.start;
    const playing = video.play();
    if (playing) playing.catch(() => { video.muted = true; video.play().catch(() => {}); });
  };
  video.addEventListener("loadedmetadata", seekAndPlay, { once: true });
  video.src = hit.stream_url;
  video.load();
  $("player").hidden = false;
  $("question").focus();
}

function closePlayer() {
  const video = $("video");
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
  status.textContent = "Thinking…";
  $("ask").disabled = true;
  try {
    const data = await api("/qa", { video_id: currentVideo.video_id, question: $("question").value, top_k: 5 });
    const list = $("answers");
    list.replaceChildren();
    for (const a of data.answers) {
      const li = document.createElement("li");
      li.className = "answer";
      li.textContent = `${a.answer} (${(100 * a.score).toFixed(1)}%)`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(2, Math.round(120 * a.score))}px`;
      li.appendChild(bar);
      list.appendChild(li);
    }
    status.textContent = `${data.took_ms.toFixed(0)} ms`;
  } catch (e) {
    status.textContent = e.message;
    status.classList.add("error");
  } finally {
    $("ask").disabled = false;
  }
}

async function loadStats() {
  try {
    const s = await api("/stats");
    $("stats").textContent = `${s.videos} videos · ${s.segments} moments` + (s.index ? ` · index v${s.index.version}` : "");
  } catch (e) { /* the page still works; the key box shows on 401 */ }
}

$("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(false); });
$("more").addEventListener("click", () => runSearch(true));
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

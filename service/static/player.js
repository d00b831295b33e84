// The player and what goes with it: the timeline with the query's moments, "More from this moment", similar
// videos, zero-shot labels and grounded answers about the video. Uses api.js and search.js (cards, search).
"use strict";

let currentVideo = null;
const segmentsOf = new Map();  // video id -> its indexed segments (GET /videos/{id}), for "More from this moment"

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

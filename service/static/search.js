// Search: one /search request of any kind (text with filters, an image, an example moment), its result cards
// and paging ("More"). Uses api.js; its controls are wired up in app.js.
"use strict";

const MAX_IMAGE_FILE = 64 * 2 ** 20;  // a larger file is not read at all (the server's own limit is lower)
let lastQuery = null;
let lastWhat = "";  // how the status line names the search: "" for text, else e.g. "Image search (cat.png)"
let nextCursor = null;

function scoreText(hit) {
  return hit.scored_by === "vtm" ? `re-ranked ${(100 * hit.score).toFixed(0)}%`
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
  score.title = hit.scored_by === "vtm"
    ? `re-ranked by VTC and VTM together; VTM match probability ${hit.vtm_score.toFixed(3)}`
    : `(1 + cosine similarity) / 2; cosine ${hit.vtc_score.toFixed(3)}`;
  const meta = el("div", "meta");
  meta.append(name, score);
  button.append(thumbBox(hit.thumbnail_url, `${hit.relative_path} at ${clock(hit.start)}`,
    `${clock(hit.start)}–${clock(hit.end)}`), meta);
  button.addEventListener("click", () => openPlayer(hit));
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

// The library, shown when no search is: recent videos (sorted, paged), the files that could not be indexed,
// the stats line. Uses api.js; its controls are wired up in app.js.
"use strict";

const LIBRARY_PAGE = 24;
let libraryRoots = [];
let libraryOffset = 0;

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

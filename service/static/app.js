// The web page: the library (recent videos, failures), search with filters (by text, by an image, or by a
// moment of a video: "More from this moment"), a player that starts at the moment and marks the query's
// moments on its timeline, similar videos, zero-shot labels and grounded answers about a video. No dependencies, no
// network beyond this server. The page is plain scripts that index.html loads in this order and that share
// their top-level names: api.js (the API key, fetch() and its errors, DOM helpers), search.js (search by
// text, image or moment; result cards; paging), library.js (the library, failures, stats), player.js (the
// player, timeline, more from this moment, similar videos, labels, answers), then this one, which wires up
// the page's controls and loads the library.
"use strict";

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

// The page's plumbing, shared by the other scripts (index.html loads this one first): the API key, fetch() to
// the API and its errors, and small DOM and time helpers. No dependencies, no network beyond this server.
// The API key (when the server wants one) goes in the X-API-Key header for
// fetch() and in a same-site cookie for <img> and <video>, which cannot send headers (and for fetch() too,
// where the header cannot carry the key). The server reads both with service.deps.given_api_key.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_COOKIE = "alpro_api_key";
let apiKey = localStorage.getItem("alpro_api_key") || "";

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

function fail(status, message) {
  status.textContent = message;
  status.classList.add("error");
}

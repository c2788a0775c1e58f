// alphacut's web page. Plain JavaScript, no build step, no third-party code: it talks to the
// public API only (POST api/v5/removebg_mask, POST api/v5/fetch/{id}, GET /outputs/...), so it
// doubles as a worked example of a client.
"use strict";

// Relative URLs keep the page working under a reverse-proxy path prefix.
const API = "api/v5/removebg_mask";
const FETCH = "api/v5/fetch/";
const POLL_MS = 700;
const $ = (id) => document.getElementById(id);

let source = null; // {kind: "file", file} or {kind: "url", url}
let run = 0; // id of the newest run; an older one that finishes late is ignored
let objectUrls = [];
let ticker = null;

class ApiError extends Error {}

// ------------------------------------------------------------------ input

function chooseFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image (${file.type}).`);
    return;
  }
  source = { kind: "file", file };
  $("input-name").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KB`;
  start();
}

function chooseUrl(url) {
  url = url.trim();
  if (!url) return;
  source = { kind: "url", url };
  $("input-name").textContent = url;
  start();
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// The request body: every seed field as the hosted API knows it, the rest only when set.
function collectOptions() {
  const checked = (id) => $(id).checked;
  const int = (id, fallback) => {
    const value = parseInt($(id).value, 10);
    return Number.isNaN(value) ? fallback : value;
  };
  const text = (id) => $(id).value.trim();
  const body = {
    key: $("key").value,
    alpha_matting: checked("alpha_matting"),
    alpha_matting_foreground_threshold: int("alpha_matting_foreground_threshold", 240),
    alpha_matting_background_threshold: int("alpha_matting_background_threshold", 20),
    alpha_matting_erode_size: int("alpha_matting_erode_size", 5),
    post_process_mask: checked("post_process_mask"),
    only_mask: checked("only_mask"),
    inverse_mask: checked("inverse_mask"),
  };
  if ($("format").value !== "png") body.format = $("format").value;
  if (text("quality")) body.quality = int("quality", null);
  if (checked("use_bg_color")) body.bg_color = $("bg_color").value;
  if (text("bg_image")) body.bg_image = text("bg_image");
  if (checked("crop")) {
    body.crop = true;
    if (text("crop_margin")) body.crop_margin = text("crop_margin");
  }
  if (text("scale")) body.scale = text("scale");
  if (text("position")) body.position = text("position");
  if (text("model")) body.model = text("model");
  if (checked("instant_response")) body.instant_response = true;
  return body;
}

// ------------------------------------------------------------------ API

async function postJson(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(`The server could not be reached (${err.message}).`);
  }
  let data;
  try {
    data = await response.json();
  } catch {
    throw new ApiError(`The server answered HTTP ${response.status} ${response.statusText}.`);
  }
  // Errors are {"status": "error"} (HTTP 4xx, or 200 on servers set to ALPHACUT_ERRORS_HTTP_200)
  // and failed jobs are {"status": "failed"}: show the server's own message either way.
  if (!response.ok || data.status === "error" || data.status === "failed") {
    throw new ApiError(data.message || `HTTP ${response.status}`);
  }
  return data;
}

async function pollUntilDone(first, id, startedAt) {
  let data = first;
  const eta = Math.max(1, Number(first.eta) || 3);
  while (data.status === "processing") {
    if (id !== run) return null;
    const elapsed = (performance.now() - startedAt) / 1000;
    setProgress(Math.min(0.95, elapsed / (eta * 1.3)));
    setStatus(`Processing job ${first.id}… ${elapsed.toFixed(0)} s (about ${eta.toFixed(0)} s)`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    data = await postJson(FETCH + encodeURIComponent(first.id), { key: $("key").value });
  }
  return data;
}

async function start() {
  if (!source) {
    showError("Choose, drop or paste an image first.");
    return;
  }
  const id = ++run;
  const startedAt = performance.now();
  resetResult();
  setState("working");
  setProgress(null);
  clearInterval(ticker);
  ticker = setInterval(() => {
    if (document.body.dataset.state === "working") {
      setStatus(`Removing the background… ${((performance.now() - startedAt) / 1000).toFixed(0)} s`);
    }
  }, 500);
  setStatus("Removing the background…");
  try {
    const body = collectOptions();
    body.image = source.kind === "file" ? await readAsDataUrl(source.file) : source.url;
    showBefore(source.kind === "file" ? track(URL.createObjectURL(source.file)) : source.url);
    let data = await postJson(API, body);
    if (data.status === "processing") {
      setState("processing");
      data = await pollUntilDone(data, id, startedAt);
    }
    if (id !== run || data === null) return;
    await showResult(data, body, (performance.now() - startedAt) / 1000, id);
  } catch (err) {
    if (id === run) showError(err instanceof ApiError ? err.message : String(err.message || err));
  } finally {
    if (id === run) clearInterval(ticker);
  }
}

// ------------------------------------------------------------------ result

function track(url) {
  objectUrls.push(url);
  return url;
}

// Back to the empty state: nothing shown, nothing to download (the old links would point at
// object URLs revoked here).
function resetResult() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  $("error").hidden = true;
  $("stage").hidden = true;
  $("info").hidden = true;
  $("empty").hidden = false;
  $("result").removeAttribute("src");
  disableDownload($("download-cutout"));
  disableDownload($("download-mask"));
  $("download-cutout").textContent = "Download cutout";
  $("download-mask").hidden = false;
  $("mask-note").textContent = "";
}

// A download control is a link while it has something to download; disabled, it has no href
// (so it cannot be clicked or focused) and says so to assistive technology.
function disableDownload(link) {
  link.removeAttribute("href");
  link.setAttribute("aria-disabled", "true");
}

function enableDownload(link, href, name) {
  link.href = href;
  link.download = name;
  link.removeAttribute("aria-disabled");
}

function showBefore(url) {
  $("before").src = url;
}

function loaded(img) {
  if (img.complete) {
    // Already settled: loaded, or broken (a broken image fires no further events).
    return img.naturalWidth ? Promise.resolve()
      : Promise.reject(new Error("the image could not be displayed"));
  }
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error("the image could not be displayed"));
  });
}

// `id` is the run this result belongs to: a newer run started meanwhile owns the page.
async function showResult(data, body, seconds, id) {
  const url = data.output[0];
  const response = await fetch(url);
  if (!response.ok) throw new ApiError(`Downloading the result failed: HTTP ${response.status}`);
  let blob = await response.blob();
  if (url.endsWith(".base64")) {
    const bytes = Uint8Array.from(atob(await blob.text()), (c) => c.charCodeAt(0));
    blob = new Blob([bytes], { type: `image/${data.meta.format || "png"}` });
  }
  if (id !== run) return;
  const result = $("result");
  result.src = track(URL.createObjectURL(blob));
  await loaded(result);
  const before = $("before");
  try {
    await loaded(before);
  } catch {
    // A URL input the browser may not display (hotlink protection): show the result alone.
  }
  if (id !== run) return;
  const same = before.naturalWidth === result.naturalWidth &&
    before.naturalHeight === result.naturalHeight;
  $("stage").classList.toggle("single", !same);
  $("empty").hidden = true;
  $("stage").hidden = false;

  const meta = data.meta || {};
  $("generation-time").textContent =
    `${Number(data.generationTime).toFixed(2)} s (round trip ${seconds.toFixed(1)} s)`;
  $("size").textContent = `${result.naturalWidth} × ${result.naturalHeight}`;
  const fg = meta.foreground;
  $("foreground").textContent = fg === undefined ? "–"
    : fg === null ? "none found" : `${fg.width} × ${fg.height} at ${fg.left}, ${fg.top}`;
  $("job").textContent = `#${data.id}${meta.model ? ` · ${meta.model}` : ""}`;
  $("info").hidden = false;

  const name = meta.file_prefix || url.split("/").pop();
  const cutout = $("download-cutout");
  enableDownload(cutout, result.src, name);
  cutout.textContent = body.only_mask ? "Download mask" : "Download cutout";
  await offerMask(result, blob, name, body, id);
  if (id !== run) return;
  setProgress(1);
  setState("done");
  setStatus(`Done in ${Number(data.generationTime).toFixed(2)} s.`);
}

// The mask download is derived here from the cutout's alpha channel (no second request, no
// second inference). An output over a background colour or image has no alpha left, so the
// button stays disabled then; the "Only mask" option asks the server for the mask instead.
async function offerMask(result, blob, name, body, id) {
  const link = $("download-mask");
  const note = $("mask-note");
  const stem = name.replace(/\.[^.]+$/, "");
  if (body.only_mask) {
    link.hidden = true;
    return;
  }
  if (body.bg_color || body.bg_image || body.format === "jpg") {
    note.textContent = "The mask is not in an output with a background: tick “Only mask”.";
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = result.naturalWidth;
  canvas.height = result.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(await createImageBitmap(blob), 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i] = d[i + 1] = d[i + 2] = d[i + 3]; // alpha is exact even where colour is not
    d[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  const mask = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (id !== run) return;
  enableDownload(link, track(URL.createObjectURL(mask)), `${stem}.mask.png`);
}

// ------------------------------------------------------------------ status

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setProgress(fraction) {
  const bar = $("progress");
  bar.hidden = fraction === 1;
  bar.classList.toggle("indeterminate", fraction === null);
  bar.firstElementChild.style.width = fraction === null ? "30%" : `${(fraction * 100).toFixed(0)}%`;
}

function showError(message) {
  clearInterval(ticker);
  $("error").textContent = message;
  $("error").hidden = false;
  $("progress").hidden = true;
  setStatus("The request failed.");
  setState("error");
}

// ------------------------------------------------------------------ wiring

// A drop zone takes a dropped file or URL, and opens the file chooser on a click or a key.
function wireDropZone(zone) {
  zone.addEventListener("click", () => $("file").click());
  zone.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault(); // a space would scroll the page too
    $("file").click();
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) chooseFile(file);
    else chooseUrl(event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text"));
  });
}

function wire() {
  $("pick").addEventListener("click", (event) => {
    event.stopPropagation();
    $("file").click();
  });
  wireDropZone($("drop"));
  wireDropZone($("empty"));
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  document.addEventListener("paste", (event) => {
    const target = event.target;
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      chooseFile(file);
      return;
    }
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    const text = event.clipboardData?.getData("text") || "";
    if (/^https?:\/\//i.test(text.trim())) chooseUrl(text);
  });
  $("url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    chooseUrl($("url").value);
  });
  $("options").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("slider").addEventListener("input", (event) => {
    $("stage").style.setProperty("--pos", `${event.target.value}%`);
  });
  // The key stays for this tab only (sessionStorage), never in the page's URL.
  $("key").value = sessionStorage.getItem("alphacut.key") || "";
  $("key").addEventListener("change", () => sessionStorage.setItem("alphacut.key", $("key").value));
}

wire();

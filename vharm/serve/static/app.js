// The page of `vharm serve`: upload, open, preview (side by side or with a wipe), tune, export. No framework and no
// build step; the server does all image work (vharm.serve.app), this file only asks for frames and draws them.

const $ = (id) => document.getElementById(id);

const LABELS = {
  strength: "Strength",
  temporal_smoothing: "Temporal smoothing",
  min_change: "Gate: leave changes under (levels)",
  full_change: "Gate: full change from (levels)",
  mask_free_gate: "Mask-free gate (times the gate)",
  brighten: "Brightening gain",
  darken_gate: "Darkening gate (times the gate)",
  g_steps: "G's steps on its own result",
};
const CACHE_FRAMES = 48;  // input frames kept decoded in the page
const POLL_MS = 300;      // how often a running job is asked for its progress

const state = {
  info: null,
  clip: null,          // the open clip's JSON
  uploads: new Map(),  // "name|size|modified" -> upload JSON, so that opening again does not upload again
  frame: 0,
  playing: false,
  inputs: new Map(),   // frame -> ImageBitmap (input frames do not change with the settings)
  shown: null,         // what is drawn: {frame, input, result, mask, dmap}
  exportJob: null,     // the id of the running export
};

// ------------------------------------------------------------------------------------------------ server calls

async function api(method, url, body) {
  const options = {method, headers: {}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({error: `${url}: ${response.status} ${response.statusText}`}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function uploadFile(file, onProgress) {
  // XMLHttpRequest rather than fetch: it reports upload progress. The server streams the body to disk.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/uploads");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON: the status says it */ }
      if (xhr.status === 201) resolve(data);
      else reject(new Error(data.error || `${file.name}: upload failed (${xhr.status} ${xhr.statusText})`));
    };
    xhr.onerror = () => reject(new Error(`${file.name}: the upload stopped (is vharm serve still running?)`));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

async function picture(url) {
  // A PNG of the server's as {image, response}; no colour management: the canvas gets the values the server computed.
  const response = await fetch(url);
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.error || `${response.status} ${response.statusText}`);
  }
  const image = await createImageBitmap(await response.blob(), {colorSpaceConversion: "none", premultiplyAlpha: "none"});
  return {image, response};
}

const bitmap = async (url) => (await picture(url)).image;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------------------- messages

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function formatBytes(n) {
  for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (n >= size) return `${(n / size).toPrecision(3)} ${unit}`;
  }
  return `${n} bytes`;
}

function formatTime(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(2).padStart(5, "0")}`;
}

// --------------------------------------------------------------------------------------------------- opening

async function ensureUpload(file, what) {
  if (!file) throw new Error(`choose ${what}`);
  const key = `${file.name}|${file.size}|${file.lastModified}`;
  if (state.uploads.has(key)) return state.uploads.get(key);
  if (file.size > state.info.max_upload) {
    throw new Error(`${file.name}: larger than the upload limit of ${state.info.max_upload_text} ` +
                    "(vharm serve --max-upload)");
  }
  const bar = $("upload-progress");
  bar.hidden = false;
  const upload = await uploadFile(file, (f) => {
    bar.value = f;
    $("open-status").textContent = `Uploading ${file.name}: ${Math.round(100 * f)} % of ${formatBytes(file.size)}`;
  });
  bar.hidden = true;
  state.uploads.set(key, upload);
  return upload;
}

async function openRequest() {
  if (document.querySelector("input[name=source]:checked").value === "composite") {
    const composite = await ensureUpload($("composite").files[0], "a composite");
    const mode = $("mask-mode").value;
    const mask = mode === "file" ? (await ensureUpload($("mask").files[0], "a mask file (or another mask choice)")).id
      : mode;
    return {composite: composite.id, mask};
  }
  const foreground = await ensureUpload($("foreground").files[0], "a foreground");
  const fgMask = $("foreground-mask").files[0];
  const background = await ensureUpload($("background").files[0], "a background");
  const request = {foreground: foreground.id, background: background.id, scale: Number($("scale").value) || 1,
                   length: $("length").value};
  if (fgMask) request.foreground_mask = (await ensureUpload(fgMask, "a mask")).id;
  const position = $("position").value.trim();
  if (position) {
    const xy = position.split(",").map((v) => Number(v.trim()));
    if (xy.length !== 2 || !xy.every(Number.isInteger)) throw new Error(`position ${position}: expected X,Y in pixels`);
    request.position = xy;
  }
  return request;
}

async function openClip() {
  showError("");
  $("open-button").disabled = true;
  try {
    const request = await openRequest();
    $("open-status").textContent = "Opening…";
    const clip = await api("POST", "/api/clips", request);
    await closeClip(request);
    state.clip = clip;
    state.frame = 0;
    state.inputs.clear();
    state.shown = null;
    showClip();
    $("open-status").textContent = "";
    followReading().catch((e) => showError(e.message));  // in the background: another clip may be opened meanwhile
  } catch (e) {
    $("open-status").textContent = "";
    $("upload-progress").hidden = true;
    showError(e.message);
  } finally {
    $("open-button").disabled = false;
  }
}

async function closeClip(next) {
  // The previous clip, and the uploads the next one does not use, go (their temporary files with them).
  stopPlaying();
  if (state.clip) await api("DELETE", `/api/clips/${state.clip.id}`).catch(() => {});
  const keep = new Set(Object.values(next).filter((v) => typeof v === "string"));
  for (const [key, upload] of state.uploads) {
    if (!keep.has(upload.id)) {
      state.uploads.delete(key);
      await api("DELETE", `/api/uploads/${upload.id}`).catch(() => {});
    }
  }
}

function showClip() {
  const c = state.clip;
  for (const id of ["viewer", "settings", "export"]) $(id).hidden = false;
  $("clip-name").textContent = c.name;
  for (const id of ["input", "result", "wipe", "input-overlay", "result-overlay", "wipe-overlay"]) {
    $(id).width = c.preview_width;
    $(id).height = c.preview_height;
  }
  const preview = c.preview_width === c.width ? "" : ` · preview ${c.preview_width}×${c.preview_height}`;
  $("clip-info").textContent = `${c.width}×${c.height}${preview}` +
    (c.image ? " · image" : ` · ${c.fps.toFixed(2).replace(/\.00$/, "")} fps${c.audio ? " · audio" : ""}`);
  $("show-dmap").disabled = !state.info.discriminator;
  $("download").hidden = true;
  $("export-status").textContent = "";
  $("export-progress").hidden = true;
  $("preview-status").textContent = "";
  $("warnings").replaceChildren();
  for (const id of ["input", "result", "wipe", "input-overlay", "result-overlay", "wipe-overlay"]) {
    $(id).getContext("2d").clearRect(0, 0, c.preview_width, c.preview_height);
  }
  $("frame").max = 0;
  $("frame").value = 0;
  $("play").disabled = c.image;
  $("two_pass").checked = false;
  $("two_pass").disabled = true;  // until the clip is read (the plan needs every frame)
  updateFrameLabel();
}

async function followReading() {
  // The clip is read into its preview copy in the background; its frames can be scrubbed as they arrive.
  const bar = $("read-progress");
  for (;;) {
    const clip = await api("GET", `/api/clips/${state.clip.id}`);
    if (!state.clip || clip.id !== state.clip.id) return;
    state.clip = clip;
    $("frame").max = Math.max(0, clip.ready - 1);
    $("warnings").replaceChildren(...clip.warnings.map((w) => Object.assign(document.createElement("li"),
                                                                            {textContent: w})));
    updateFrameLabel();
    if (clip.ready > 0 && !state.shown) requestPreview();
    if (clip.status === "failed") {
      bar.hidden = true;
      $("read-status").textContent = "";
      showError(clip.error || `${clip.name}: could not be read`);
      return;
    }
    if (clip.status === "ready") {
      bar.hidden = true;
      $("read-status").textContent = "";
      $("two_pass").disabled = clip.mask === "pasted";
      return;
    }
    const job = await api("GET", `/api/jobs/${clip.prepare}`);
    bar.hidden = false;
    bar.value = clip.total ? clip.ready / clip.total : 0;
    $("read-status").textContent = job.status === "queued"
      ? `Waiting for ${job.ahead} job(s) to finish before reading ${clip.name}…`
      : `Reading ${clip.name}: ${clip.ready}${clip.total ? ` of ${clip.total}` : ""} frames`;
    await sleep(POLL_MS);
  }
}

// --------------------------------------------------------------------------------------------------- settings

function buildSliders() {
  const box = $("sliders");
  for (const s of state.info.settings) {
    const label = Object.assign(document.createElement("label"), {htmlFor: s.name, textContent: LABELS[s.name] || s.name});
    const input = Object.assign(document.createElement("input"), {type: "range", id: s.name, min: s.min, max: s.max,
                                                                   step: s.step, value: s.value, title: s.help});
    const output = Object.assign(document.createElement("output"), {id: `${s.name}-value`, htmlFor: s.name});
    const help = Object.assign(document.createElement("span"), {className: "help", textContent: `${s.help} (${s.flag})`});
    input.addEventListener("input", () => {
      keepGateOrdered(s.name);
      showValues();
      requestPreview();
    });
    box.append(label, input, output, help);
  }
  showValues();
}

function keepGateOrdered(moved) {
  // The gate needs min_change <= full_change: moving one past the other takes the other along.
  const lo = $("min_change"), hi = $("full_change");
  if (!lo || !hi || Number(lo.value) <= Number(hi.value)) return;
  if (moved === "min_change") hi.value = lo.value; else lo.value = hi.value;
}

function showValues() {
  for (const s of state.info.settings) {
    $(`${s.name}-value`).textContent = Number($(s.name).value).toFixed(s.step >= 1 ? 0 : s.step < 0.1 ? 2 : 1);
  }
}

function settings() {
  return {...Object.fromEntries(state.info.settings.map((s) => [s.name, Number($(s.name).value)])),
          two_pass: $("two_pass").checked};
}

function resetSettings() {
  for (const s of state.info.settings) $(s.name).value = s.value;
  $("two_pass").checked = false;
  showValues();
  requestPreview();
}

// ---------------------------------------------------------------------------------------------------- preview

// One preview request at a time; moves made meanwhile collapse into the latest, so the page never falls behind.
let wanted = false;
let pumping = null;

function requestPreview() {
  wanted = true;
  if (!pumping) pumping = pump().finally(() => { pumping = null; });
  return pumping;
}

async function pump() {
  while (wanted) {
    wanted = false;
    await renderFrame(state.frame, settings());
  }
}

async function inputFrame(clipId, frame) {
  if (state.inputs.has(frame)) return state.inputs.get(frame);
  const image = await bitmap(`/api/clips/${clipId}/frames/${frame}/input.png`);
  state.inputs.set(frame, image);
  if (state.inputs.size > CACHE_FRAMES) {
    const [oldest, old] = state.inputs.entries().next().value;
    state.inputs.delete(oldest);
    old.close();
  }
  return image;
}

async function renderFrame(frame, values) {
  const clip = state.clip;
  if (!clip || frame >= clip.ready) return;
  const started = performance.now();
  const query = new URLSearchParams(values).toString();
  const base = `/api/clips/${clip.id}/frames/${frame}`;
  try {
    const [input, {image: result, response}, mask, dmap] = await Promise.all([
      inputFrame(clip.id, frame),
      picture(`${base}/result.png?${query}`),
      $("show-mask").checked ? bitmap(`${base}/mask.png`) : null,
      $("show-dmap").checked ? bitmap(`${base}/dmap.png`) : null,
    ]);
    if (state.clip !== clip) return;
    state.shown = {frame, input, result, mask: mask && tinted(mask, [255, 0, 220], "mask"),
                   dmap: dmap && tinted(dmap, [255, 140, 0], "map")};
    draw();
    const canvas = $("result");
    Object.assign(canvas.dataset, {frame, query, ...values});
    const change = Number(response.headers.get("X-Vharm-Change"));
    $("preview-status").textContent = `Frame ${frame + 1}: ${describeChange(change, values)} · ` +
      `preview in ${Math.round(performance.now() - started)} ms`;
  } catch (e) {
    showError(e.message);
  }
}

function describeChange(change, values) {
  if (change > 0) return `the result differs from the input by ${change.toFixed(1)} levels (RMS over the mask)`;
  if (values.strength === 0) return "left as it is (strength 0)";
  if (values.full_change > 0) {
    const darker = values.darken_gate > 1 ? `, ${values.darken_gate} times that for a change that darkens` : "";
    return `left as it is: the do-no-harm gate drops changes under ${values.min_change} levels here${darker} ` +
      "(lower it to see what G would do)";
  }
  return "left as it is (G changes nothing here)";
}

function tinted(gray, rgb, kind) {
  // A gray map (0-255) as a colour whose opacity follows the map, so that the frame shows through. kind "mask": a
  // light tint, and the mask's 50 % line opaque (its edge); "map": D's map stretched from its lowest to its highest
  // value in the frame (its raw values span little: about 0.2 on a background, 0.4 on a pasted object).
  const w = gray.width, h = gray.height;
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(gray, 0, 0);
  const pixels = ctx.getImageData(0, 0, w, h);
  const d = pixels.data;
  const values = Uint8Array.from({length: w * h}, (_, i) => d[4 * i]);
  let lo = 0, hi = 255;
  if (kind === "map") {
    lo = values.reduce((a, v) => Math.min(a, v), 255);
    hi = Math.max(lo + 1, values.reduce((a, v) => Math.max(a, v), 0));
  }
  for (let i = 0; i < w * h; i++) {
    const inside = values[i] >= 128;
    const edge = kind === "mask" && ((i % w < w - 1 && (values[i + 1] >= 128) !== inside) ||
                                     (i + w < w * h && (values[i + w] >= 128) !== inside));
    const v = (values[i] - lo) / (hi - lo);
    d[4 * i] = rgb[0]; d[4 * i + 1] = rgb[1]; d[4 * i + 2] = rgb[2];
    d[4 * i + 3] = edge ? 255 : Math.round(255 * (kind === "mask" ? 0.2 : 0.6) * v);
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function draw() {
  const s = state.shown;
  if (!s) return;
  const wipe = document.querySelector("input[name=view]:checked").value === "wipe";
  $("pair").hidden = wipe;
  $("wipe-view").hidden = !wipe;
  const overlays = [s.mask, s.dmap].filter(Boolean);
  if (!wipe) {
    drawLayer("input", s.input, "input-overlay", overlays);
    drawLayer("result", s.result, "result-overlay", overlays);
    return;
  }
  const canvas = $("wipe"), ctx = canvas.getContext("2d");
  const x = Math.round(Number($("wipe-position").value) * canvas.width);
  ctx.drawImage(s.input, 0, 0);
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, 0, canvas.width - x, canvas.height);
  ctx.clip();
  ctx.drawImage(s.result, 0, 0);
  ctx.restore();
  const overlay = $("wipe-overlay").getContext("2d");
  overlay.clearRect(0, 0, canvas.width, canvas.height);
  for (const o of overlays) overlay.drawImage(o, 0, 0);
  overlay.fillStyle = "rgba(255, 255, 255, 0.9)";
  overlay.fillRect(x - 1, 0, 2, canvas.height);
}

function drawLayer(id, image, overlayId, overlays) {
  $(id).getContext("2d").drawImage(image, 0, 0);
  const overlay = $(overlayId).getContext("2d");
  overlay.clearRect(0, 0, image.width, image.height);
  for (const o of overlays) overlay.drawImage(o, 0, 0);
}

// ------------------------------------------------------------------------------------------ scrubbing, playing

function updateFrameLabel() {
  const c = state.clip;
  if (!c) return;
  const total = c.total ?? c.ready;
  $("frame-label").textContent = c.image ? "" : `frame ${state.frame + 1} of ${total} · ${formatTime(state.frame / c.fps)}`;
}

function setFrame(frame) {
  state.frame = frame;
  $("frame").value = frame;
  updateFrameLabel();
  return requestPreview();
}

function stopPlaying() {
  state.playing = false;
  $("play").textContent = "▶";
  $("play").setAttribute("aria-label", "Play");
}

async function play() {
  // At the clip's frame rate, or as fast as the previews come when that is slower.
  if (state.playing) return stopPlaying();
  state.playing = true;
  $("play").textContent = "❚❚";
  $("play").setAttribute("aria-label", "Pause");
  // The last frame there will be: the clip may still be being read.
  const last = () => (state.clip.status === "reading" ? state.clip.total ?? state.clip.ready : state.clip.ready) - 1;
  if (state.frame >= last()) await setFrame(0);
  while (state.playing && state.frame < last()) {
    const started = performance.now();
    if (state.frame + 1 < state.clip.ready) await setFrame(state.frame + 1);
    await sleep(1000 / state.clip.fps - (performance.now() - started));
  }
  stopPlaying();
}

// ----------------------------------------------------------------------------------------------------- export

async function startExport() {
  showError("");
  $("download").hidden = true;
  try {
    const job = await api("POST", `/api/clips/${state.clip.id}/export`, settings());
    state.exportJob = job.id;
    $("cancel-export").hidden = false;
    $("export-button").disabled = true;
    await followExport(job.id);
  } catch (e) {
    showError(e.message);
  } finally {
    state.exportJob = null;
    $("cancel-export").hidden = true;
    $("export-button").disabled = false;
  }
}

async function followExport(jobId) {
  const bar = $("export-progress"), status = $("export-status");
  bar.hidden = false;
  for (;;) {
    const job = await api("GET", `/api/jobs/${jobId}`);
    bar.value = job.total ? job.done / job.total : 0;
    if (job.status === "queued") {
      status.textContent = `Waiting for ${job.ahead} job(s) to finish…`;
    } else if (job.status === "running") {
      const left = job.fps && job.total ? ` · about ${Math.ceil((job.total - job.done) / job.fps)} s left` : "";
      status.textContent = `Exporting: ${job.done}${job.total ? ` of ${job.total}` : ""} frames` +
        (job.fps ? ` · ${job.fps} fps${left}` : "");
    } else {
      bar.hidden = job.status !== "done";
      if (job.status === "done") {
        status.textContent = `Done: ${job.done} frames in ${job.seconds.toFixed(1)} s` +
          (job.warnings.length ? ` (${job.warnings.join("; ")})` : "");
        const link = $("download");
        link.href = `/api/jobs/${job.id}/download`;
        link.download = job.download;
        link.textContent = `Download ${job.download}`;
        link.hidden = false;
      } else if (job.status === "failed") {
        status.textContent = "Export failed";
        showError(job.error);
      } else {
        status.textContent = "Export cancelled";
      }
      return;
    }
    await sleep(POLL_MS);
  }
}

async function cancelExport() {
  if (state.exportJob) await api("DELETE", `/api/jobs/${state.exportJob}`).catch((e) => showError(e.message));
}

// -------------------------------------------------------------------------------------------------- wiring up

function wire() {
  for (const radio of document.querySelectorAll("input[name=source]")) {
    radio.addEventListener("change", () => {
      const paste = radio.value === "paste" && radio.checked;
      $("composite-fields").hidden = paste;
      $("paste-fields").hidden = !paste;
    });
  }
  $("mask-mode").addEventListener("change", () => { $("mask").hidden = $("mask-mode").value !== "file"; });
  $("open-button").addEventListener("click", openClip);
  for (const radio of document.querySelectorAll("input[name=view]")) radio.addEventListener("change", draw);
  $("show-mask").addEventListener("change", requestPreview);
  $("show-dmap").addEventListener("change", requestPreview);
  $("frame").addEventListener("input", () => setFrame(Number($("frame").value)));
  $("play").addEventListener("click", play);
  $("wipe-position").addEventListener("input", draw);
  const wipe = $("wipe");
  const drag = (e) => {
    if (e.buttons !== 1) return;
    const box = wipe.getBoundingClientRect();
    $("wipe-position").value = Math.min(1, Math.max(0, (e.clientX - box.left) / box.width));
    draw();
  };
  wipe.addEventListener("pointerdown", drag);
  wipe.addEventListener("pointermove", drag);
  $("reset").addEventListener("click", resetSettings);
  $("two_pass").addEventListener("change", requestPreview);
  $("export-button").addEventListener("click", startExport);
  $("cancel-export").addEventListener("click", cancelExport);
  document.addEventListener("keydown", (e) => {
    if (!state.clip || e.target.tagName === "INPUT" && e.target.type !== "range" || e.target.tagName === "SELECT") return;
    if (e.key === " ") { e.preventDefault(); play(); }
    if (e.key === "ArrowRight" && e.target.id !== "frame") setFrame(Math.min(state.frame + 1, state.clip.ready - 1));
    if (e.key === "ArrowLeft" && e.target.id !== "frame") setFrame(Math.max(state.frame - 1, 0));
  });
}

async function main() {
  try {
    state.info = await api("GET", "/api/info");
  } catch (e) {
    showError(`vharm serve does not answer: ${e.message}`);
    return;
  }
  $("about").textContent = `vharm ${state.info.version} · weights ${state.info.weights} · ` +
    `uploads up to ${state.info.max_upload_text} · everything stays on this machine`;
  if (!state.info.discriminator) {
    document.querySelector("#mask-mode option[value=none]").disabled = true;
    $("show-dmap").title = "these weights have no discriminator";
  }
  buildSliders();
  wire();
  document.body.dataset.ready = "true";
}

main();

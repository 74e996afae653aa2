"use strict";
// leyolo serve page: pick or drop an image (or use the webcam), POST it to v1/detect, draw the boxes.
// Boxes come in original-image pixels; the canvas is sized to the shown size (times the device pixel
// ratio) and every box is scaled by canvas width / image width, so they line up at any size.
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const video = $("video");
  const grab = document.createElement("canvas"); // webcam frames are encoded from here
  const state = { source: null, blob: null, detections: [], webcam: null };

  const color = (c) => `hsl(${Math.round((c * 137.508) % 360)} 85% 45%)`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setConf(value) {
    $("conf").value = value;
    $("conf-value").textContent = Number(value).toFixed(2);
  }

  async function loadInfo() {
    try {
      const info = await (await fetch("v1/info")).json();
      $("model").textContent = `${info.model} · ${info.backend || "loading"} · imgsz ${info.imgsz} · ` +
        `${info.classes.length} classes · leyolo ${info.version}`;
      setConf(info.defaults.conf);
    } catch (err) {
      $("model").textContent = "server not reachable";
    }
  }

  async function detect(blob) {
    const form = new FormData();
    form.append("image", blob, blob.name || "frame.jpg");
    form.append("conf", $("conf").value);
    const start = performance.now();
    const response = await fetch("v1/detect", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    body.roundTrip = performance.now() - start;
    return body;
  }

  function draw() {
    const src = state.source;
    if (!src) return;
    const shownW = Math.max(1, Math.min(canvas.parentElement.clientWidth, src.width));
    const shownH = Math.max(1, Math.round((shownW * src.height) / src.width));
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${shownW}px`;
    canvas.style.height = `${shownH}px`;
    canvas.width = Math.round(shownW * dpr);
    canvas.height = Math.round(shownH * dpr);
    const scale = canvas.width / src.width; // original pixels -> canvas pixels
    ctx.drawImage(src, 0, 0, canvas.width, canvas.height);
    ctx.lineWidth = Math.max(2, Math.round(2 * dpr));
    ctx.font = `${Math.round(13 * dpr)}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const d of state.detections) {
      const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
      const label = `${d.class_name} ${d.score.toFixed(2)}`;
      const th = Math.round(17 * dpr);
      const tw = ctx.measureText(label).width + 6 * dpr;
      const ty = y1 - th >= 0 ? y1 - th : y1;
      ctx.strokeStyle = ctx.fillStyle = color(d.class_id);
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillRect(x1, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, x1 + 3 * dpr, ty + 2 * dpr);
    }
    canvas.dataset.boxes = String(state.detections.length);
  }

  function show(result) {
    const n = result.detections.length;
    const t = result.time_ms;
    state.detections = result.detections;
    draw();
    $("status").classList.remove("error");
    $("status").textContent = `${n} detection${n === 1 ? "" : "s"} · ${result.image.width}×${result.image.height} px`;
    $("timing").textContent = `decode ${t.decode.toFixed(1)} ms · queue ${t.queue.toFixed(1)} ms · ` +
      `infer ${t.infer.toFixed(1)} ms (batch of ${result.batch_size}) · post ${t.post.toFixed(1)} ms · ` +
      `round trip ${result.roundTrip.toFixed(0)} ms`;
    const items = result.detections.map((d) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = color(d.class_id);
      li.append(swatch, `${d.class_name} ${d.score.toFixed(2)}`);
      return li;
    });
    $("detections").replaceChildren(...items);
    document.body.dataset.state = "done";
  }

  function fail(message) {
    $("status").textContent = message;
    $("status").classList.add("error");
    $("timing").textContent = "";
    document.body.dataset.state = "error";
  }

  async function runOn(blob) {
    document.body.dataset.state = "busy";
    state.blob = blob;
    state.detections = [];
    try {
      state.source = await createImageBitmap(blob); // EXIF orientation applied, as on the server
    } catch (err) {
      state.source = null; // the server says what is wrong with it
    }
    draw();
    try {
      show(await detect(blob));
    } catch (err) {
      fail(err.message);
    }
  }

  async function webcamLoop() {
    while (state.webcam) {
      grab.width = video.videoWidth;
      grab.height = video.videoHeight;
      if (!grab.width) {
        await sleep(100);
        continue;
      }
      grab.getContext("2d").drawImage(video, 0, 0);
      const frame = await createImageBitmap(grab);
      const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.85));
      try {
        const result = await detect(blob);
        state.source = frame;
        show(result);
      } catch (err) {
        fail(err.message);
        await sleep(500);
      }
    }
  }

  async function toggleWebcam() {
    const button = $("webcam");
    if (state.webcam) {
      state.webcam.getTracks().forEach((track) => track.stop());
      state.webcam = null;
      button.textContent = "Use webcam";
      button.classList.remove("on");
      return;
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      fail("the webcam needs a secure page: https, or this page opened as localhost");
      return;
    }
    try {
      state.webcam = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      fail(`webcam: ${err.message}`);
      return;
    }
    video.srcObject = state.webcam;
    await video.play();
    button.textContent = "Stop webcam";
    button.classList.add("on");
    webcamLoop();
  }

  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && runOn(e.target.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) runOn(file);
  });
  $("conf").addEventListener("input", (e) => setConf(e.target.value));
  $("conf").addEventListener("change", () => state.blob && !state.webcam && runOn(state.blob));
  $("webcam").addEventListener("click", toggleWebcam);
  window.addEventListener("resize", draw);
  loadInfo();
})();

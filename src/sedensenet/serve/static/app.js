// The sedensenet page: upload images to this server's /v1 API and show the answers. No other origin is used.
"use strict";

const TOP_K = 5;
const PARALLEL = 4;
const state = { key: sessionStorage.getItem("sedensenet-api-key") || "", rows: [], card: null };
const $ = (selector, root = document) => root.querySelector(selector);

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (response.status === 401) { $("#auth").hidden = false; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
    const error = new Error(detail);
    error.status = response.status;
    error.file = body && body.file;
    throw error;
  }
  return body;
}

// Python's repr(round(x, 6)), so the CSV matches `sedensenet predict --output` character for character.
function pyFloat(x) {
  const r = Number(Number(x).toFixed(6));
  if (Number.isInteger(r)) return r.toFixed(1);
  if (Math.abs(r) < 1e-4) {
    const [mantissa, exponent] = r.toExponential().split("e");
    const sign = exponent.startsWith("-") ? "-" : "+";
    return `${mantissa}e${sign}${exponent.replace(/^[+-]/, "").padStart(2, "0")}`;
  }
  return String(r);
}

function csvCell(value) {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

const isMulti = () => Boolean(state.card && state.card.task === "multi");

// predict's columns: a multi-label model's are path, labels, one probability column per label, error.
function csvColumns() {
  if (isMulti()) return ["path", "labels", ...state.card.classes, "error"];
  return ["path", "label", "probability", "top_k", "error"];
}

function downloadCsv() {
  const columns = csvColumns();
  const lines = [columns.join(",")];
  for (const row of state.rows) {
    lines.push(columns.map((c) => row[c] ?? "").map(csvCell).join(","));
  }
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "predictions.csv";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

const FIGURES = [
  ["accuracy", "accuracy"], ["balanced_accuracy", "balanced accuracy"], ["roc_auc", "ROC-AUC"],
  ["sensitivity", "sensitivity"], ["specificity", "specificity"], ["ppv", "PPV"], ["npv", "NPV"],
];
const num = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));
const interval = (e) => (e && e.interval ? `[${num(e.interval[0])}, ${num(e.interval[1])}]` : "");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function decisionText(ev, classes) {
  const rule = ev.chosen_on ? `${ev.rule}, chosen on ${ev.chosen_on}` : ev.rule;
  if (ev.threshold === null) return `the most probable class (${rule})`;
  const negative = classes.find((c) => c !== ev.positive);
  return `${ev.positive} when its probability ≥ ${num(ev.threshold)}, else ${negative} (threshold ${rule})`;
}

function calibrationText(ev, headline) {
  const ece = headline.ece === null ? "" : headline.ece_before !== null
    ? `; ECE ${num(headline.ece_before)} → ${num(headline.ece)} on ${headline.split}`
    : `; ECE ${num(headline.ece)} on ${headline.split}`;
  if (ev.temperature === null) return `none${ece}`;
  return `temperature ${num(ev.temperature)} (fitted on ${ev.chosen_on || "validation"})${ece}`;
}

// One split's figures under its label: what they may be trusted for sits beside the numbers.
function splitFigures(split, ev, classes) {
  const box = element("section", "split");
  box.dataset.split = split.split;
  const title = element("h3", "split-label", split.label);
  title.append(element("span", "images", ` · ${split.images} images`));
  const table = element("table", "figures");
  for (const [key, name] of FIGURES) {
    const figure = split[key];
    if (!figure) continue;
    const row = element("tr");
    row.dataset.metric = key;
    const about = { sensitivity: ev.positive, specificity: classes.find((c) => c !== ev.positive) }[key];
    const which = about ? ` (${about})` : "";
    row.append(element("th", "", name + which), element("td", "value", num(figure.value)),
      element("td", "interval", interval(figure)));
    table.append(row);
  }
  box.append(title, table);
  return box;
}

function showFigures(card) {
  const box = $("#card-figures");
  box.replaceChildren();
  const ev = card.evaluation;
  if (!ev) {
    const m = card.epoch_metrics || {};
    const keys = card.task === "multi" ? ["val_auc", "val_mAP", "val_loss"] : ["val_accuracy", "val_loss"];
    const shown = keys.filter((k) => k in m).map((k) => `${k} ${num(m[k])}`).join(", ");
    const none = card.evaluation_note || "no evaluation stored in this checkpoint";
    box.append(element("p", "note", shown
      ? `${shown} at epoch ${card.epoch}: validation (used for selection: optimistic); ` +
        (card.evaluation_note ? none : "no final evaluation stored")
      : none));
    $("#headline").hidden = true;
    return;
  }
  for (const split of ev.splits) box.append(splitFigures(split, ev, card.classes));
  const notes = element("dl", "decision");
  const level = ev.confidence ? `${Math.round(ev.confidence * 100)}%, stratified bootstrap, ` +
    `${ev.resamples} resamples` : "no intervals computed";
  for (const [name, value] of [["decision", decisionText(ev, card.classes)],
    ["calibration", calibrationText(ev, ev.splits[0])], ["intervals", level], ["outputs from", ev.inference]]) {
    notes.append(element("dt", "", name), element("dd", name, value));
  }
  box.append(notes);
  const head = ev.splits[0];
  $("#headline").textContent = `accuracy ${num(head.accuracy.value)} ${interval(head.accuracy)} · ${head.label}`;
  $("#headline").hidden = false;
}

function showCard(card) {
  state.card = card;
  const data = card.data;
  const sizes = [["training", data.train_images], ["validation", data.val_images], ["test", data.test_images]]
    .filter(([, n]) => n !== null).map(([name, n]) => `${n} ${name}`).join(", ");
  const multi = card.task === "multi";
  const fields = [
    multi ? ["labels", card.labels.map(labelText).join(", ")] : ["classes", card.classes.join(", ")],
    ...(multi ? [["decision", labelRuleText(card.label_rule)]] : []),
    ["preset", card.preset || "–"],
    ["image size", `${card.image_size} px, ${card.in_chans} channel(s)`],
    ["parameters", card.parameters.toLocaleString("en")],
    ["data", `${data.name ?? "–"}${sizes ? ` (${sizes} images)` : ""}`],
    ["epoch", card.epoch ?? "–"],
    ["trained", card.trained_at],
    ["backend", card.backend],
    ["model id", card.id],
    ["limits", `${card.limits.max_upload_mb} MB per upload, ${card.limits.max_files} files, ` +
      `${(card.limits.max_pixels / 1e6).toFixed(0)} Mpx per image`],
  ];
  const list = $("#card-fields");
  list.replaceChildren();
  for (const [name, value] of fields) {
    list.append(element("dt", "", name), element("dd", "", value));
  }
  showFigures(card);
  const what = multi ? "labels" : "classes";
  $("#status").textContent = `${card.preset || "model"} · ${card.classes.length} ${what} · ready`;
}

function labelText(label) {
  const temperature = label.temperature === null ? "" : `, temperature ${num(label.temperature)}`;
  return `${label.name} (≥ ${num(label.threshold)}${temperature})`;
}

function labelRuleText(rule) {
  const how = [rule.threshold, rule.chosen_on ? `chosen on ${rule.chosen_on}` : null].filter(Boolean).join(", ");
  return `each label present when its probability ≥ its own threshold${how ? ` (${how})` : ""}`;
}

async function loadCard() {
  try {
    showCard(await api("/v1/model"));
    $("#auth").hidden = true;
  } catch (error) {
    $("#status").textContent = error.status === 401 ? "An API key is needed." : `Not ready: ${error.message}`;
    if (error.status === 503) setTimeout(loadCard, 1000);
  }
}

function newResult(file) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".name", node).textContent = file.name;
  $(".body", node).hidden = true;
  $("#results").append(node);
  return node;
}

function showRefusal(node, file, error) {
  node.classList.add("refused");
  $(".body", node).hidden = true;
  const message = $(".error", node);
  message.hidden = false;
  message.textContent = `Refused: ${error.message}`;
  const prefix = `${file.name}: `;
  const reason = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message;
  state.rows.push({ path: file.name, label: "", probability: "", top_k: "", labels: "", error: reason });
}

function percent(p) {
  return `${(p * 100).toFixed(2)}%`;
}

// A multi-label answer: the decided labels as chips, then every label's bar with its threshold marked.
function showLabels(node, file, prediction) {
  $(".body", node).hidden = false;
  const chips = element("ul", "chips");
  chips.setAttribute("aria-label", "labels present");
  for (const name of prediction.labels) chips.append(element("li", "chip", name));
  if (!prediction.labels.length) chips.append(element("li", "no-labels", "no label present"));
  const bars = element("ol", "label-bars");
  for (const score of prediction.scores) {
    const li = element("li", score.present ? "present" : "absent");
    Object.assign(li.dataset, { label: score.label, probability: String(score.probability),
      threshold: String(score.threshold), present: String(score.present) });
    const track = element("span", "track");
    const fill = element("span", "fill");
    fill.style.width = percent(score.probability);
    const tick = element("span", "threshold");
    tick.style.left = percent(score.threshold);
    tick.title = `threshold ${num(score.threshold)}`;
    track.append(fill, tick);
    li.title = `${score.label}: ${percent(score.probability)}, threshold ${percent(score.threshold)}, ` +
      (score.present ? "present" : "absent");
    li.append(element("span", "label", score.label), track, element("span", "prob", percent(score.probability)));
    bars.append(li);
  }
  $(".topk", node).replaceWith(chips, bars);
  node.dataset.labels = JSON.stringify(prediction.labels);
  const row = { path: file.name, labels: prediction.labels.join("|"), error: "" };
  for (const score of prediction.scores) row[score.label] = pyFloat(score.probability);
  state.rows.push(row);
  addTargetControl(node, file, prediction);
}

// The Grad-CAM control of a multi-label answer: which label's heat-map to show.
function addTargetControl(node, file, prediction) {
  const control = element("label", "target-control", "Grad-CAM for ");
  const select = element("select", "target");
  for (const score of prediction.scores) {
    const option = element("option", "", `${score.label}${score.present ? " ✓" : ""}`);
    option.value = score.label;
    select.append(option);
  }
  control.append(select);
  $(".visual", node).append(control);
  select.addEventListener("change", () => explain(node, file, select.value));
}

function showPrediction(node, file, prediction) {
  if (prediction.scores) {
    showLabels(node, file, prediction);
    return;
  }
  $(".body", node).hidden = false;
  const list = $(".topk", node);
  for (const item of prediction.top_k) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = item.class;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(item.probability * 100).toFixed(2)}%`;
    track.append(fill);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(item.probability * 100).toFixed(2)}%`;
    prob.dataset.probability = String(item.probability);
    li.append(label, track, prob);
    list.append(li);
  }
  node.dataset.label = prediction.label;
  node.dataset.probability = String(prediction.probability);
  state.rows.push({
    path: file.name, label: prediction.label, probability: pyFloat(prediction.probability),
    top_k: prediction.top_k.map((t) => `${t.class}:${pyFloat(t.probability)}`).join(";"), error: "",
  });
}

function drawGates(canvas, weights) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * ratio || 320;
  canvas.height = 80 * ratio;
  const ctx = canvas.getContext("2d");
  const w = canvas.width / weights.length;
  ctx.fillStyle = "#3b82c4";
  weights.forEach((g, i) => {
    const h = Math.max(1, g * canvas.height);
    ctx.fillRect(i * w, canvas.height - h, Math.max(w, 1), h);
  });
}

function showExplanation(node, explanation) {
  if (node.dataset.wanted && node.dataset.wanted !== explanation.target) return;  // a later choice is on its way
  $(".image", node).src = `data:image/png;base64,${explanation.image_png}`;
  const heat = $(".heatmap", node);
  heat.src = `data:image/png;base64,${explanation.heatmap_png}`;
  applyHeatmapSettings(heat);
  $(".caption", node).textContent = `Grad-CAM for "${explanation.target}": where the model looked`;
  node.dataset.target = explanation.target;
  const select = $(".target", node);
  if (select) select.value = explanation.target;
  if (explanation.se_weights) {
    $(".se", node).hidden = false;
    $(".se-layer", node).textContent = `(${explanation.se_layer}, ${explanation.se_weights.length} channels)`;
    drawGates($(".se-canvas", node), explanation.se_weights);
  }
}

function applyHeatmapSettings(img) {
  img.hidden = !$("#show-heatmap").checked;
  img.style.opacity = String(Number($("#opacity").value) / 100);
}

function form(file) {
  const data = new FormData();
  data.append("file", file, file.name);
  return data;
}

async function classify(file) {
  const node = newResult(file);
  let prediction;
  try {
    const answer = await api(`/v1/predict?top_k=${TOP_K}`, { method: "POST", body: form(file) });
    prediction = answer.predictions[0];
    showPrediction(node, file, prediction);
  } catch (error) {
    showRefusal(node, file, error);
    return;
  } finally {
    updateCounts();
  }
  // Multi-label: the heat-map of the most probable label present (the most probable label when none is).
  await explain(node, file, prediction.labels && prediction.labels.length ? prediction.labels[0] : null);
}

async function explain(node, file, target) {
  const query = target === null ? "" : `?target=${encodeURIComponent(target)}`;
  if (target !== null) node.dataset.wanted = target;
  try {
    showExplanation(node, await api(`/v1/explain${query}`, { method: "POST", body: form(file) }));
  } catch (error) {
    $(".caption", node).textContent = `No heat-map: ${error.message}`;
  }
}

function updateCounts() {
  const refused = state.rows.filter((r) => r.error).length;
  $("#counts").textContent = `${state.rows.length - refused} classified, ${refused} refused`;
  $("#toolbar").hidden = state.rows.length === 0;
}

async function handleFiles(files) {
  const queue = Array.from(files);
  const workers = Array.from({ length: Math.min(PARALLEL, queue.length) }, async () => {
    while (queue.length) await classify(queue.shift());
  });
  await Promise.all(workers);
  $("#status").dataset.done = String(Number($("#status").dataset.done || 0) + files.length);
}

function setUp() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handleFiles(e.dataTransfer.files);
  });
  $("#file-input").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("#show-heatmap").addEventListener("change", () => document.querySelectorAll(".heatmap").forEach(applyHeatmapSettings));
  $("#opacity").addEventListener("input", () => document.querySelectorAll(".heatmap").forEach(applyHeatmapSettings));
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", () => { $("#results").replaceChildren(); state.rows = []; updateCounts(); });
  $("#api-key-save").addEventListener("click", () => {
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("sedensenet-api-key", state.key);
    loadCard();
  });
  loadCard();
}

document.addEventListener("DOMContentLoaded", setUp);

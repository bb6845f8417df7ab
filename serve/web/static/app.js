// The gateway's web page: calls the JSON API with fetch; no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("dyntta-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("dyntta-api-key", keyInput.value));

function headers() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

// With an API key every /v1 route needs the header, which a plain link cannot send: fetch, then open.
async function openWithKey(event) {
  if (!keyInput.value) return;
  event.preventDefault();
  const response = await fetch(event.currentTarget.href, { headers: headers() });
  if (!response.ok) { alert(await errorText(response)); return; }
  window.open(URL.createObjectURL(await response.blob()), "_blank", "noopener");
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error ? body.error.message : JSON.stringify(body)}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function fillResults(table, result) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const p of result.top_k) {
    const row = document.createElement("tr");
    const label = document.createElement("td");
    label.textContent = p.label;
    const prob = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(p.probability * 120)}px`;
    prob.append(bar, ` ${(100 * p.probability).toFixed(1)} %`);
    row.append(label, prob);
    body.append(row);
  }
}

async function classify(file, enhance, topK) {
  const form = new FormData();
  form.append("files", file, file.name);
  const url = `/v1/classify?enhance=${enhance}&top_k=${topK}`;
  const response = await fetch(url, { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function enhance(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("/v1/enhance", { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw new Error(await errorText(response));
  return response.blob();
}

$("classify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const topK = Math.max(1, Number($("top-k").value) || 5);
  const status = $("status");
  status.className = "";
  status.textContent = "classifying…";
  $("original-image").src = URL.createObjectURL(file);
  try {
    const [plain, enhanced, image] = await Promise.all([
      classify(file, false, topK), classify(file, true, topK), enhance(file)]);
    fillResults($("plain-results"), plain.results[0]);
    fillResults($("enhanced-results"), enhanced.results[0]);
    $("plain-model").textContent = `${plain.model.name} v${plain.model.version}`;
    $("enhanced-model").textContent = `${enhanced.model.name} v${enhanced.model.version}`;
    $("enhanced-image").src = URL.createObjectURL(image);
    status.textContent = `done: ${plain.timing.total_ms.toFixed(1)} ms without, `
      + `${enhanced.timing.total_ms.toFixed(1)} ms with the enhancer (${plain.input_size} px input)`;
    status.dataset.done = "1";
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  }
});

// --- try a corruption ---------------------------------------------------------------------------------

const OPS_SHOWN = 5;

// The choices come from the gateway (dyntta.contract's names); asking also starts its corruption worker.
async function loadPlaygroundOptions() {
  const response = await fetch("/v1/playground", { headers: headers() });
  if (!response.ok) return;
  const { corruptions, severities } = await response.json();
  const select = $("pg-corruption");
  select.replaceChildren(select.options[0]);
  for (const [group, names] of Object.entries(corruptions)) {
    const optgroup = document.createElement("optgroup");
    optgroup.label = group;
    for (const name of names) optgroup.append(new Option(name.replaceAll("_", " "), name));
    select.append(optgroup);
  }
  select.value = corruptions.noise ? corruptions.noise[0] : "none";
  const severity = $("pg-severity");
  severity.replaceChildren(...severities.map((s) => new Option(String(s), String(s))));
  severity.value = String(severities[Math.floor(severities.length / 2)]);
}

function fillOps(ops) {
  const body = $("pg-ops").querySelector("tbody");
  body.replaceChildren();
  $("pg-ops-note").textContent = ops.available ? "" : ops.message || "the enhancer does not report its operations";
  for (const op of ops.weights.slice(0, OPS_SHOWN)) {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = op.name;
    const weight = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(op.weight * 120)}px`;
    weight.append(bar, ` ${(100 * op.weight).toFixed(1)} %`);
    row.append(name, weight);
    body.append(row);
  }
}

$("pg-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("pg-file").files[0];
  if (!file) return;
  const status = $("pg-status");
  status.className = "";
  status.dataset.done = "";
  status.textContent = "corrupting and classifying…";
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("corruption", $("pg-corruption").value);
  form.append("severity", $("pg-severity").value);
  form.append("seed", $("pg-seed").value || "0");
  const topK = Math.max(1, Number($("pg-top-k").value) || 3);
  try {
    const response = await fetch(`/v1/playground?top_k=${topK}`, { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    if (result.images.clean) $("pg-clean").src = result.images.clean;
    else $("pg-clean").removeAttribute("src");  // the upload came already corrupted: no clean image
    $("pg-corrupted").src = result.images.corrupted;
    $("pg-corrupted-caption").textContent = result.corruption
      ? `${result.corruption.replaceAll("_", " ")}, severity ${result.severity}` : "as uploaded";
    $("pg-enhanced").src = result.images.enhanced;
    fillResults($("pg-plain-results"), result.recognizer);
    fillResults($("pg-enhanced-results"), result.enhanced);
    $("pg-plain-model").textContent = `${result.recognizer.model.name} v${result.recognizer.model.version}`;
    $("pg-enhanced-model").textContent = `${result.enhancer.name} v${result.enhancer.version} → `
      + `${result.enhanced.model.name} v${result.enhanced.model.version}`;
    fillOps(result.ops);
    status.textContent = `done in ${result.timing.total_ms.toFixed(1)} ms (corruption `
      + `${result.timing.corrupt_ms.toFixed(1)} ms, inference ${result.timing.inference_ms.toFixed(1)} ms; `
      + `${result.input_size} px input)`;
    status.dataset.done = "1";
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  }
});

keyInput.addEventListener("change", loadPlaygroundOptions);

// --- robustness reports -------------------------------------------------------------------------------

let pollTimer = null;

async function refreshJobs() {
  const response = await fetch("/v1/robustness?limit=50");
  if (!response.ok) return;
  const { jobs } = await response.json();
  const body = $("jobs-table").querySelector("tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const cells = [job.created.replace("T", " ").replace("+00:00", " UTC"), job.source, job.num_images,
      job.status + (job.error ? ` (${job.error})` : ""), `${Math.round(job.progress * 100)} %`];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      row.append(cell);
    }
    const link = document.createElement("td");
    if (job.report_html_url) {
      const a = document.createElement("a");
      a.href = job.report_html_url;
      a.textContent = "HTML";
      a.className = "report-link";
      const json = document.createElement("a");
      json.href = job.report_url;
      json.textContent = "JSON";
      link.append(a, " · ", json);
      for (const anchor of [a, json]) anchor.addEventListener("click", openWithKey);
    }
    row.append(link);
    body.append(row);
  }
  const active = jobs.some((j) => j.status === "queued" || j.status === "running");
  clearTimeout(pollTimer);
  if (active) pollTimer = setTimeout(refreshJobs, 1000);
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  const zip = $("job-file").files[0];
  if (zip) form.append("file", zip, zip.name);
  form.append("corruptions", $("job-corruptions").value);
  form.append("severities", $("job-severities").value);
  form.append("num_images", $("job-images").value);
  const status = $("job-status");
  status.className = "";
  const response = await fetch("/v1/robustness", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    status.className = "error";
    status.textContent = await errorText(response);
    return;
  }
  const job = await response.json();
  status.textContent = `job ${job.id} ${job.status}`;
  refreshJobs();
});

async function checkReady() {
  const response = await fetch("/readyz");
  const body = await response.json();
  $("ready").textContent = body.ready ? `inference server ready (${body.triton_url})`
    : `inference server not ready: ${body.message}`;
  $("ready").className = body.ready ? "muted" : "error";
}

checkReady();
loadPlaygroundOptions();
refreshJobs();

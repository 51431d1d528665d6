// The node's web page: plain DOM, no third-party code. Every request goes to this
// node (same origin) with the node's secret in the X-Freehold-Token header. The secret
// comes in the link `freehold web` prints, in its fragment (never sent to a server),
// and is kept in this tab's session storage, which no other origin (port) can read.
"use strict";

const $ = (id) => document.getElementById(id);

function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem("freehold-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  return sessionStorage.getItem("freehold-token");
}

const token = takeToken();

function size(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return `${m} min ${s % 60} s`;
}

function when(timestamp) {
  if (!timestamp) return "";
  return new Date(timestamp * 1000).toLocaleString();
}

async function api(path, options) {
  const settings = Object.assign({ credentials: "omit" }, options || {});
  settings.headers = Object.assign({ "X-Freehold-Token": token || "" }, settings.headers || {});
  const response = await fetch(path, settings);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (error) {
    body = { error: text };
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function refreshStatus() {
  try {
    const status = await api("/api/status");
    $("node-id").textContent = status.node_id;
    $("version").textContent = status.version;
    $("uptime").textContent = duration(status.uptime);
    $("listen").textContent = status.listen;
    $("contacts").textContent = `${status.contacts} (${status.connections} connected)`;
    $("donated").textContent = size(status.donated_bytes);
    $("used").textContent = `${size(status.used_bytes)} in ${status.chunks} chunks`;
    $("free").textContent = size(status.free_bytes);
    $("repairs").textContent =
      `${status.segments_watched} segments watched, ${status.segments_repaired} repaired, ` +
      `${size(status.repair_bytes_moved)} moved`;
  } catch (error) {
    $("node-id").textContent = "the node did not answer: " + error.message;
  }
}

function copyButton(text, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "copied";
    } catch (error) {
      window.prompt("Copy it from here:", text);
    }
  });
  return button;
}

async function refreshFiles() {
  const body = await api("/api/files");
  const rows = $("files").querySelector("tbody");
  rows.replaceChildren();
  $("no-files").hidden = body.files.length > 0;
  for (const file of body.files) {
    const row = rows.insertRow();
    row.className = "file";
    row.insertCell().textContent = file.name || "(no name)";
    row.insertCell().textContent = size(file.size);
    row.insertCell().textContent = when(file.put_at);
    row.insertCell().textContent = file.pending ? "placing…" : when(file.lease_expires);
    const caps = row.insertCell();
    const read = document.createElement("code");
    read.className = "read-capability";
    read.textContent = file.capability;
    caps.append(read, copyButton(file.capability, "copy read"),
      copyButton(file.verify, "copy verify"));
    const actions = row.insertCell();
    const link = document.createElement("button");
    link.type = "button";
    link.className = "download";
    link.textContent = "download";
    link.addEventListener("click", () => startDownload(file.capability, file.name));
    const check = document.createElement("button");
    check.type = "button";
    check.textContent = "check";
    check.addEventListener("click", () => runCheck(file.capability));
    actions.append(link, check);
  }
}

function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const bar = $("upload-progress");
  const result = $("upload-result");
  bar.hidden = false;
  bar.value = 0;
  result.textContent = `uploading ${file.name} (${size(file.size)})…`;
  const request = new XMLHttpRequest();
  request.open("POST", "/api/put?" + new URLSearchParams({ name: file.name }));
  request.setRequestHeader("X-Freehold-Token", token || "");
  request.upload.addEventListener("progress", (progress) => {
    if (progress.lengthComputable) bar.value = progress.loaded / progress.total;
  });
  request.addEventListener("load", () => {
    let body = {};
    try {
      body = JSON.parse(request.responseText);
    } catch (error) {
      body = { error: request.responseText };
    }
    if (request.status === 200) {
      bar.value = 1;
      result.replaceChildren("Stored. Read capability: ");
      const code = document.createElement("code");
      code.id = "uploaded-capability";
      code.textContent = body.capability;
      result.append(code, " ", copyButton(body.capability, "copy"));
      refreshFiles();
      refreshStatus();
    } else {
      result.textContent = "upload failed: " + (body.error || request.statusText);
    }
  });
  request.addEventListener("error", () => {
    result.textContent = "upload failed: the node did not answer";
  });
  request.send(file);
}

async function runCheck(capability) {
  const result = $("check-result");
  result.textContent = "checking (every holder is audited)…";
  try {
    const report = await api("/api/check", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ capability }),
    });
    if (!report.found) {
      result.textContent = "no manifest found: this capability names nothing stored";
      return;
    }
    const state = report.healthy ? "healthy" : report.readable ? "degraded but readable" : "unreadable";
    const worst = Math.min(...report.segments.map((segment) => segment.live));
    result.textContent =
      `${state}: ${report.segments.length} segment(s) audited, at least ${worst} of ` +
      `${report.n} chunks live each (${report.k} needed)`;
    result.dataset.state = state;
  } catch (error) {
    result.textContent = "check failed: " + error.message;
  }
}

async function startDownload(capability, name) {
  // A link cannot carry the secret's header: ask for a one-time ticket, then follow it.
  try {
    const ticket = await api("/api/ticket", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ capability, name: name || "download" }),
    });
    window.location.href = ticket.url;
  } catch (error) {
    $("check-result").textContent = "download failed: " + error.message;
  }
}

function download(event) {
  event.preventDefault();
  const capability = $("capability").value.trim();
  if (!capability.includes("#")) {
    $("check-result").textContent = "a verify capability cannot read: it has no key";
    return;
  }
  startDownload(capability, "download");
}

document.addEventListener("DOMContentLoaded", () => {
  if (!token) {
    $("node-id").textContent = "open the link `freehold web` prints to use this page";
    return;
  }
  $("upload-form").addEventListener("submit", upload);
  $("capability-form").addEventListener("submit", download);
  $("check-button").addEventListener("click", () => runCheck($("capability").value.trim()));
  refreshStatus();
  refreshFiles();
  setInterval(refreshStatus, 10000);
});

// The admin page: cards from /api/v1/instances, kept live by /api/v1/events. No build step, no CDN.
"use strict";
const cards = document.getElementById("cards");
const template = document.getElementById("card");
const showAll = document.getElementById("all");
const live = document.getElementById("live");

function size(bytes) {
  if (bytes == null) return "-";
  for (const [unit, scale] of [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]]) {
    if (bytes >= scale) return (bytes / scale).toFixed(bytes / scale < 10 ? 1 : 0) + unit;
  }
  return Math.round(bytes) + "B";
}

function uptime(started) {
  if (!started) return "-";
  let s = Math.max(0, Math.round(Date.now() / 1000 - started));
  for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= n) return Math.floor(s / n) + unit;
  }
  return s + "s";
}

function fill(card, inst) {
  const root = (inst.live || [])[0] || {};
  const cost = inst.telemetry || {};
  card.dataset.id = inst.id;
  card.querySelector(".name").textContent = inst.name;
  card.querySelector(".badge").textContent = inst.resource_profile === "normal" ? "" : inst.resource_profile;
  card.querySelector(".status").textContent = inst.status + (inst.exit_status != null ? " " + inst.exit_status : "") + " · " + inst.mode + " · " + inst.id;
  const io = root.ionice_class == null ? "-" : root.ionice_class === "best-effort" ? "be/" + root.ionice_level : root.ionice_class;
  card.querySelector(".prio").textContent = [root.nice ?? "-", io, root.autogroup_nice ?? "-"].join(" / ");
  card.querySelector(".cpu").textContent = cost.cpu_percent == null ? "-" : Math.round(cost.cpu_percent) + "%";
  card.querySelector(".mem").textContent = size(cost.rss);
  card.querySelector(".disk").textContent = "read " + size(cost.read_bytes_per_s) + "/s, write " + size(cost.write_bytes_per_s) + "/s";
  card.querySelector(".uptime").textContent = uptime(inst.started_at);
  card.querySelector(".profile").value = inst.resource_profile;
  const running = ["running", "paused", "orphaned"].includes(inst.status);
  for (const control of card.querySelectorAll("button, select")) control.disabled = !running;
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify(body || {}),
  });
  if (!response.ok) alert((await response.json()).error);
  await refresh();
}

async function refresh() {
  const response = await fetch("/api/v1/instances" + (showAll.checked ? "?all=1" : ""), { credentials: "same-origin" });
  if (!response.ok) { live.textContent = "not logged in: open the URL kas serve printed"; return; }
  const instances = await response.json();
  const seen = new Set();
  for (const inst of instances) {
    seen.add(inst.id);
    let card = cards.querySelector(`[data-id="${CSS.escape(inst.id)}"]`);
    if (!card) {
      card = template.content.firstElementChild.cloneNode(true);
      card.querySelector(".stop").addEventListener("click", () => post(`/api/v1/instances/${encodeURIComponent(card.dataset.id)}/stop`));
      card.querySelector(".apply").addEventListener("click", () =>
        post("/api/v1/profile/apply", { profile: card.querySelector(".profile").value, ids: [card.dataset.id] }));
      cards.appendChild(card);
    }
    if (document.activeElement !== card.querySelector(".profile")) fill(card, inst);
  }
  for (const card of [...cards.children]) if (!seen.has(card.dataset.id)) card.remove();
  if (!instances.length) cards.textContent = "";
}

showAll.addEventListener("change", refresh);
const events = new EventSource("/api/v1/events");
events.onopen = () => { live.textContent = "live"; };
events.onerror = () => { live.textContent = "reconnecting…"; };
for (const kind of ["started", "finished", "profile_applied", "telemetry"]) events.addEventListener(kind, refresh);
refresh();

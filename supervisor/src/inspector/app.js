// The genro-asgi request inspector: polls /inspector/data once a second and renders it.
// Every value is set as text (textContent), never as markup: paths and clients come from
// the network.
"use strict";

const REFRESH_MS = 1000;
let token = null;

function readToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("genro-inspector-token", hash.get("token"));
    // Keep the token out of the address bar (and of screenshots and shared links).
    history.replaceState(null, "", location.pathname);
  }
  token = sessionStorage.getItem("genro-inspector-token");
}

function seconds(value) {
  if (value < 1) return (value * 1000).toFixed(0) + " ms";
  if (value < 120) return value.toFixed(1) + " s";
  if (value < 7200) return (value / 60).toFixed(1) + " min";
  return (value / 3600).toFixed(1) + " h";
}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const [value, cellClass] of cells) {
    const td = document.createElement("td");
    td.textContent = value === undefined || value === null ? "" : String(value);
    if (cellClass) td.className = cellClass;
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, columns, emptyText) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = row([[emptyText]], "empty");
    tr.firstChild.colSpan = columns;
    body.appendChild(tr);
    return;
  }
  for (const r of rows) body.appendChild(r);
}

function render(data) {
  const fleet = data.fleet;
  document.getElementById("fleet").textContent =
    fleet.phase + (fleet.reloading ? " (reloading)" : "") + " \u00b7 up " + seconds(fleet.uptime) +
    " \u00b7 " + fleet.workers.length + " worker process(es) \u00b7 " + fleet.restarts + " restart(s)" +
    (fleet.respawning.length ? " \u00b7 " + fleet.respawning.length + " slot(s) respawning" : "");

  const workers = fleet.workers.map((w) => row([
    [w.slot], [w.pid], [w.generation], [w.state], [seconds(w.uptime)], [w.served], [w.in_flight],
    [w.loop_lag_ms.toFixed(1) + " ms"],
  ], "worker"));
  fill("workers", workers, 8, "no worker");

  const requests = [];
  const sockets = [];
  const tasks = [];
  const problems = [];
  for (const report of data.workers) {
    if (report.error) problems.push("worker " + report.slot + " (pid " + report.pid + "): " + report.error);
    const worker = report.slot + " / " + report.pid;
    for (const t of report.executor || []) {
      tasks.push([t.age, row([
        [worker], [t.pool], [t.state], [seconds(t.age)], [t.function, "path"], [t.request_id || ""],
      ], "task " + t.state)]);
    }
    for (const r of report.requests || []) {
      if (r.protocol === "websocket") {
        sockets.push([r.age, row([[r.request_id], [worker], [seconds(r.age)], [r.path, "path"], [r.client]], "websocket")]);
      } else {
        requests.push([r.age, row([
          [r.request_id], [worker], [seconds(r.age)], [r.stuck || ""], [r.protocol], [r.method],
          [r.path, "path"], [r.client],
        ], "request" + (r.stuck ? " " + r.stuck : ""))]);
      }
    }
  }
  const oldestFirst = (a, b) => b[0] - a[0];
  requests.sort(oldestFirst);
  sockets.sort(oldestFirst);
  tasks.sort(oldestFirst);
  fill("requests", requests.map((r) => r[1]), 8, "no request in flight");
  fill("websockets", sockets.map((r) => r[1]), 5, "no WebSocket open");
  document.getElementById("requests-count").textContent = "(" + requests.length + ")";
  document.getElementById("websockets-count").textContent = "(" + sockets.length + ")";
  fill("executor", tasks.map((t) => t[1]), 6, "no executor work");
  document.getElementById("executor-count").textContent = "(" + tasks.length + ")";
  showError(problems.join("; "));
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = "true";
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function refresh() {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const response = await fetch("/inspector/data", { headers, cache: "no-store" });
    if (response.status === 401) {
      document.getElementById("login").hidden = false;
      showError(token ? "wrong token" : "this inspector needs its token");
      return;
    }
    if (!response.ok) {
      showError("the server answered " + response.status);
      return;
    }
    document.getElementById("login").hidden = true;
    render(await response.json());
  } catch (err) {
    showError("cannot reach the server: " + err);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  readToken();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = document.getElementById("token").value;
    sessionStorage.setItem("genro-inspector-token", token);
  });
  refresh();
});

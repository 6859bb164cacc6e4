"""The service's two pages: the job list (``/``: plain HTML and a little JavaScript that calls
the API with the token kept in the browser's local storage) and the API reference
(``/docs``, rendered here from the OpenAPI schema: no assets from a CDN)."""

from __future__ import annotations

import html

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>daskmm jobs</title>
<style>
body{font-family:sans-serif;margin:1.5em;max-width:70em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em;
text-align:left}tr.job{cursor:pointer}tr.job:hover{background:#f4f4f4}
.queued{color:#666}.running{color:#06c}.succeeded{color:#080}.failed{color:#b00}
.cancelled{color:#a60}pre{background:#f7f7f7;padding:.6em;overflow:auto}
textarea{width:100%;height:12em;font-family:monospace}#msg{font-weight:bold}
img{max-width:48%;margin:.2em;border:1px solid #ddd}
</style></head><body>
<h1>daskmm jobs</h1>
<p><label>Token <input id="token" type="password" size="40"></label>
<button id="save">Use token</button> <span id="msg"></span></p>
<h2>Submit a job file</h2>
<form id="submit"><textarea id="body" placeholder="data: sleepstudy.csv
formula: Reaction ~ Days + (Days | Subject)
factors: [Subject]"></textarea>
<p><input type="file" id="file"> <button type="submit" id="go">Submit</button></p></form>
<h2>Jobs</h2>
<table><thead><tr><th>id</th><th>name</th><th>state</th><th>progress</th><th>submitted</th>
</tr></thead><tbody id="jobs"></tbody></table>
<div id="detail"></div>
<script>
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("daskmm-token") || "";
$("token").value = token;
const api = (path, opts = {}) => fetch(path, {...opts,
  headers: {...(opts.headers || {}), "Authorization": "Bearer " + token}});
// a message about the token is replaced once a token works; others (submitted ...) stay
const say = (text, kind = "") => { $("msg").textContent = text; $("msg").dataset.kind = kind; };
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;",
  ">": "&gt;", '"': "&quot;"})[c]);
$("save").onclick = () => { token = $("token").value.trim();
  localStorage.setItem("daskmm-token", token); refresh(); };
$("file").onchange = async (e) => { const f = e.target.files[0];
  if (f) $("body").value = await f.text(); };
$("submit").onsubmit = async (e) => {
  e.preventDefault();
  const r = await api("/v1/jobs", {method: "POST", body: $("body").value,
                                    headers: {"Content-Type": "application/yaml"}});
  const j = await r.json();
  say(r.ok ? "submitted " + j.id : "refused: " + j.detail);
  refresh();
};
function progressText(p) {
  if (!p || !p.phase) return "";
  return p.phase + (p.total ? ", " + (p.done || 0) + "/" + p.total + " " + (p.unit || "") : "")
    + (p.evaluations ? ", " + p.evaluations + " evaluations" : "")
    + (p.pirls ? ", PIRLS pass " + p.pirls : "")
    + (p.passes ? ", " + p.passes + (p.passes === 1 ? " pass" : " passes") : "")
    + (p.where ? " (" + p.where + ")" : "");
}
async function refresh() {
  if (!token) { say("enter a token", "token"); return; }
  const r = await api("/v1/jobs?limit=100");
  if (!r.ok) { say("token refused (" + r.status + ")", "token"); return; }
  const data = await r.json();
  if ($("msg").dataset.kind === "token") say("token accepted: " + data.items.length
    + (data.items.length === 1 ? " job" : " jobs"), "token-ok");
  $("jobs").innerHTML = data.items.map((j) => '<tr class="job" data-id="' + esc(j.id) + '">'
    + "<td>" + esc(j.id) + "</td><td>" + esc(j.name) + '</td><td class="' + esc(j.state)
    + '">' + esc(j.state) + "</td><td>" + esc(progressText(j.progress))
    + (j.error ? " " + esc(j.error) : "") + "</td><td>"
    + new Date(j.timings.created_at * 1000).toLocaleString() + "</td></tr>").join("");
  document.querySelectorAll("tr.job").forEach((tr) => tr.onclick = () => show(tr.dataset.id));
}
async function show(id) {
  const r = await api("/v1/jobs/" + id);
  const j = await r.json();
  let out = "<h2>Job " + esc(id) + " (" + esc(j.state) + ")</h2>";
  if (j.error) out += "<p class='failed'>" + esc(j.error) + "</p>";
  if (j.state === "succeeded") {
    const s = await api("/v1/jobs/" + id + "/results/summary.txt");
    out += '<pre id="summary">' + esc(await s.text()) + "</pre>";
  }
  $("detail").innerHTML = out;
  for (const name of (j.results || []).filter((n) => n.endsWith(".png"))) {
    const b = await api("/v1/jobs/" + id + "/results/" + name);
    const img = document.createElement("img");
    img.alt = name; img.src = URL.createObjectURL(await b.blob());
    $("detail").appendChild(img);
  }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


def docs(schema: dict) -> str:
    """A plain HTML reference of the API from its OpenAPI schema."""
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(p["name"] for p in op.get("parameters", [])
                               if p.get("in") in ("query", "path"))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>"
                        f"{html.escape(path)}</code></td><td>{html.escape(op.get('summary', ''))}"
                        f"</td><td>{html.escape(params)}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>daskmm API</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}td{padding:.3em;border-bottom:"
            "1px solid #ddd}</style></head><body><h1>daskmm fitting service API</h1>"
            f"<p>{html.escape(schema.get('info', {}).get('description', ''))}</p>"
            "<p>Every endpoint but <code>/healthz</code> and <code>/readyz</code> needs "
            "<code>Authorization: Bearer TOKEN</code>. The schema is at "
            "<a href='/openapi.json'>/openapi.json</a>.</p><table><tr><th>method</th>"
            "<th>path</th><th>what</th><th>parameters</th></tr>" + "".join(rows) +
            "</table></body></html>")

// The Visage console: calls the /v1 routes with the signed-in key, nothing else.
// Every string from the server goes into the page with textContent (el() below), never as HTML.
"use strict";

const KEY = "visage.key";
const state = { key: null, me: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
  say("");
}

function say(text) { document.getElementById("status").textContent = text; }

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || ("HTTP " + status));
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, { json, form, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Authorization: "Bearer " + state.key };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  const response = await fetch(url, { method, headers, body, credentials: "omit" });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function can(scope) {
  const scopes = state.me ? state.me.scopes : [];
  return scopes.includes(scope) || scopes.includes("admin");
}

function when(text) { return text ? text.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "—"; }

function field(labelText, input) { return el("label", {}, labelText, input); }

function table(headings, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
}

// A delete button that asks for the name typed back before it acts.
function typedConfirm(what, name, action) {
  const input = el("input", { type: "text", autocomplete: "off" });
  const go = el("button", { type: "submit", class: "danger", disabled: true, text: "Delete " + what });
  input.addEventListener("input", () => { go.disabled = input.value !== name; });
  return el("form", { class: "confirm", onsubmit: async (e) => {
    e.preventDefault();
    if (input.value !== name) return;
    try { await action(); } catch (err) { say(err.message); }
  } }, field("Type " + name + " to delete this " + what, input), go);
}

// ------------------------------------------------------------------ sign in

function signInPage() {
  const input = el("input", { type: "password", id: "apikey", autocomplete: "off", required: true });
  show(el("h1", { text: "Sign in" }),
    el("p", { text: "Paste an API key (visage keys create). It is kept in this tab only and sent with each call." }),
    el("form", { onsubmit: async (e) => {
      e.preventDefault();
      state.key = input.value.trim();
      try {
        state.me = await api("GET", "/v1/me");
      } catch (err) { state.key = null; say("Sign-in failed: " + err.message); return; }
      sessionStorage.setItem(KEY, state.key);
      location.hash = "#/collections";
      route();
    } }, field("API key", input), el("button", { type: "submit", text: "Sign in" })));
  input.focus();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  state.key = null; state.me = null;
  location.hash = "#/";
  route();
}

// ------------------------------------------------------------------ collections

async function collectionsPage() {
  const { items } = await api("GET", "/v1/collections");
  const rows = items.map((c) => el("tr", {},
    el("td", {}, el("a", { href: "#/c/" + encodeURIComponent(c.name), text: c.name })),
    el("td", { text: c.persons }), el("td", { text: c.templates }),
    el("td", { class: "threshold", text: thresholdText(c) }), el("td", { text: c.keep_images ? "yes" : "no" }),
    el("td", { text: c.model_id }),
    el("td", {}, can("admin") ? typedConfirm("collection", c.name, async () => {
      await api("DELETE", "/v1/collections/" + encodeURIComponent(c.name));
      collectionsPage();
    }) : "")));
  const parts = [el("h1", { text: "Collections" }),
    table(["Name", "Persons", "Templates", "Threshold in use (provenance)", "Keeps images", "Model", ""], rows)];
  if (can("admin")) {
    const name = el("input", { type: "text", required: true });
    const keep = el("input", { type: "checkbox" });
    const fpir = el("input", { type: "number", step: "any", value: "0.01", min: "0", required: true });
    parts.push(el("h2", { text: "Create a collection" }), el("form", { onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api("POST", "/v1/collections", { json: { name: name.value, keep_images: keep.checked, target_fpir: Number(fpir.value) } });
        collectionsPage();
      } catch (err) { say(err.message); }
    } }, field("Name", name), el("label", { class: "inline" }, keep, "Keep images"),
      field("Target FPIR", fpir), el("button", { type: "submit", text: "Create" })));
  }
  show(...parts);
}

// The threshold identify uses now and where it comes from, as the API states it.
function thresholdText(c) {
  const op = c.operating_point;
  if (!op) return "—";
  return op.threshold.toFixed(3) + " (" + op.basis + ", FPIR " + op.target_fpir + " at " + op.templates + " templates" + (op.supported ? "" : ", outside the calibration data") + ")";
}

function consentSummary(p) {
  const last = p.consents[p.consents.length - 1];
  if (!last) return el("span", { class: "bad", text: "none" });
  const status = p.consent_valid ? "valid" : last.status;
  return el("span", {}, el("span", { class: p.consent_valid ? "good" : "bad", text: status }),
    " · " + last.basis + " · by " + last.granted_by + " · until " + (last.expires_at ? when(last.expires_at) : "no end"));
}

const PAGE = 50;

async function personsPage(coll, offset, search) {
  const base = "/v1/collections/" + encodeURIComponent(coll);
  const [info, list] = await Promise.all([api("GET", base),
    api("GET", base + "/persons", { query: { offset, limit: PAGE, search } })]);
  const rows = list.items.map((p) => el("tr", {},
    el("td", {}, el("a", { href: "#/c/" + encodeURIComponent(coll) + "/p/" + encodeURIComponent(p.id), text: p.display_name })),
    el("td", { text: p.external_id || "—" }), el("td", {}, consentSummary(p)), el("td", { text: p.templates })));
  const q = el("input", { type: "search", value: search || "" });
  const nav = el("p", {},
    offset > 0 ? el("button", { type: "button", text: "Previous", onclick: () => personsPage(coll, Math.max(0, offset - PAGE), search) }) : "",
    " Persons " + (offset + 1) + "–" + (offset + list.items.length) + " of " + info.persons + " ",
    list.items.length === PAGE ? el("button", { type: "button", text: "Next", onclick: () => personsPage(coll, offset + PAGE, search) }) : "");
  const name = el("input", { type: "text", required: true });
  const ext = el("input", { type: "text" });
  show(el("h1", { text: "Collection " + coll }),
    el("p", { class: "muted", text: info.persons + " persons, " + info.templates + " templates, model " + info.model_id + ", threshold " + thresholdText(info) }),
    el("form", { role: "search", onsubmit: (e) => { e.preventDefault(); personsPage(coll, 0, q.value.trim()); } },
      field("Search persons (name or external id)", q), el("button", { type: "submit", text: "Search" })),
    table(["Name", "External id", "Consent", "Templates"], rows), nav,
    el("h2", { text: "Add a person" }),
    el("form", { onsubmit: async (e) => {
      e.preventDefault();
      try {
        const p = await api("POST", base + "/persons", { json: { display_name: name.value, external_id: ext.value || null } });
        location.hash = "#/c/" + encodeURIComponent(coll) + "/p/" + encodeURIComponent(p.id);
      } catch (err) { say(err.message); }
    } }, field("Display name", name), field("External id (optional)", ext), el("button", { type: "submit", text: "Add person" })));
}

// ------------------------------------------------------------------ a person

async function personPage(coll, pid) {
  const base = "/v1/collections/" + encodeURIComponent(coll) + "/persons/" + encodeURIComponent(pid);
  const [p, faces] = await Promise.all([api("GET", base), api("GET", base + "/faces")]);
  const reload = () => personPage(coll, pid);
  const consentRows = p.consents.map((c) => el("tr", {},
    el("td", {}, el("span", { class: c.status === "valid" ? "good" : "bad", text: c.status })),
    el("td", { text: c.basis }), el("td", { text: c.granted_by }), el("td", { text: when(c.granted_at) }),
    el("td", { text: c.expires_at ? when(c.expires_at) : "no end" }),
    el("td", { text: c.revoked_at ? when(c.revoked_at) + (c.revoke_reason ? " (" + c.revoke_reason + ")" : "") : "—" })));
  const faceRows = faces.items.map((t) => el("tr", {},
    el("td", { text: t.id }), el("td", { text: t.quality === null ? "—" : t.quality.toFixed(2) }),
    el("td", { text: when(t.created_at) }), el("td", { class: "mono", text: t.source_sha256.slice(0, 16) + "…" }),
    el("td", {}, t.has_image ? thumbnail(base + "/faces/" + t.id + "/image", "Photo of template " + t.id) : "not kept")));
  const basis = el("select", {}, ["consent", "contract", "legal_obligation", "vital_interest", "public_task", "legitimate_interest"].map((b) => el("option", { value: b, text: b })));
  const by = el("input", { type: "text", required: true });
  const until = el("input", { type: "date" });
  const reason = el("input", { type: "text" });
  const rename = el("input", { type: "text", value: p.display_name, required: true });
  show(el("h1", {}, "Person ", el("span", { id: "person-name", text: p.display_name })),
    el("p", { class: "muted" }, "Collection ", el("a", { href: "#/c/" + encodeURIComponent(coll), text: coll }),
      " · id " + p.id + (p.external_id ? " · external id " + p.external_id : "") + " · " + p.templates + " templates"),
    el("form", { onsubmit: async (e) => {
      e.preventDefault();
      try { await api("PATCH", base, { json: { display_name: rename.value } }); reload(); } catch (err) { say(err.message); }
    } }, field("Display name", rename), el("button", { type: "submit", text: "Rename" })),
    el("h2", { text: "Consent" }),
    el("p", {}, consentSummary(p)),
    table(["Status", "Basis", "Granted by", "Granted", "Until", "Revoked"], consentRows),
    el("form", { onsubmit: async (e) => {
      e.preventDefault();
      const json = { basis: basis.value, granted_by: by.value };
      if (until.value) json.expires_at = until.value + "T00:00:00Z";
      try { await api("POST", base + "/consents", { json }); reload(); } catch (err) { say(err.message); }
    } }, field("Basis", basis), field("Granted by", by), field("Until (optional)", until),
      el("button", { type: "submit", text: "Grant consent" })),
    p.consent_valid ? el("form", { onsubmit: async (e) => {
      e.preventDefault();
      try { await api("POST", base + "/consents/revoke", { json: { reason: reason.value || null } }); reload(); } catch (err) { say(err.message); }
    } }, field("Reason (optional)", reason), el("button", { type: "submit", class: "danger", text: "Revoke consent (deletes templates)" })) : "",
    el("h2", { text: "Enroll photos" }), enrollBox(coll, base, p, reload),
    el("h2", { text: "Templates" }),
    table(["Id", "Quality", "Enrolled", "Source SHA-256", "Image"], faceRows),
    el("h2", { text: "Delete" }),
    typedConfirm("person", p.display_name, async () => {
      await api("DELETE", base);
      location.hash = "#/c/" + encodeURIComponent(coll);
    }));
}

// A template's kept photo: fetched with the key (an <img src> could not send it), shown from
// a blob: URL that is revoked once the image has loaded (or failed), so none outlives its page.
function thumbnail(url, alt) {
  const img = el("img", { class: "thumb", alt });
  const release = () => URL.revokeObjectURL(img.src);
  img.addEventListener("load", release);
  img.addEventListener("error", release);
  fetch(url, { headers: { Authorization: "Bearer " + state.key }, credentials: "omit" })
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
    .then((blob) => { img.src = URL.createObjectURL(blob); })
    .catch(() => { img.alt = alt + " (unavailable)"; });
  return img;
}

// A photo drawn on a canvas with its faces boxed and numbered (0 = largest, as the API counts).
async function drawFaces(file, faces, marks) {
  const bitmap = await createImageBitmap(file);
  const canvas = el("canvas", { width: bitmap.width, height: bitmap.height, role: "img",
    "aria-label": faces.length + " faces found in " + file.name });
  const g = canvas.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  g.lineWidth = Math.max(2, bitmap.width / 150);
  g.font = Math.max(12, bitmap.width / 20) + "px sans-serif";
  faces.forEach((f, i) => {
    const b = f.box;
    g.strokeStyle = marks ? marks[i] : (f.quality.acceptable ? "#146c2e" : "#a50e0e");
    g.fillStyle = g.strokeStyle;
    g.strokeRect(b.left, b.top, b.right - b.left, b.bottom - b.top);
    g.fillText(String(i), b.left + 3, b.top + Math.max(12, bitmap.width / 20));
  });
  return canvas;
}

function enrollBox(coll, base, person, reload) {
  if (!person.consent_valid) {
    return el("p", { class: "notice", id: "needs-consent",
      text: "This person has no valid consent: grant one above before any photo can be enrolled. Nothing is uploaded until then." });
  }
  const input = el("input", { type: "file", id: "enroll-files", accept: "image/*", multiple: true });
  const results = el("div", { id: "enroll-results" });
  const handle = async (files) => { for (const file of files) results.append(await enrollOne(base, file)); };
  input.addEventListener("change", () => handle(input.files));
  const drop = el("div", { class: "drop" }, field("Drop photos here or choose files", input), el("p", { class: "muted", text: "Each photo is checked for faces and quality; refused photos say why." }));
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => { e.preventDefault(); handle(e.dataTransfer.files); });
  return el("div", {}, drop, results, el("button", { type: "button", text: "Refresh templates", onclick: reload }));
}

async function enrollOne(base, file, face) {
  const box = el("div", { class: "result", "data-file": file.name });
  let faces = [];
  if (can("identify")) {
    const form = new FormData(); form.append("photo", file);
    try { faces = (await api("POST", "/v1/detect", { form })).faces; } catch (err) { faces = []; }
  }
  box.append(el("strong", { text: file.name }), await drawFaces(file, faces));
  faces.forEach((f, i) => box.append(el("p", { class: "muted",
    text: "Face " + i + ": quality " + f.quality.score.toFixed(2) + (f.quality.acceptable ? " (acceptable)" : " — " + f.quality.reasons.join("; ")) })));
  const form = new FormData(); form.append("photo", file);
  try {
    const out = await api("POST", base + "/faces", { form, query: { face } });
    box.append(el("p", { class: "good enrolled", text: (out.created ? "Enrolled" : "Already enrolled") + ": template " + out.template_id + ", quality " + (out.quality === null ? "—" : out.quality.toFixed(2)) }));
  } catch (err) {
    const reasons = (err.problem && err.problem.reasons) || [];
    box.append(el("p", { class: "bad refused", text: "Refused: " + err.message + (reasons.length ? " (" + reasons.join("; ") + ")" : "") }));
    if (err.problem && err.problem.type && String(err.problem.type).endsWith("ambiguous-face")) {
      box.append(el("p", {}, "Pick the face to enroll: ", faces.map((f, i) => el("button", { type: "button", class: "pick",
        text: "Face " + i, onclick: async () => box.replaceWith(await enrollOne(base, file, String(i))) }))));
    }
  }
  return box;
}

// ------------------------------------------------------------------ identify

// True when the purpose field holds one; else says so and puts the focus there.
function stated(purpose) {
  if (purpose.value.trim()) return true;
  say("State the purpose of this search first.");
  purpose.focus();
  return false;
}

async function identifyPage() {
  const { items } = await api("GET", "/v1/collections");
  const coll = el("select", { id: "identify-collection" }, items.map((c) => el("option", { value: c.name, text: c.name })));
  const purpose = el("input", { type: "text", id: "identify-purpose", required: true, value: "" });
  const file = el("input", { type: "file", id: "identify-file", accept: "image/*" });
  const results = el("div", { id: "identify-results" });
  const run = async (blob, name) => {
    if (!stated(purpose)) return;
    const form = new FormData(); form.append("photo", blob, name);
    try {
      const out = await api("POST", "/v1/collections/" + encodeURIComponent(coll.value) + "/identify", { form, query: { purpose: purpose.value } });
      results.replaceChildren(await identifyResult(blob, name, out));
    } catch (err) { results.replaceChildren(el("p", { class: "bad", text: "Refused: " + err.message })); }
  };
  file.addEventListener("change", () => { if (file.files[0]) run(file.files[0], file.files[0].name); });
  show(el("h1", { text: "Identify" }),
    el("form", { onsubmit: (e) => e.preventDefault() }, field("Collection", coll), field("Purpose (kept in the audit log)", purpose),
      field("Photo", file)),
    webcamBox("search", (blob) => run(blob, "webcam.jpg")), results);
}

async function identifyResult(blob, name, out) {
  const faces = out.faces.filter((f) => f.face).map((f) => f.face);
  const marks = out.faces.filter((f) => f.face).map((f) => (f.unknown ? "#a50e0e" : "#146c2e"));
  const parts = [await drawFaces(blob, faces, marks)];
  if (!out.faces.length) parts.push(el("p", { class: "bad verdict", text: "No face found." }));
  for (const f of out.faces) {
    if (f.skipped) { parts.push(el("p", { class: "bad verdict", text: "Face " + f.index + ": not searched — " + f.skipped })); continue; }
    const best = f.candidates[0];
    parts.push(el("p", { class: "verdict " + (f.unknown ? "bad" : "good"),
      text: "Face " + f.index + ": " + (f.unknown ? "UNKNOWN — nobody within the threshold " + f.threshold.toFixed(3)
        : "MATCH " + best.display_name + " (distance " + best.distance.toFixed(3) + " ≤ threshold " + f.threshold.toFixed(3) + ")") }),
      el("p", { class: "muted", text: "Threshold from " + f.threshold_source }),
      table(["Candidate", "Distance", "Within threshold"], f.candidates.map((c) => el("tr", {},
        el("td", { text: c.display_name }), el("td", { text: c.distance.toFixed(3) }), el("td", { text: c.same ? "yes" : "no" })))));
  }
  return el("div", { class: "result" }, el("strong", { text: name }), parts);
}

// ------------------------------------------------------------------ verify

function verifyPage() {
  const purpose = el("input", { type: "text", id: "verify-purpose", required: true });
  const first = el("input", { type: "file", id: "verify-first", accept: "image/*", required: true });
  const second = el("input", { type: "file", id: "verify-second", accept: "image/*", required: true });
  const results = el("div", { id: "verify-results" });
  const compare = async (other, name) => {
    if (!stated(purpose)) return;
    if (!first.files[0]) { say("Choose the first photo first."); first.focus(); return; }
    const form = new FormData();
    form.append("photo", first.files[0]); form.append("other_photo", other, name);
    try {
      const out = await api("POST", "/v1/verify", { form, query: { purpose: purpose.value } });
      results.replaceChildren(el("div", { class: "result" },
        el("p", { class: "verdict " + (out.same ? "good" : "bad"),
          text: (out.same ? "SAME person" : "NOT the same person") + " (distance " + out.distance.toFixed(3) + (out.same ? " ≤ " : " > ") + "threshold " + out.threshold.toFixed(3) + ")" }),
        el("p", { class: "muted", text: "Threshold from " + out.threshold_source })));
    } catch (err) { results.replaceChildren(el("p", { class: "bad verdict", text: "Refused: " + err.message })); }
  };
  show(el("h1", { text: "Verify" }),
    el("p", { class: "muted", text: "Are these two photos the same person? Nothing is stored." }),
    el("form", { onsubmit: (e) => { e.preventDefault(); compare(second.files[0], second.files[0].name); } },
      field("Purpose (kept in the audit log)", purpose), field("First photo", first), field("Second photo", second),
      el("button", { type: "submit", text: "Verify" })),
    el("p", { class: "muted", text: "Or take the second photo with the camera:" }),
    webcamBox("verify", (blob) => compare(blob, "webcam.jpg")), results);
}

// The camera stream while a preview runs; stopped on capture and whenever the page changes.
let camera = null;
function stopCamera() {
  if (camera) for (const track of camera.getTracks()) track.stop();
  camera = null;
}

// One frame from the camera, handed to onFrame once and kept nowhere; "Capture and <action>".
function webcamBox(action, onFrame) {
  const video = el("video", { autoplay: true, muted: true, playsinline: true, hidden: true, "aria-label": "Camera preview" });
  const snap = el("button", { type: "button", id: "webcam-capture", disabled: true, text: "Capture and " + action });
  const start = el("button", { type: "button", id: "webcam-start", text: "Use the webcam", onclick: async () => {
    stopCamera();
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      video.srcObject = camera;
      video.hidden = false;
      await video.play();
      snap.disabled = false;
    } catch (err) { say("Camera unavailable: " + err.message); }
  } });
  snap.addEventListener("click", () => {
    const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
    canvas.getContext("2d").drawImage(video, 0, 0);
    stopCamera();
    video.srcObject = null; video.hidden = true; snap.disabled = true;
    canvas.toBlob((blob) => onFrame(blob), "image/jpeg", 0.92);
  });
  return el("div", {}, start, " ", snap, video);
}

// ------------------------------------------------------------------ audit

const AUDIT_PAGE = 100;

// A datetime-local value (the browser's local time) as the UTC instant the API takes.
function instant(local) { return local ? new Date(local).toISOString() : undefined; }

// The log newest first, filtered in the store (collection, action, actor, since/until),
// AUDIT_PAGE events at a time; "Older events" pages back with `before`.
async function auditPage(filters) {
  filters = filters || {};
  const coll = el("input", { type: "text", value: filters.collection || "" });
  const action = el("input", { type: "text", value: filters.action || "" });
  const actor = el("input", { type: "text", value: filters.actor || "" });
  const since = el("input", { type: "datetime-local", step: "1", value: filters.since || "" });
  const until = el("input", { type: "datetime-local", step: "1", value: filters.until || "" });
  const asked = () => ({ collection: coll.value.trim(), action: action.value.trim(), actor: actor.value.trim(),
    since: since.value, until: until.value });
  const form = el("form", { "aria-label": "Filter the audit log", onsubmit: (e) => { e.preventDefault(); auditPage(asked()); } },
    field("Collection", coll), field("Action", action), field("Actor (key id)", actor),
    field("Since (your local time)", since), field("Until, not including (your local time)", until),
    el("button", { type: "submit", text: "Filter" }));
  let list;
  try {
    list = await api("GET", "/v1/audit", { query: { order: "newest", limit: AUDIT_PAGE, before: filters.before,
      collection: filters.collection, action: filters.action, actor: filters.actor,
      since: instant(filters.since), until: instant(filters.until) } });
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    show(el("h1", { text: "Audit log" }), form);
    say("Filter refused: " + err.message);
    return;
  }
  const events = list.items;
  const pager = el("p", { id: "audit-pager" },
    filters.before ? el("button", { type: "button", text: "Newest events", onclick: () => auditPage({ ...filters, before: undefined }) }) : "",
    " " + (events.length ? "Events " + events[0].seq + " back to " + events[events.length - 1].seq : "No matching events") + " ",
    events.length === AUDIT_PAGE ? el("button", { type: "button", text: "Older events",
      onclick: () => auditPage({ ...filters, before: events[events.length - 1].seq }) }) : "");
  const verdict = el("p", { id: "chain", class: "muted", text: "Verifying the chain…" });
  const head = el("span", { class: "mono", id: "head" });
  const anchor = el("p", { class: "muted" });
  show(el("h1", { text: "Audit log" }), verdict, el("p", {}, "Head hash ", head), anchor,
    form,
    table(["Seq", "At", "Actor", "Action", "Collection", "Purpose", "Summary"], events.map((e) => el("tr", { "data-action": e.action, "data-seq": e.seq },
      el("td", { text: e.seq }), el("td", { text: when(e.at) }), el("td", { text: e.actor }), el("td", { text: e.action }),
      el("td", { text: e.collection || "—" }), el("td", { text: e.purpose || "—" }),
      el("td", { class: "mono", text: JSON.stringify(e.summary).slice(0, 160) })))),
    pager);
  // Filled in when the walk ends; nodes of a page already replaced are simply not shown.
  verifyChain().then((chain) => {
    verdict.className = chain.ok ? "good" : "bad";
    verdict.textContent = (chain.ok ? "Chain verified: " : "Chain BROKEN at " + chain.broken_seq + ": " + chain.reason + " — ") + chain.events + " events";
    head.textContent = chain.head;
    anchor.textContent = chain.anchored_seq ? "Anchored up to event " + chain.anchored_seq + " at " + when(chain.anchored_at) : "No anchor: " + chain.description;
  }, (err) => { verdict.className = "bad"; verdict.textContent = "Chain not verified: " + err.message; });
}

// The chain's verification: the server walks the whole log (~6 s at 200,000 events), so
// the audit page is shown without waiting for it, and filtering or paging while a walk runs
// shares that walk rather than queueing another. Asked after the page's events were read:
// that read is itself audited, and verification checks the chain up to then (docs/console.md).
let verifying = null;
function verifyChain() {
  if (!verifying) verifying = api("GET", "/v1/audit/verify").finally(() => { verifying = null; });
  return verifying;
}

// ------------------------------------------------------------------ keys

async function keysPage(secret) {
  const { items } = await api("GET", "/v1/keys");
  const name = el("input", { type: "text", id: "key-name", required: true });
  const scopes = ["identify", "enroll", "device", "admin"].map((s) => el("input", { type: "checkbox", value: s }));
  const colls = el("input", { type: "text", value: "*" });
  const life = el("input", { type: "text", placeholder: "30d" });
  show(el("h1", { text: "API keys" }),
    secret ? el("p", { class: "secret", id: "new-secret" }, "New key — copy it now, it is shown this once: ", el("span", { class: "mono", text: secret })) : "",
    table(["Id", "Name", "Scopes", "Collections", "Created", "Expires", "Revoked", ""], items.map((k) => el("tr", {},
      el("td", { class: "mono", text: k.id }), el("td", { text: k.name }), el("td", { text: k.scopes.join(", ") }),
      el("td", { text: k.collections ? k.collections.join(", ") : "all" }), el("td", { text: when(k.created_at) }),
      el("td", { text: k.expires_at ? when(k.expires_at) : "never" }), el("td", { text: k.revoked_at ? when(k.revoked_at) : "—" }),
      el("td", {}, k.revoked_at || k.id === state.me.id ? "" : el("button", { type: "button", class: "danger", text: "Revoke " + k.id,
        onclick: async () => { try { await api("DELETE", "/v1/keys/" + k.id); keysPage(); } catch (err) { say(err.message); } } }))))),
    el("h2", { text: "Create a key" }),
    el("form", { onsubmit: async (e) => {
      e.preventDefault();
      const json = { name: name.value, scopes: scopes.filter((s) => s.checked).map((s) => s.value),
        collections: colls.value.split(",").map((c) => c.trim()).filter(Boolean), expires_in: life.value || null };
      try { const made = await api("POST", "/v1/keys", { json }); keysPage(made.token); } catch (err) { say(err.message); }
    } }, field("Name", name), el("fieldset", {}, el("legend", { text: "Scopes" }), scopes.map((s) => el("label", { class: "inline" }, s, s.value))),
      field("Collections (comma-separated, * = all)", colls), field("Expires in (optional)", life),
      el("button", { type: "submit", text: "Create key" })));
}

// ------------------------------------------------------------------ evaluation
// `visage eval verify` or `visage eval identify` run by the server on uploaded lists and a zip
// of photos (POST /v1/eval/verify, /v1/eval/identify), and the last report (GET /v1/eval/last)
// with its PNG figures.

const EVAL_FIGURES = {
  roc: "ROC: true match rate against false match rate",
  det: "DET: false non-match rate against false match rate",
  scores: "Distances of same-person and different-person pairs, and the threshold",
  cmc: "CMC: share of mated searches whose mate is among the first k candidates",
  operating_curve: "The gallery's decision against its size: expected FNIR, the target FPIR, and this run's rates",
  search_scores: "Distances of mated searches to their mate and of non-mated searches to their nearest candidate, and the threshold",
};

function evalRate(value) { return value === null || value === undefined ? "—" : Number(value).toFixed(4); }

// A figure fetched with the key (an <img src> could not send it), shown from a blob: URL.
async function evalFigure(name, url) {
  const response = await fetch(new URL(url, location.origin), { headers: { Authorization: "Bearer " + state.key }, credentials: "omit" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  const src = URL.createObjectURL(await response.blob());
  const img = el("img", { src, alt: EVAL_FIGURES[name] || name, "data-figure": name });
  img.addEventListener("load", () => URL.revokeObjectURL(src), { once: true });
  return el("figure", {}, img, el("figcaption", { text: EVAL_FIGURES[name] || name }));
}

async function evalFigures(out) {
  return el("div", { class: "figures" }, await Promise.all(Object.entries(out.figures).map(([name, url]) => evalFigure(name, url))));
}

function evalRun(out, what) {
  return el("p", { class: "muted", text: what + " · model " + out.report.model_id + " · run " + when(out.created_at) + " by " + out.actor + " · audit event " + out.audit_seq });
}

async function verifyReport(out) {
  const r = out.report;
  const points = r.at_fmr.map((p) => el("tr", {},
    el("td", { text: p.target }), el("td", { text: evalRate(p.threshold) }), el("td", { text: evalRate(p.fmr) }),
    el("td", { text: evalRate(p.tar) }), el("td", { text: p.n_impostor }), el("td", { text: p.supported ? "yes" : "no (too few pairs)" })));
  const check = r.calibration;
  return [
    evalRun(out, "Verification, protocol " + r.protocol),
    el("p", { class: "verdict", id: "eval-accuracy", text: "Accuracy " + evalRate(r.accuracy.mean) + " ± " + evalRate(r.accuracy.std) + " over " + r.accuracy.folds.length + " folds" }),
    table(["Same-person pairs", "Different-person pairs", "ROC AUC", "EER", "EER threshold", "Photos", "No face found"], [el("tr", {},
      el("td", { text: r.n_genuine }), el("td", { text: r.n_impostor }), el("td", { text: evalRate(r.auc) }), el("td", { text: evalRate(r.eer) }),
      el("td", { text: evalRate(r.eer_threshold) }), el("td", { text: r.acquisition.photos }), el("td", { text: r.acquisition.no_face }))]),
    table(["Target FMR", "Threshold", "FMR", "True match rate", "Different-person pairs", "Supported"], points),
    check ? el("p", { id: "eval-calibration", text: "Shipped calibration " + check.describe + ": FMR " + evalRate(check.fmr) + ", FNMR " + evalRate(check.fnmr) + ", accuracy " + evalRate(check.accuracy) + " on this data" }) : "",
    el("p", { class: "muted", text: r.n_misses + " pairs decided wrongly at " + evalRate(r.group_threshold) + " (" + r.group_threshold_source + ")" }),
    await evalFigures(out),
  ];
}

async function identifyReport(out) {
  const r = out.report;
  const points = r.fnir_at_fpir.map((p) => el("tr", {},
    el("td", { text: p.target }), el("td", { text: evalRate(p.threshold) }), el("td", { text: evalRate(p.fmr) }),
    el("td", { text: evalRate(p.fnmr) }), el("td", { text: p.n_impostor }), el("td", { text: p.supported ? "yes" : "no (too few searches)" })));
  const d = r.decision;
  const check = r.calibration;
  return [
    evalRun(out, "Identification"),
    el("p", { class: "verdict", id: "eval-rank1", text: "Rank-1 " + evalRate(r.rank1) + ", rank-5 " + evalRate(r.rank5) + " over " + r.mated_searches + " mated searches" }),
    table(["Persons listed", "Persons enrolled", "Mated searches", "Non-mated searches", "Photos", "No face found"], [el("tr", {},
      el("td", { text: r.persons }), el("td", { text: r.enrolled }), el("td", { text: r.mated_searches }), el("td", { text: r.nonmated_searches }),
      el("td", { text: r.acquisition.photos }), el("td", { text: r.acquisition.no_face }))]),
    points.length ? table(["Target FPIR", "Threshold", "FPIR", "FNIR", "Non-mated searches", "Supported"], points)
      : el("p", { class: "muted", text: "No non-mated searches (probes of persons not in the gallery): no open-set rates." }),
    d ? el("p", { id: "eval-decision", text: "The gallery's own decision at target FPIR " + d.target_fpir + " with " + d.persons + " persons (threshold " + evalRate(d.threshold) + "): FPIR " + evalRate(d.fpir) + ", FNIR " + evalRate(d.fnir) + (d.expected_fnir === null ? "" : " (expected " + evalRate(d.expected_fnir) + ")") }) : "",
    check ? el("p", { id: "eval-calibration", text: "Shipped calibration " + check.describe + ": FPIR " + evalRate(check.fmr) + ", FNIR " + evalRate(check.fnmr) + " on this data" }) : "",
    await evalFigures(out),
  ];
}

function evalReport(out) { return out.kind === "identify" ? identifyReport(out) : verifyReport(out); }

async function evaluationPage() {
  const file = (id, accept) => el("input", { type: "file", id, accept, required: true });
  const lists = ".txt,.csv,text/plain,text/csv";
  const pairs = file("eval-pairs", lists), gallery = file("eval-gallery", lists), probes = file("eval-probes", lists);
  const photos = file("eval-photos", ".zip,application/zip");
  const photosCaption = el("span", {});
  const kinds = { verify: "Verify: a pairs file", identify: "Identify: a gallery and a probe list" };
  const radios = Object.entries(kinds).map(([value, text]) => el("input", { type: "radio", name: "eval-kind", value, checked: value === "verify", onchange: choose }));
  const chooser = el("fieldset", { class: "choice" }, el("legend", { text: "Protocol" }),
    radios.map((radio) => el("label", { class: "inline" }, radio, kinds[radio.value])));
  const pairsField = field("Pairs file (LFW pairs, or a CSV a,b,same)", pairs);
  const listFields = [field("Gallery list (person path lines)", gallery), field("Probe list (person path lines; persons not in the gallery are non-mated)", probes)];
  const kind = () => radios.find((r) => r.checked).value;
  function choose() {
    const verify = kind() === "verify";
    pairsField.hidden = !verify; pairs.required = verify;
    for (const f of listFields) f.hidden = verify;
    gallery.required = probes.required = !verify;
    photosCaption.textContent = "Photos (a zip of the folder the " + (verify ? "pairs" : "lists") + " name)";
  }
  choose();
  const run = el("button", { type: "submit", text: "Run evaluation" });
  const results = el("div", { id: "eval-results" });
  const form = el("form", { "aria-label": "Run an evaluation", onsubmit: async (e) => {
    e.preventDefault();
    const chosen = kind();
    const body = new FormData();
    if (chosen === "verify") body.append("pairs", pairs.files[0]);
    else { body.append("gallery", gallery.files[0]); body.append("probes", probes.files[0]); }
    body.append("photos", photos.files[0]);
    run.disabled = true;
    say("Running: every photo the " + (chosen === "verify" ? "pairs" : "lists") + " name is embedded (about 40 ms each)…");
    try {
      results.replaceChildren(...await evalReport(await api("POST", "/v1/eval/" + chosen, { form: body })));
      say("");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      say("Evaluation refused: " + err.message);
    } finally { run.disabled = false; }
  } }, chooser, pairsField, listFields, el("label", {}, photosCaption, photos), run);
  let last;
  try { last = await evalReport(await api("GET", "/v1/eval/last")); } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    last = [el("p", { class: "muted", id: "eval-none", text: "No evaluation has run on this server yet." })];
  }
  results.replaceChildren(...last);
  show(el("h1", { text: "Evaluation" }),
    el("p", { class: "muted", text: "Runs visage eval verify or visage eval identify on the server. Verify: accuracy over the protocol's folds, ROC AUC, EER, the true match rate at each target FMR. Identify: rank-1, rank-5 and the CMC, FNIR at each target FPIR, and the gallery's own decision. Both show how the shipped threshold does on your photos. The photos and their embeddings are deleted when the run ends; only the last report (numbers and figures) is kept, beside the server's store." }),
    form, el("h2", { text: "Last report" }), results);
}

// ------------------------------------------------------------------ routing

// Renders run one after another, in the order asked: a slow page's answer can never land
// over the page asked for after it.
let rendering = Promise.resolve();
function route() {
  rendering = rendering.then(render, render);
  return rendering;
}

async function render() {
  stopCamera();
  state.key = state.key || sessionStorage.getItem(KEY);
  const nav = document.getElementById("nav");
  if (!state.key) { nav.hidden = true; document.getElementById("who").textContent = ""; signInPage(); return; }
  try {
    if (!state.me) state.me = await api("GET", "/v1/me");
  } catch (err) { sessionStorage.removeItem(KEY); state.key = null; signInPage(); say(err.message); return; }
  nav.hidden = false;
  for (const link of nav.querySelectorAll("[data-scope]")) link.hidden = !can(link.dataset.scope);
  document.getElementById("who").textContent = state.me.name + " (" + state.me.id + ": " + state.me.scopes.join(", ") + ")";
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "c" && parts[2] === "p") await personPage(parts[1], parts[3]);
    else if (parts[0] === "c") await personsPage(parts[1], 0, "");
    else if (parts[0] === "identify") await identifyPage();
    else if (parts[0] === "verify") verifyPage();
    else if (parts[0] === "audit") await auditPage();
    else if (parts[0] === "keys") await keysPage();
    else if (parts[0] === "eval") await evaluationPage();
    else await collectionsPage();
    document.getElementById("main").focus();
  } catch (err) { say(err.message); }
}

document.getElementById("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();

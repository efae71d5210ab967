// nbde console: the only script (CSP: script-src 'self'). Live approvals through
// server-sent events, and the passkey ceremonies (WebAuthn needs the browser's API).
"use strict";

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function b64urlToBytes(s) {
  const pad = "=".repeat((4 - (s.length % 4)) % 4);
  const bin = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function bytesToB64url(buf) {
  const bytes = new Uint8Array(buf);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function postJson(url, body) {
  const res = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    throw new Error((await res.text()).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim() || res.statusText);
  }
  return res.json();
}

function showError(form, e) {
  const p = form.querySelector("#passkey-error");
  if (p) { p.textContent = String(e.message || e); p.hidden = false; }
}

async function enrol(form) {
  const options = await postJson("/console/passkeys/start", { name: form.elements.name.value });
  const pk = options.publicKey;
  pk.challenge = b64urlToBytes(pk.challenge);
  pk.user.id = b64urlToBytes(pk.user.id);
  (pk.excludeCredentials || []).forEach((c) => { c.id = b64urlToBytes(c.id); });
  const cred = await navigator.credentials.create({ publicKey: pk });
  const done = await postJson("/console/passkeys/finish", {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: bytesToB64url(cred.response.clientDataJSON),
      attestationObject: bytesToB64url(cred.response.attestationObject),
      transports: cred.response.getTransports ? cred.response.getTransports() : [],
    },
  });
  window.location.assign(done.next);
}

async function signIn(form) {
  const options = await postJson("/console/signin/passkey/start", { account: form.elements.account.value });
  const pk = options.publicKey;
  pk.challenge = b64urlToBytes(pk.challenge);
  (pk.allowCredentials || []).forEach((c) => { c.id = b64urlToBytes(c.id); });
  const cred = await navigator.credentials.get({ publicKey: pk });
  const done = await postJson("/console/signin/passkey/finish", {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: bytesToB64url(cred.response.clientDataJSON),
      authenticatorData: bytesToB64url(cred.response.authenticatorData),
      signature: bytesToB64url(cred.response.signature),
      userHandle: cred.response.userHandle ? bytesToB64url(cred.response.userHandle) : null,
    },
  });
  window.location.assign(done.next);
}

function live(tbody) {
  const source = new EventSource(tbody.dataset.live);
  source.addEventListener("requests", (event) => {
    // Markup rendered and escaped by the server, from the same code as the page.
    tbody.innerHTML = event.data;
    document.body.dataset.updated = String(Date.now());
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const add = document.getElementById("passkey-add");
  if (add) add.addEventListener("submit", (e) => { e.preventDefault(); enrol(add).catch((err) => showError(add, err)); });
  const signin = document.getElementById("passkey-signin");
  if (signin) signin.addEventListener("submit", (e) => { e.preventDefault(); signIn(signin).catch((err) => showError(signin, err)); });
  const requests = document.querySelector("tbody[data-live]");
  if (requests) live(requests);
});

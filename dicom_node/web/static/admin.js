// dicom-node admin: small progressive enhancements; every page works without this file.
"use strict";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function stateSpans(target, counts) {
  target.replaceChildren();
  const keys = Object.keys(counts).sort();
  if (!keys.length) { target.appendChild(el("span", "muted", "none")); return; }
  for (const key of keys) {
    target.appendChild(el("span", "state " + key, key + " " + counts[key]));
    target.appendChild(document.createTextNode(" "));
  }
}

function pollCounts(box) {
  const status = document.getElementById("poll-status");
  const tick = async () => {
    try {
      const response = await fetch(box.dataset.poll, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      for (const node of box.querySelectorAll("[data-key]")) {
        const value = data[node.dataset.key];
        if (value !== null && typeof value === "object") stateSpans(node, value);
        else node.textContent = String(value);
      }
      if (status) status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    } catch (error) {
      if (status) status.textContent = "Update failed (" + error.message + "); retrying.";
    }
  };
  setInterval(tick, 3000);
}

function pollSelfTest(table) {
  const body = table.querySelector("tbody");
  const stateNode = document.getElementById("selftest-state");
  const errorNode = document.getElementById("selftest-error");
  const timer = setInterval(async () => {
    const response = await fetch(table.dataset.poll, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const run = await response.json();
    body.replaceChildren();
    for (const step of run.steps) {
      const row = el("tr");
      row.appendChild(el("td", "", step.name));
      const cell = el("td");
      cell.appendChild(el("span", "state " + step.state, step.state));
      row.appendChild(cell);
      row.appendChild(el("td", "", step.seconds === null ? "" : step.seconds));
      row.appendChild(el("td", "", step.detail));
      body.appendChild(row);
    }
    stateNode.textContent = run.state;
    stateNode.className = "state " + run.state;
    errorNode.textContent = run.error || "";
    if (run.state === "passed" || run.state === "failed") clearInterval(timer);
  }, 1000);
}

function selectLine(textarea, number) {
  const lines = textarea.value.split("\n");
  let start = 0;
  for (let i = 0; i < number - 1 && i < lines.length; i++) start += lines[i].length + 1;
  const end = start + (lines[number - 1] || "").length;
  textarea.focus();
  textarea.setSelectionRange(start, end);
  const lineHeight = textarea.scrollHeight / Math.max(lines.length, 1);
  textarea.scrollTop = Math.max(0, (number - 3) * lineHeight);
}

document.addEventListener("DOMContentLoaded", () => {
  const counts = document.getElementById("counts");
  if (counts && counts.dataset.poll) pollCounts(counts);
  const steps = document.getElementById("selftest-steps");
  const runState = document.getElementById("selftest-state");
  if (steps && runState && !["passed", "failed"].includes(runState.textContent.trim())) pollSelfTest(steps);
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => { if (!window.confirm(form.dataset.confirm)) event.preventDefault(); });
  }
  const textarea = document.getElementById("rule-text");
  const listing = document.getElementById("listing");
  if (textarea && listing) {
    listing.addEventListener("click", (event) => {
      const item = event.target.closest("[data-line]");
      if (item) selectLine(textarea, Number(item.dataset.line));
    });
  }
});

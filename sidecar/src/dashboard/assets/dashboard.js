// Duro dashboard: confirmations before actions and optional auto-refresh. No framework, no
// build step; the pages work without it (forms post, links navigate).
"use strict";

document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    e.preventDefault();
  }
});

(function autoRefresh() {
  const box = document.getElementById("auto-refresh");
  if (!box) return;
  const key = "duro.autoRefresh." + location.pathname;
  const saved = localStorage.getItem(key);
  if (saved !== null) box.checked = saved === "1";
  box.addEventListener("change", () => localStorage.setItem(key, box.checked ? "1" : "0"));
  async function tick() {
    const regions = document.querySelectorAll("[data-refresh-region]");
    const busy = document.activeElement && document.activeElement.closest("[data-refresh-region]");
    if (box.checked && !busy && document.visibilityState === "visible") {
      try {
        const r = await fetch(location.href, { credentials: "same-origin", headers: { accept: "text/html" } });
        if (r.ok) {
          const doc = new DOMParser().parseFromString(await r.text(), "text/html");
          const fresh = doc.querySelectorAll("[data-refresh-region]");
          if (fresh.length === regions.length) {
            regions.forEach((el, i) => el.replaceWith(document.adoptNode(fresh[i])));
            document.body.dataset.refreshedAt = String(Date.now());
          }
        }
      } catch (_) {
        // Offline or restarting: try again at the next tick.
      }
    }
    setTimeout(tick, 5000);
  }
  setTimeout(tick, 5000);
})();

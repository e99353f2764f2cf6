/* Arena voting page: keyboard shortcuts and time on task. The form works without JavaScript (four submit
 * buttons); this file adds ← / 1 (left better), → / 2 (right better), t / 3 (tie), b / 4 (both bad), and
 * stamps the visible time into time_spent_ms before htmx sends the vote. The server re-checks everything.
 * Loaded as a static file: the page's Content-Security-Policy forbids inline scripts.
 */
(function () {
  "use strict";

  const KEYS = { ArrowLeft: "left", "1": "left", ArrowRight: "right", "2": "right", t: "tie", "3": "tie", b: "both_bad", "4": "both_bad" };
  let shownAt = null; // performance.now() when the current pair appeared (visible time only)
  let visibleMs = 0;

  function reset() {
    visibleMs = 0;
    shownAt = document.hidden ? null : performance.now();
  }

  function elapsedMs() {
    return Math.round(visibleMs + (shownAt === null ? 0 : performance.now() - shownAt));
  }

  function form() {
    return document.getElementById("vote-form");
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden && shownAt !== null) {
      visibleMs += performance.now() - shownAt;
      shownAt = null;
    } else if (!document.hidden && shownAt === null) {
      shownAt = performance.now();
    }
  });

  // Capture phase: runs before htmx serialises the form.
  document.addEventListener("submit", (event) => {
    const f = form();
    if (f && event.target === f) f.elements.time_spent_ms.value = String(elapsedMs());
  }, true);

  document.addEventListener("keydown", (event) => {
    const f = form();
    if (!f || event.ctrlKey || event.metaKey || event.altKey) return;
    const el = document.activeElement;
    if (el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable)) return;
    const choice = KEYS[event.key];
    if (!choice) return;
    const button = f.querySelector("button[data-choice='" + choice + "']");
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click(); // a click (not requestSubmit) so that htmx sends the button's name=value
  });

  function start() {
    reset();
    if (window.htmx) {
      window.htmx.onLoad((root) => { if (root.id === "arena-area" || root.querySelector && root.querySelector("#arena-area")) reset(); });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();

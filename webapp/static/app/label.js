/* Ranking board of the labelling page: drag-and-drop (SortableJS) and keyboard alone.
 *
 * State is one map: sample id -> rank (1..K) or null (unranked). Every input (drag, keys, the
 * per-response <select>) updates the map, then render() moves the chips into their rows and writes
 * the form: the selects (rank_<id>, which also work without JavaScript) and a `tiers` JSON field
 * (best tier first; same row = tie). The server validates everything again.
 * Loaded as a static file: the page's Content-Security-Policy forbids inline scripts.
 */
(function () {
  "use strict";

  const WIDE_SCREEN = "(min-width: 701px)"; // the phone layout of app.css is below this
  let board = null; // the current assignment's board; replaced after every htmx swap

  function readBoardData(root) {
    const node = root.querySelector("#board-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function initBoard(root) {
    const area = root.id === "label-area" ? root : root.querySelector("#label-area");
    if (!area) return;
    const data = readBoardData(area);
    if (!data) { board = null; return; }
    const chips = new Map();
    area.querySelectorAll(".chip[data-sample-id]").forEach((chip) => chips.set(Number(chip.dataset.sampleId), chip));
    board = {
      area: area,
      data: data,
      k: data.k,
      order: data.samples.map((s) => s.id), // shown order
      letters: new Map(data.samples.map((s) => [s.id, s.letter])),
      rank: new Map(data.samples.map((s) => [s.id, null])),
      lastTyped: null, // the response whose letter was typed last (for `=`, tie the next letter with it)
      tieNext: false,
      chips: chips,
      form: area.querySelector("#rank-form"),
      visibleMs: 0,
      visibleSince: document.hidden ? null : performance.now(),
    };
    area.querySelectorAll("select[name^='rank_']").forEach((select) => {
      select.addEventListener("change", () => {
        setRank(Number(select.dataset.sampleId), select.value ? Number(select.value) : null);
      });
    });
    area.querySelectorAll("input[type=checkbox][name^='flag_']").forEach((box) => {
      box.addEventListener("change", render);
    });
    if (window.Sortable) {
      area.querySelectorAll(".drop").forEach((drop) => {
        window.Sortable.create(drop, {
          group: "ranking-" + data.assignment,
          animation: 120,
          ghostClass: "chip-ghost",
          onEnd: readRanksFromDom,
        });
      });
    }
    Object.entries(data.initial || {}).forEach(([id, rank]) => board.rank.set(Number(id), rank)); // editing
    const toggle = area.querySelector("#compare-toggle");
    if (toggle) toggle.addEventListener("click", () => setCompare(!area.classList.contains("compare")));
    setCompare(readCompare());
    const legend = area.querySelector("#key-legend");
    if (legend && window.matchMedia(WIDE_SCREEN).matches) legend.open = true; // folded on a phone
    render();
    const first = area.querySelector(".chip");
    if (first) first.focus({ preventScroll: true });
  }

  function readRanksFromDom() {
    board.chips.forEach((chip, id) => {
      const rank = chip.parentElement.dataset.rank;
      board.rank.set(id, rank ? Number(rank) : null);
    });
    render();
  }

  function setRank(id, rank, message) {
    if (!board || !board.rank.has(id)) return;
    board.rank.set(id, rank === null ? null : Math.min(Math.max(rank, 1), board.k));
    render();
    announce(message || ("Response " + board.letters.get(id) + (rank ? " at rank " + rank : " unranked")));
    const chip = board.chips.get(id);
    if (chip) chip.focus({ preventScroll: false });
  }

  function tiers() {
    const byRank = new Map();
    board.order.forEach((id) => {
      const r = board.rank.get(id);
      if (r !== null) { if (!byRank.has(r)) byRank.set(r, []); byRank.get(r).push(id); }
    });
    return [...byRank.keys()].sort((a, b) => a - b).map((r) => byRank.get(r));
  }

  function render() {
    const area = board.area;
    const drops = new Map();
    area.querySelectorAll(".drop").forEach((d) => drops.set(d.dataset.rank, d));
    board.order.forEach((id) => {
      const r = board.rank.get(id);
      const chip = board.chips.get(id);
      const drop = drops.get(r === null ? "" : String(r));
      if (chip.parentElement !== drop) drop.appendChild(chip); // re-appending would drop keyboard focus
      const select = area.querySelector("select[name='rank_" + id + "']");
      if (select) select.value = r === null ? "" : String(r);
      const flagged = area.querySelectorAll("input[name='flag_" + id + "']:checked").length > 0;
      chip.querySelector(".chip-flag").hidden = !flagged;
      const card = area.querySelector("#response-" + id);
      if (card) card.dataset.rank = r === null ? "" : String(r);
    });
    drops.forEach((drop, rank) => {
      drop.parentElement.classList.toggle("tied", rank !== "" && drop.children.length > 1);
      drop.parentElement.classList.toggle("filled", drop.children.length > 0);
    });
    const complete = [...board.rank.values()].every((r) => r !== null);
    board.form.elements.tiers.value = complete ? JSON.stringify(tiers()) : "";
    area.classList.toggle("complete", complete);
  }

  function announce(text) {
    const live = board && board.area.querySelector("#announce");
    if (live) live.textContent = text;
  }

  function elapsedMs() {
    const running = board.visibleSince === null ? 0 : performance.now() - board.visibleSince;
    return Math.round(board.visibleMs + running);
  }

  document.addEventListener("visibilitychange", () => {
    if (!board) return;
    if (document.hidden && board.visibleSince !== null) {
      board.visibleMs += performance.now() - board.visibleSince;
      board.visibleSince = null;
    } else if (!document.hidden && board.visibleSince === null) {
      board.visibleSince = performance.now();
    }
  });

  // Runs in the capture phase, before htmx sends the form: stamp the time and refuse incomplete rankings.
  document.addEventListener("submit", (event) => {
    if (!board || event.target !== board.form) return;
    render();
    const missing = board.order.filter((id) => board.rank.get(id) === null).map((id) => board.letters.get(id));
    if (missing.length) {
      event.preventDefault();
      event.stopImmediatePropagation();
      showError("Rank every response before submitting; unranked: " + missing.join(", ") + ".");
      return;
    }
    board.form.elements.time_spent_ms.value = String(elapsedMs());
  }, true);

  function showError(text) {
    const notice = board.area.querySelector("#notice-slot");
    if (notice) notice.replaceChildren(); // a stale "Ranking saved." must not sit next to an error
    const box = board.area.querySelector("#form-error");
    box.replaceChildren();
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = text; // text, never HTML
    box.appendChild(p);
  }

  // ---- keyboard -------------------------------------------------------------------------------
  function focusedSampleId() {
    const el = document.activeElement;
    const holder = el && el.closest ? el.closest("[data-sample-id]") : null;
    return holder && board.area.contains(holder) ? Number(holder.dataset.sampleId) : null;
  }

  function chipsInBoardOrder() {
    return [...board.area.querySelectorAll(".drop .chip")];
  }

  function moveFocus(id, step) {
    const chips = chipsInBoardOrder();
    const index = id === null ? -1 : chips.indexOf(board.chips.get(id));
    const next = chips[Math.min(Math.max(index + step, 0), chips.length - 1)];
    if (next) next.focus();
  }

  function moveRank(id, step) {
    const current = board.rank.get(id);
    const target = current === null ? (step < 0 ? board.k : null) : current + step;
    if (target === null || target < 1 || target > board.k) return;
    const others = board.order.filter((o) => o !== id && board.rank.get(o) === current);
    if (current !== null && others.length === 0) {
      // Alone in its row: swap with whatever is in the target row, so the move never creates a tie.
      board.order.forEach((o) => { if (board.rank.get(o) === target) board.rank.set(o, current); });
    }
    setRank(id, target);
  }

  function tieWithAbove(id) {
    const chips = chipsInBoardOrder();
    const index = chips.indexOf(board.chips.get(id));
    const above = chips.slice(0, index).reverse().find((c) => c.parentElement.dataset.rank);
    if (!above) { announce("No ranked response above to tie with"); return; }
    const rank = Number(above.parentElement.dataset.rank);
    setRank(id, rank, "Response " + board.letters.get(id) + " tied with " + board.letters.get(Number(above.dataset.sampleId)) + " at rank " + rank);
  }

  // Typing letters: each response letter goes to the next free rank (B D A C = B best, C worst); `=` ties
  // the next letter with the one typed before it; Enter with one response left ranks it last.
  function letterToId(key) {
    const letter = key.toUpperCase();
    for (const [id, l] of board.letters) if (l === letter) return id;
    return null;
  }

  function rankByLetter(id) {
    if (board.lastTyped === null && [...board.rank.values()].every((r) => r !== null)) {
      board.rank.forEach((_, key) => board.rank.set(key, null)); // a full board: typing starts a new order
    }
    const others = board.order.filter((o) => o !== id).map((o) => board.rank.get(o)).filter((r) => r !== null);
    const top = others.length ? Math.max(...others) : 0;
    const last = board.lastTyped;
    const tie = board.tieNext && last !== null && last !== id && board.rank.get(last) !== null;
    board.tieNext = false;
    board.lastTyped = id;
    if (tie) {
      const rank = board.rank.get(last);
      setRank(id, rank, "Response " + board.letters.get(id) + " tied with " + board.letters.get(last) + " at rank " + rank);
    } else {
      setRank(id, top + 1);
    }
  }

  function rankLastImplied() {
    const missing = board.order.filter((id) => board.rank.get(id) === null);
    if (missing.length !== 1 || board.order.length < 2) return;
    const ranks = [...board.rank.values()].filter((r) => r !== null);
    setRank(missing[0], Math.max(...ranks) + 1, "Response " + board.letters.get(missing[0]) + " ranked last");
  }

  // Side by side: the response cards two per row, each scrolling on its own; remembered in this browser.
  function readCompare() {
    try { return window.localStorage.getItem("label.compare") === "1"; } catch (e) { return false; }
  }

  function setCompare(on) {
    board.area.classList.toggle("compare", on);
    const toggle = board.area.querySelector("#compare-toggle");
    if (toggle) toggle.setAttribute("aria-pressed", on ? "true" : "false");
    try { window.localStorage.setItem("label.compare", on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  function openPanel(selector, focusSelector) {
    const panel = selector instanceof Element ? selector : board.area.querySelector(selector);
    if (!panel) return;
    panel.open = true;
    const target = panel.querySelector(focusSelector);
    if (target) target.focus();
  }

  function isTyping(el) {
    return el && (el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable ||
      (el.tagName === "INPUT" && !["checkbox", "radio", "hidden"].includes(el.type)));
  }

  // Command letters; when one is also a response's letter (K ≥ 6), Shift+letter gives the command.
  const COMMAND_KEYS = new Set(["t", "f", "v", "s", "j", "k", "u", "w"]);

  document.addEventListener("keydown", (event) => {
    if (!board || !document.body.contains(board.area) || event.ctrlKey || event.metaKey) return;
    const el = document.activeElement;
    if (event.key === "Escape") {
      const id = focusedSampleId();
      board.area.querySelectorAll("details.skip, details.flags").forEach((d) => { d.open = false; });
      (board.chips.get(id) || chipsInBoardOrder()[0]).focus();
      event.preventDefault();
      return;
    }
    if (event.key === "Enter" && el && el.tagName === "SELECT" && el.form && el.form.closest("#skip-panel")) {
      event.preventDefault(); // a <select> has no implicit submission: Enter on the reason skips
      el.form.requestSubmit();
      return;
    }
    if (isTyping(el)) return;
    const id = focusedSampleId();
    const key = event.key;
    const letterId = /^[a-z]$/i.test(key) && !event.altKey ? letterToId(key) : null;
    const command = COMMAND_KEYS.has(key.toLowerCase()) && (letterId === null || event.shiftKey);
    let handled = true;
    if (letterId !== null && !command) {
      rankByLetter(letterId);
    } else if (key === "=") {
      board.tieNext = board.lastTyped !== null;
      announce(board.tieNext ? "Next letter ties with " + board.letters.get(board.lastTyped) : "Type a letter first, then = and the letter to tie with it");
    } else if (/^[0-9]$/.test(key) && id !== null && !event.altKey) {
      const n = Number(key);
      if (n === 0) setRank(id, null); else if (n <= board.k) setRank(id, n); else handled = false;
    } else if ((key === "ArrowUp" || key === "ArrowDown") && (event.altKey || event.shiftKey) && id !== null) {
      moveRank(id, key === "ArrowUp" ? -1 : 1);
    } else if (key === "ArrowUp" || key === "ArrowDown" || (command && /^[jk]$/i.test(key))) {
      moveFocus(id, key === "ArrowUp" || key.toLowerCase() === "k" ? -1 : 1);
    } else if (key === "Backspace" && id !== null) {
      setRank(id, null);
    } else if (key.toLowerCase() === "t" && id !== null) {
      tieWithAbove(id);
    } else if (key.toLowerCase() === "f") {
      const card = board.area.querySelector("#response-" + (id !== null ? id : board.order[0]));
      openPanel(card.querySelector("details.flags"), "input[type=checkbox]");
    } else if (key.toLowerCase() === "v" && id !== null) {
      board.area.querySelector("#response-" + id).scrollIntoView({ behavior: "smooth", block: "start" });
    } else if (key.toLowerCase() === "u" && board.area.querySelector("#edit-last")) {
      board.area.querySelector("#edit-last").click(); // htmx loads the last ranking to correct
    } else if (key.toLowerCase() === "w") {
      setCompare(!board.area.classList.contains("compare"));
      announce(board.area.classList.contains("compare") ? "Responses side by side" : "Responses one below the other");
    } else if (key.toLowerCase() === "s" && board.area.querySelector("#skip-panel")) {
      openPanel("#skip-panel", "select[name=reason]");
    } else if (key === "Enter" && !(el && (el.tagName === "BUTTON" || el.tagName === "A" || el.tagName === "SUMMARY"))) {
      rankLastImplied();
      board.form.requestSubmit();
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });

  // A rejected skip: the message is in the panel (and in place of the notice); keep focus in the panel,
  // on the field the message names.
  document.addEventListener("htmx:afterSwap", (event) => {
    if (!board || !event.detail.target || event.detail.target.id !== "skip-error") return;
    const panel = board.area.querySelector("#skip-panel");
    panel.open = true;
    const named = event.detail.target.textContent.trim().startsWith("detail") ? "[name=detail]" : "[name=reason]";
    const field = panel.querySelector(named);
    if (field) field.focus();
  });

  function start() {
    if (window.htmx) {
      window.htmx.onLoad(initBoard); // first page load and every swapped-in fragment
    } else {
      initBoard(document.body);
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();

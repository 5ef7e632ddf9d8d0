// fsq review console: keyboard shortcuts, selection helpers, idle lock.
// Served by the console itself (CSP: script-src 'self'); nothing here is needed for the
// console to work, every action is a plain form POST carrying the CSRF token.
"use strict";
(function () {
  var page = document.body.dataset.page;
  var idle = parseFloat(document.body.dataset.idleSeconds || "0");

  function typing(ev) {
    var t = ev.target;
    return t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
  }

  // Idle lock: after the server-side idle time, hide the preview and reload (the server then
  // answers with the lock page). Any key or click restarts the timer.
  if (idle > 0) {
    var timer = null;
    var rearm = function () {
      if (timer) { clearTimeout(timer); }
      timer = setTimeout(function () {
        var box = document.getElementById("preview");
        if (box) { box.classList.add("hidden"); }
        window.location.reload();
      }, (idle + 1) * 1000);
    };
    ["keydown", "click"].forEach(function (n) { document.addEventListener(n, rearm); });
    rearm();
  }

  if (page === "queue") {
    var rows = Array.prototype.slice.call(document.querySelectorAll("tr.row"));
    var at = -1;
    var select = function (i) {
      if (!rows.length) { return; }
      at = Math.max(0, Math.min(rows.length - 1, i));
      rows.forEach(function (r, n) { r.classList.toggle("selected", n === at); });
      rows[at].scrollIntoView({block: "nearest"});
    };
    document.addEventListener("keydown", function (ev) {
      if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
      if (ev.key === "j") { select(at + 1); ev.preventDefault(); }
      else if (ev.key === "k") { select(at - 1); ev.preventDefault(); }
      else if (ev.key === "Enter" && at >= 0) { window.location = rows[at].dataset.href; }
      else if (ev.key === "x" && at >= 0) {
        var box = rows[at].querySelector("input.pick");
        box.checked = !box.checked;
      }
    });
    var all = document.getElementById("select-all");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.pick").forEach(function (b) { b.checked = all.checked; });
      });
    }
  }

  if (page === "incident") {
    // The session's count of un-blurred views was rendered before this page's preview was
    // fetched; count the preview once it has arrived.
    var img = document.getElementById("preview-img");
    var counter = document.querySelector("#unblurred-count b");
    if (img && counter && img.dataset.blurred === "false") {
      var bump = function () { counter.textContent = String(parseInt(counter.textContent, 10) + 1); };
      if (img.complete && img.naturalWidth > 0) { bump(); } else { img.addEventListener("load", bump, {once: true}); }
    }
    var form = document.getElementById("decide");
    var reason = document.getElementById("reason");
    var hint = document.getElementById("pending-hint");
    var pending = null;
    var armDecision = function (decision, label) {
      pending = decision;
      hint.textContent = label + ": type the reason, then Enter (Esc cancels).";
      reason.focus();
    };
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
      if (typing(ev)) {
        if (ev.target === reason && ev.key === "Enter" && !ev.shiftKey && pending) {
          ev.preventDefault();
          form.requestSubmit(document.getElementById("btn-" + pending));
        } else if (ev.key === "Escape") {
          pending = null; hint.textContent = ""; ev.target.blur();
        }
        return;
      }
      var link;
      if (ev.key === "j") { link = document.getElementById("next"); }
      else if (ev.key === "k") { link = document.getElementById("prev"); }
      else if (ev.key === "c") { ev.preventDefault(); armDecision("confirm", "Confirm"); return; }
      else if (ev.key === "f") { ev.preventDefault(); armDecision("false_positive", "False positive"); return; }
      if (link) { ev.preventDefault(); window.location = link.href; }
    });
  }
})();

// The board's only script: when /api/stream says the read model changed, fetch the live part of this
// page again and put it in place. Without JavaScript the page still works; it is only not live.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || live.dataset.live !== "1" || !window.EventSource) { return; }
  var busy = false, again = false;

  // Where keyboard focus was inside the live part, by what names it: put it back after the refresh.
  function focusKey() {
    var el = document.activeElement;
    if (!el || !live.contains(el) || el === live) { return null; }
    if (el.id) { return "#" + CSS.escape(el.id); }
    if (el.getAttribute("href")) { return 'a[href="' + CSS.escape(el.getAttribute("href")) + '"]'; }
    return null;
  }

  // An officer filling in an answer keeps what is typed: the refresh waits until the form is left or sent.
  function editing() {
    var el = document.activeElement;
    var typing = el && live.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName) && el.type !== "hidden";
    return typing || live.querySelector("form[data-dirty='1']") !== null;
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (editing()) { window.setTimeout(refresh, 1500); return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Board-Part": "live" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 401 || response.redirected) { window.location.href = "/login"; return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          var key = focusKey();
          var opened = Array.prototype.map.call(live.querySelectorAll("details[open][id]"), function (d) { return d.id; });
          live.innerHTML = html;
          opened.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
          var target = key && live.querySelector(key);
          if (target) { target.focus(); }
          document.dispatchEvent(new Event("board:refreshed"));
          document.documentElement.dataset.version = String(Number(document.documentElement.dataset.version || 0) + 1);
        }
      })
      .catch(function () { /* the stream reconnects by itself; the next change refreshes */ })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  window.alurRefresh = refresh;
  var stream = new EventSource("/api/stream");
  stream.addEventListener("change", refresh);
  stream.addEventListener("hello", function () { document.documentElement.dataset.stream = "open"; });
  stream.onerror = function () { document.documentElement.dataset.stream = "reconnecting"; };
})();

// The inbox's answers: each form posts JSON to /api/inbox/{referral_id} (the API an integrator uses) and
// the card says what became of it. board.js keeps the page live; a message outlives the refresh.
(function () {
  "use strict";
  var said = {};  // referral id -> [class, text]: shown again after each live refresh

  function words() { return document.getElementById("inbox-words").dataset; }

  function show(id) {
    var box = document.getElementById("msg-" + id);
    if (!box || !said[id]) { return; }
    box.className = "message " + said[id][0];
    box.textContent = said[id][1];
  }

  function answerOf(form) {
    var body = {};
    new FormData(form).forEach(function (value, key) {
      var v = String(value).trim();
      if (v) { body[key] = v; }
    });
    return body;
  }

  // Only the fields the chosen answer asks for: a reason for decline / not delivered, an agency to redirect to.
  function fit(form) {
    var chosen = form.querySelector("input[name=status]:checked");
    var reason = form.querySelector("select[name=reason]");
    var redirect = form.querySelector("select[name=redirect_to]");
    if (reason) {
      var needs = chosen && chosen.dataset.reasons === "1";
      reason.disabled = !needs;
      reason.required = !!needs;
      Array.prototype.forEach.call(reason.querySelectorAll("optgroup"), function (group) {
        group.hidden = !chosen || group.dataset["for"] !== chosen.value;
      });
    }
    if (redirect) {
      var asks = chosen && chosen.dataset.redirect === "1";
      redirect.disabled = !asks;
    }
  }

  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (form && form.hasAttribute("data-answer")) { form.dataset.dirty = "1"; fit(form); }
  });
  document.addEventListener("input", function (event) {
    var form = event.target.form;
    if (form && form.hasAttribute("data-answer")) { form.dataset.dirty = "1"; }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-answer")) { return; }
    event.preventDefault();
    var card = form.closest("[data-referral]");
    var id = card.dataset.referral;
    var body = answerOf(form);
    var buttons = form.querySelectorAll("button");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    said[id] = ["sending", words().sending];
    show(id);
    fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      if (response.status === 401) { window.location.href = "/login"; return null; }
      return response.json().then(function (answer) { return [response.status, answer]; });
    }).then(function (result) {
      if (!result) { return; }
      var status = result[0], answer = result[1];
      if (status === 202) {
        said[id] = ["ok", words().recorded.replace("{status}", body.status)];
      } else if (status === 503) {
        said[id] = ["warn", words().pending];
      } else {
        var why = answer.error || (answer.reasons || []).join("; ") || String(status);
        said[id] = ["refused", words().refused + " " + why];
      }
      delete form.dataset.dirty;
      var open = form.closest("details.more");
      if (open && status === 202) { open.open = false; }
      show(id);
      if (window.alurRefresh) { window.alurRefresh(); }
    }).catch(function () {
      said[id] = ["warn", words().pending];
      show(id);
    }).finally(function () {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
    });
  });

  document.addEventListener("board:refreshed", function () {
    Object.keys(said).forEach(show);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-answer]"), fit);
  });
  Array.prototype.forEach.call(document.querySelectorAll("form[data-answer]"), fit);
})();

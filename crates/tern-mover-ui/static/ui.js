// tern mover admin UI: the page's live block is fetched again every few seconds (the seed's GUI polls the
// database) and put in place. The server renders it, so this script knows nothing of the page's content.
// It leaves the block alone while the operator is filling in a form inside it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  if (live.getAttribute("data-finished") === "true") {
    return; // an ended job's page does not change any more
  }
  var every = Number(live.getAttribute("data-refresh-ms")) || 2000;
  var stamp = document.getElementById("refreshed");
  var editing = false;
  live.addEventListener("input", function () { editing = true; });
  live.addEventListener("change", function () { editing = true; });
  live.addEventListener("submit", function () { editing = true; });

  function busy() {
    return editing || (document.activeElement && document.activeElement !== document.body &&
      live.contains(document.activeElement) && document.activeElement.tagName !== "A" &&
      document.activeElement.tagName !== "BUTTON");
  }

  function schedule() {
    window.setTimeout(tick, every);
  }

  function tick() {
    if (document.hidden || busy()) {
      schedule();
      return;
    }
    fetch(window.location.pathname + window.location.search, {
      headers: { "X-Tern-Fragment": "live" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) {
        window.location.assign("/ui/login");
        return null;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.text();
    }).then(function (html) {
      if (html === null) {
        return;
      }
      if (!busy()) {
        live.innerHTML = html;
      }
      if (stamp) {
        stamp.textContent = new Date().toISOString().replace("T", " ").slice(0, 19);
        stamp.classList.remove("offline");
      }
      schedule();
    }).catch(function () {
      if (stamp) {
        stamp.classList.add("offline");
        stamp.setAttribute("title", "the mover did not answer; trying again");
      }
      schedule();
    });
  }

  schedule();
})();

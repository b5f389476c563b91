// Refreshes the page's live part every two seconds, keeping the filters,
// without a reload; says when the agent does not answer.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    fetch("/ui/live" + window.location.search, { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        updated.className = "meta";
        updated.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        updated.className = "meta lost";
        updated.textContent = "agent not answering (" + e.message + "); retrying";
      })
      .finally(function () { busy = false; });
  }
  setInterval(refresh, 2000);
})();

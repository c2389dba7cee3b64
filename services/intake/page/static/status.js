// The status page follows its request: the status part is fetched again and replaced when it changed.
// Without JavaScript the page is the same, with a link to reload it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch || !window.DOMParser) { return; }
  var src = live.getAttribute("data-src");
  var quiet = 0;

  function current() { return live.querySelector("[data-version]"); }

  function tick() {
    fetch(src, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        var now = current();
        if (html !== null) {
          var next = new DOMParser().parseFromString(html, "text/html").querySelector("[data-version]");
          if (next && (!now || next.getAttribute("data-version") !== now.getAttribute("data-version"))) {
            live.innerHTML = html;
            quiet = 0;
          } else {
            quiet += 1;
          }
        }
        now = current();
        var final = now && now.getAttribute("data-final") === "true";
        // Once final, a few more looks for the last e-mails, then stop.
        if (!(final && quiet > 20)) { window.setTimeout(tick, final ? 3000 : 1000); }
      }, function () { window.setTimeout(tick, 3000); });
  }
  window.setTimeout(tick, 1000);
}());

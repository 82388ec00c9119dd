// The mail log page: keep the view pinned to the newest line while the reader is at the bottom.
(function () {
  "use strict";
  var pinned = true;
  function box() { return document.getElementById("log-lines"); }
  function atBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 40; }
  document.addEventListener("scroll", function (event) {
    var el = box();
    if (el && event.target === el) { pinned = atBottom(el); }
  }, true);
  function settle() {
    var el = box();
    if (!el) { return; }
    if (el.querySelector(".line[data-id]")) {
      var empty = document.getElementById("log-empty");
      if (empty) { empty.remove(); }
    }
    if (pinned) { el.scrollTop = el.scrollHeight; }
  }
  document.addEventListener("htmx:afterSettle", settle);
  document.addEventListener("DOMContentLoaded", settle);
})();

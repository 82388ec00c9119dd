// A table or block that scrolls sideways in its own box (narrow screens) can be reached with the keyboard:
// focusable while it overflows, not otherwise. Run on load, after every htmx swap and when the window resizes.
(() => {
  const SCROLLERS = "table.grid, table.counts, .host-table, pre, div.maillog, .preview";
  const mark = () => {
    for (const el of document.querySelectorAll(SCROLLERS)) {
      const scrolls = el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1;
      if (scrolls && !el.hasAttribute("tabindex")) {
        el.setAttribute("tabindex", "0");
        el.dataset.scrollFocus = "1";
      } else if (!scrolls && el.dataset.scrollFocus) {
        el.removeAttribute("tabindex");
        delete el.dataset.scrollFocus;
      }
    }
  };
  let pending = 0;
  const soon = () => { cancelAnimationFrame(pending); pending = requestAnimationFrame(mark); };
  document.addEventListener("DOMContentLoaded", mark);
  document.addEventListener("htmx:afterSettle", soon);
  window.addEventListener("resize", soon);
})();

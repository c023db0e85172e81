// Sortable tables: click a heading to sort its column (numbers by their data-sort value,
// missing values last), click again to reverse. No library: the page must open offline.
(function () {
  function key(cell) {
    if (!cell || !cell.hasAttribute("data-sort")) return null;
    var s = cell.getAttribute("data-sort"), n = Number(s);
    return s !== "" && !isNaN(n) ? n : s.toLowerCase();
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc");
        heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r, s) {
          var a = key(r.cells[col]), b = key(s.cells[col]);
          if (a === null || b === null) return compare(a, b);  // missing values stay last
          return asc ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();

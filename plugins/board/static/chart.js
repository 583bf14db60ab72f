/* tunesmith board: a small SVG line chart (no library, works offline).
 * drawChart(element, series, options)
 *   series: [{name, points: [[x, y], ...]}]; options: {title, xLabel, logY}
 * Redrawing replaces the element's content, so live pages just call it again. */
(function () {
  "use strict";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
  var NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function ticks(lo, hi, n) {
    if (!(hi > lo)) { return [lo]; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) { step *= 10; } else if (err >= 3.5) { step *= 5; } else if (err >= 1.5) { step *= 2; }
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(+v.toPrecision(12)); }
    return out;
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(1); }
    return String(+v.toPrecision(4));
  }

  function drawChart(target, series, options) {
    options = options || {};
    var W = 720, H = 300, L = 56, R = 16, T = options.title ? 28 : 12, B = 40;
    series = (series || []).filter(function (s) { return s.points && s.points.length; });
    target.innerHTML = "";
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "class": "chart-svg",
      "aria-label": options.title || "chart"});
    if (options.title) { svg.appendChild(el("text", {x: L, y: 18, "class": "chart-title"}, options.title)); }
    if (!series.length) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", "class": "chart-empty"},
        options.empty || "nothing logged yet"));
      target.appendChild(svg);
      return svg;
    }
    var xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    function sx(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function sy(y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
    ticks(y0, y1, 5).forEach(function (v) {
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: sy(v), y2: sy(v), "class": "grid"}));
      svg.appendChild(el("text", {x: L - 6, y: sy(v) + 4, "text-anchor": "end", "class": "tick"}, fmt(v)));
    });
    ticks(x0, x1, 8).forEach(function (v) {
      svg.appendChild(el("text", {x: sx(v), y: H - B + 16, "text-anchor": "middle", "class": "tick"}, fmt(v)));
    });
    svg.appendChild(el("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "class": "axis-label"},
      options.xLabel || "step"));
    series.forEach(function (s, i) {
      var color = s.color || COLORS[i % COLORS.length];
      var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join("");
      var g = el("g", {"class": "series", "data-name": s.name});
      g.appendChild(el("path", {d: d, fill: "none", stroke: color, "stroke-width": 2}));
      if (s.points.length < 40) {
        s.points.forEach(function (p) {
          var c = el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color});
          c.appendChild(el("title", {}, s.name + " @ " + fmt(p[0]) + ": " + fmt(p[1])));
          g.appendChild(c);
        });
      }
      svg.appendChild(g);
      var ly = T + 4 + i * 16;
      svg.appendChild(el("rect", {x: W - R - 190, y: ly, width: 10, height: 10, fill: color}));
      svg.appendChild(el("text", {x: W - R - 175, y: ly + 9, "class": "legend"}, String(s.name).slice(0, 30)));
    });
    target.appendChild(svg);
    return svg;
  }

  window.drawChart = drawChart;
})();

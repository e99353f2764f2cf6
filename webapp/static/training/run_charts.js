// Loss and pairwise-accuracy curves of a training run, drawn with uPlot from the run's metrics JSON.
// Refreshed whenever htmx swaps in a new status card (every 2 s while the run is live). CSP: no inline JS.
(function () {
  "use strict";
  var COLORS = { train: "#3461c1", eval: "#d9822b" };
  var charts = {};

  function column(series, name) {
    return series && series[name] ? series[name] : [];
  }

  // uPlot needs one shared x axis: merge train and eval steps, null where a series has no point.
  function align(train, evalSeries, key) {
    var steps = Array.from(new Set(column(train, "step").concat(column(evalSeries, "step")))).sort(function (a, b) { return a - b; });
    function valuesAt(series) {
      var byStep = new Map();
      column(series, "step").forEach(function (s, i) { byStep.set(s, column(series, key)[i]); });
      return steps.map(function (s) { return byStep.has(s) ? byStep.get(s) : null; });
    }
    return [steps, valuesAt(train), valuesAt(evalSeries)];
  }

  // Steps are whole numbers: ticks only at integer increments, never "2.5".
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 1000000];

  // The legend shows the values under the cursor; with no cursor (or a gap in a series) it shows the
  // latest value at or before that step instead of uPlot's "--".
  function latest(u, seriesIdx, idx) {
    var column = u.data[seriesIdx];
    var i = idx == null ? column.length - 1 : idx;
    while (i >= 0 && column[i] == null) { i--; }
    return i >= 0 ? column[i] : null;
  }
  function stepValue(u, v, seriesIdx, idx) { var s = latest(u, 0, idx); return s == null ? "none yet" : s; }
  function metricValue(u, v, seriesIdx, idx) {
    var value = latest(u, seriesIdx, idx);
    return value == null ? "none yet" : Number(value).toPrecision(4).replace(/\.?0+$/, "");
  }

  function draw(container, key, data) {
    var width = Math.max(container.clientWidth, 300);
    if (!charts[key]) {
      charts[key] = new uPlot({
        width: width, height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "step", incrs: STEP_INCRS,
                 values: function (u, splits) { return splits.map(function (v) { return Number.isInteger(v) ? String(v) : ""; }); } },
               {}],
        series: [
          { label: "step", value: stepValue },
          { label: "train " + key, stroke: COLORS.train, width: 1.5, spanGaps: true, value: metricValue },
          { label: "held-out " + key, stroke: COLORS.eval, width: 2, spanGaps: true, points: { show: true }, value: metricValue },
        ],
      }, data, container);
      container._uplot = charts[key];  // for the browser tests: axis ticks and legend are read from it
    } else {
      charts[key].setData(data);
    }
  }

  function refresh() {
    var root = document.getElementById("run-charts");
    if (!root || typeof uPlot === "undefined") { return; }
    fetch(root.dataset.metricsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (payload) {
        if (!payload) { return; }
        root.querySelectorAll("[data-chart]").forEach(function (el) {
          var key = el.dataset.chart;
          draw(el, key, align(payload.series.train, payload.series.eval, key));
        });
      });
  }

  document.addEventListener("DOMContentLoaded", refresh);
  // The status card is the only thing htmx swaps on this page; each swap is a fresh poll.
  document.addEventListener("htmx:afterSwap", refresh);
})();

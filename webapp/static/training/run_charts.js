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

  function draw(container, key, data) {
    var width = Math.max(container.clientWidth, 300);
    if (!charts[key]) {
      charts[key] = new uPlot({
        width: width, height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [
          {},
          { label: "train " + key, stroke: COLORS.train, width: 1.5, spanGaps: true },
          { label: "held-out " + key, stroke: COLORS.eval, width: 2, spanGaps: true, points: { show: true } },
        ],
      }, data, container);
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

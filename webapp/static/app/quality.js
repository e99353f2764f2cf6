// Quality page: plot pairwise agreement per day with uPlot. Data comes from a json_script block (no inline JS).
(function () {
  "use strict";
  var DAY = 86400;
  // The x range from the data: uPlot's auto range blows a single day up to years (one point ran to 2029).
  function dayRange(xs) {
    var min = Math.min.apply(null, xs), max = Math.max.apply(null, xs);
    var pad = max - min < 3 * DAY ? DAY : 0;  // up to three days: a day either side
    return [min - pad, max + pad];
  }
  function draw() {
    var holder = document.getElementById("agreement-chart");
    var source = document.getElementById("agreement-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.day.length) { holder.textContent = "No agreement data yet: a prompt needs two rankings."; return; }
    var xs = data.day.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    holder._uplot = new uPlot({
      width: Math.max(320, holder.clientWidth || 640), height: 220,
      scales: { x: { time: true, auto: false, range: dayRange(xs) }, y: { range: [0, 1] } },
      series: [{ label: "day" }, { label: "pairwise agreement", stroke: "#3a6ea5", points: { show: true, size: 6 } }],
      axes: [{ space: 80 }, { label: "agreement" }],
    }, [xs, data.agreement], holder);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw); else draw();
})();

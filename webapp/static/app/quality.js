// Quality page: plot pairwise agreement per day with uPlot. Data comes from a json_script block (no inline JS).
(function () {
  "use strict";
  function draw() {
    var holder = document.getElementById("agreement-chart");
    var source = document.getElementById("agreement-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.day.length) { holder.textContent = "No agreement data yet: a prompt needs two rankings."; return; }
    var xs = data.day.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    new uPlot({
      width: Math.max(320, holder.clientWidth || 640), height: 220,
      scales: { y: { range: [0, 1] } },
      series: [{}, { label: "pairwise agreement", stroke: "#3a6ea5", points: { show: true, size: 6 } }],
      axes: [{}, { label: "agreement" }],
    }, [xs, data.agreement], holder);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw); else draw();
})();

// Draws the report's charts with ECharts from the JSON each chart carries in the page
// (<script type="application/json" class="chart-spec">), again after htmx swaps a report in.
(function () {
  "use strict";
  var PALETTE = ["#0b57d0", "#e37400", "#1b6e3a", "#b3261e", "#7b3fb3", "#00796b", "#5f6368", "#c2185b", "#827717", "#3949ab"];

  function percent(value) { return value == null ? "—" : (value * 100).toFixed(1) + "%"; }

  function valueAxis(name, index, spec) {
    var isPercent = spec.percentAxes.indexOf(index) >= 0;
    var axis = { type: "value", name: name, nameTextStyle: { color: "#566074", align: index === 0 ? "left" : "right" }, splitLine: { show: index === 0 } };
    if (isPercent) { axis.min = 0; axis.max = 1; axis.axisLabel = { formatter: function (v) { return Math.round(v * 100) + "%"; } }; }
    else if (spec.wholeAxes.indexOf(index) >= 0) axis.minInterval = 1;  // counts: no 0.2 of a case
    return axis;
  }

  function options(spec) {
    var base = { color: PALETTE, animation: false, aria: { enabled: true }, tooltip: {} };
    if (spec.kind === "pie") {
      base.tooltip = { trigger: "item", formatter: "{b}: {c} ({d}%)" };
      base.legend = { type: "scroll", orient: "vertical", right: 0, top: "middle" };
      base.series = [{
        type: "pie", radius: ["35%", "70%"], center: ["38%", "50%"], label: { show: false },
        data: spec.categories.map(function (name, i) { return { name: name, value: spec.series[0].data[i] }; })
      }];
      return base;
    }
    var horizontal = spec.kind === "horizontal";
    var categoryAxis = { type: "category", data: spec.categories, axisLabel: { hideOverlap: true } };
    var axes = spec.axes.length ? spec.axes.map(function (name, i) { return valueAxis(name, i, spec); }) : [valueAxis("", 0, spec)];
    base.tooltip = { trigger: "axis" };
    base.legend = { type: "scroll", top: 0 };
    base.grid = { left: 8, right: 16, top: 36, bottom: 8, containLabel: true };
    base.xAxis = horizontal ? axes[0] : categoryAxis;
    base.yAxis = horizontal ? categoryAxis : axes;
    base.series = spec.series.map(function (s) {
      var isPercent = spec.percentAxes.indexOf(s.axis) >= 0;
      var series = {
        name: s.name, type: s.kind, data: s.data, connectNulls: true,
        tooltip: { valueFormatter: isPercent ? percent : function (v) { return v == null ? "—" : v; } }
      };
      if (!horizontal) series.yAxisIndex = s.axis;
      if (spec.stacked && s.kind === "bar") series.stack = "total";
      if (s.kind === "line") series.symbolSize = 6;
      else series.barMaxWidth = 48;
      return series;
    });
    return base;
  }

  function draw(root) {
    if (typeof echarts === "undefined") return;
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      var source = el.parentElement.querySelector("script.chart-spec");
      if (!source) return;
      var old = echarts.getInstanceByDom(el);
      if (old) old.dispose();
      var chart = echarts.init(el, null, { renderer: "svg" });
      chart.setOption(options(JSON.parse(source.textContent)));
      el.dataset.drawn = "1";
    });
  }

  function resize() {
    if (typeof echarts === "undefined") return;
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var chart = echarts.getInstanceByDom(el);
      if (chart) chart.resize();
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSwap", function (e) { draw(e.detail && e.detail.target ? e.detail.target : document); });
  window.addEventListener("resize", resize);
})();

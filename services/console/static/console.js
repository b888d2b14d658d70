// Live countdowns for every <time data-due>, refreshed each second (no request needed).
(function () {
  "use strict";
  function label(seconds, lang) {
    const late = seconds < 0; let s = Math.abs(Math.round(seconds));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    let text;
    if (lang === "en") text = (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m" + (d ? "" : " " + s + "s");
    else text = (d ? d + "天" : "") + (d || h ? h + "小时" : "") + m + "分" + (d ? "" : s + "秒");
    if (late) return lang === "en" ? "overdue " + text : "已超时 " + text;
    return lang === "en" ? text + " left" : "剩余 " + text;
  }
  function tick() {
    const lang = document.body.dataset.lang || "zh";
    const now = Date.now();
    document.querySelectorAll("time[data-due]").forEach(function (el) {
      if (el.hasAttribute("data-paused")) {
        // Frozen at what it had left when it paused (the server says how much).
        const left = el.dataset.left !== undefined ? parseFloat(el.dataset.left) : (Date.parse(el.dataset.due) - now) / 1000;
        el.textContent = (lang === "en" ? "paused · " : "已暂停 · ") + label(left, lang);
        return;
      }
      const left = (Date.parse(el.dataset.due) - now) / 1000;
      el.textContent = label(left, lang);
      if (left < 0) el.classList.add("breached");
    });
  }
  document.addEventListener("DOMContentLoaded", function () { tick(); setInterval(tick, 1000); });
  document.addEventListener("htmx:afterSwap", tick);
  // A short message after an action (the server sends HX-Trigger: {"toast": "..."}).
  document.addEventListener("toast", function (e) {
    const box = document.getElementById("toast"); if (!box) return;
    box.textContent = e.detail && e.detail.value ? e.detail.value : "";
    setTimeout(function () { box.textContent = ""; }, 4000);
  });
})();

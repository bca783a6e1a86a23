/* evops console: copy buttons and live updates. A static file (no inline script),
 * so the console runs under a Content-Security-Policy with script-src 'self'.
 *
 * Live updates: a page with [data-live-region] elements opens the console's
 * websocket. On every (re)connect it re-fetches the page and swaps those regions
 * (changes made while the socket was down are caught up), then on each claim change
 * again; every REFRESH_SECONDS it refreshes anyway, in case a change was missed.
 * The indicator says "live" only once fresh data has arrived over a connected socket.
 */
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    event.preventDefault();
    var text = button.getAttribute("data-copy");
    var done = function () {
      button.dataset.copied = "1";
      window.setTimeout(function () { delete button.dataset.copied; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* ignore */ }
      area.remove();
    }
  });

  function start() {
    if (!document.querySelector("[data-live-region]")) { return; }
    var body = document.body;
    var REFRESH_SECONDS = Number(window.evopsRefreshSeconds || body.dataset.liveRefresh || 30);
    var status = document.createElement("div");
    status.id = "evops-live-status";
    status.setAttribute("role", "status");
    document.body.appendChild(status);

    var socket = null;
    var connected = false;
    var pending = null;
    var inFlight = false;
    var again = false;
    var changes = 0;
    var backoff = 1000;
    var lastData = null;

    function stamp(date) {
      var pad = function (n) { return (n < 10 ? "0" : "") + n; };
      return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
    }
    function setState(state, text) {
      status.dataset.state = state;
      status.textContent = text + (lastData ? " · data of " + stamp(lastData) : "");
    }
    function selecting() {
      return document.querySelector("input.action-select:checked") !== null;
    }
    function destroyCharts(root) {
      if (!window.Chart || !window.Chart.getChart) { return; }
      root.querySelectorAll("canvas").forEach(function (canvas) {
        var chart = window.Chart.getChart(canvas);
        if (chart) { chart.destroy(); }
      });
    }
    function refresh() {
      pending = null;
      if (inFlight) { again = true; return; }
      if (selecting()) { setState("paused", "live: paused while rows are selected"); return; }
      inFlight = true;
      fetch(window.location.href, {credentials: "same-origin", headers: {"X-Live-Refresh": "1"}})
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          var charts = false;
          document.querySelectorAll("[data-live-region]").forEach(function (el) {
            var next = fresh.getElementById(el.id);
            if (!next) { return; }
            charts = charts || next.querySelector("canvas.chart") !== null;
            destroyCharts(el);
            el.replaceWith(document.importNode(next, true));
          });
          if (charts && typeof renderCharts === "function") { renderCharts(); }
          lastData = new Date();
          body.dataset.liveUpdates = String(changes);
          body.dataset.liveRefreshes = String(Number(body.dataset.liveRefreshes || 0) + 1);
          if (connected) { setState("live", "live"); }
          else { setState("polling", "not live (reconnecting), refreshed"); }
        })
        .catch(function () { setState("stale", "refresh failed, retrying"); })
        .then(function () {
          inFlight = false;
          if (again) { again = false; schedule(50); }
        });
    }
    function schedule(delay) {
      if (pending === null) { pending = window.setTimeout(refresh, delay); }
    }
    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      setState("connecting", "live: connecting");
      socket = new WebSocket(scheme + window.location.host + "/ws/console/");
      socket.onopen = function () {
        connected = true;
        backoff = 1000;
        setState("connecting", "connected, loading");
        schedule(0);  // catch up on whatever changed while not connected
      };
      socket.onmessage = function (message) {
        var event;
        try { event = JSON.parse(message.data); } catch (e) { return; }
        if (event.type !== "claim.changed") { return; }
        changes += 1;
        schedule(300);
      };
      socket.onclose = function (event) {
        connected = false;
        if (event.code === 4403 || event.code === 4401) {
          setState("forbidden", "not live: signed out or no access (reload)");
          return;
        }
        setState("reconnecting", "not live: reconnecting");
        window.setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 30000);
      };
    }
    window.setInterval(function () { schedule(0); }, REFRESH_SECONDS * 1000);
    connect();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

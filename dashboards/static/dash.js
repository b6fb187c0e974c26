/* plant-twin dashboards: draws the server's figures and keeps them current.
 *
 * Every trace a page updates carries a `meta` string ("sensor/T", "plan/Tc", ...); the
 * JSON endpoints answer with {meta: {x, y}}, so this file never needs to know how a
 * figure is laid out. `window.dashState` records what happened (first plot drawn, window
 * loads, appended points) for the browser tests and the render benchmark.
 */
"use strict";
(function () {
  const state = window.dashState = {
    rendered: null, windowLoads: 0, appended: 0, polls: 0, errors: [],
  };
  const PLOT_CONFIG = {displaylogo: false, responsive: true};
  const Dash = window.Dash = {};

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function getJSON(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"},
                                       credentials: "same-origin"});
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
      throw new Error(`${response.status}: ${detail}`);
    }
    return response.json();
  }

  function report(error) {
    state.errors.push(String(error));
    const box = document.getElementById("dash-error");
    if (box) { box.textContent = String(error); box.hidden = false; }
  }

  function clearError() {
    const box = document.getElementById("dash-error");
    if (box) box.hidden = true;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "—";
    return Number(value).toPrecision(digits || 4).replace(/\.?0+(e|$)/, "$1");
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    return `${(seconds / 3600).toFixed(1)} h ago`;
  }

  /** A timer whose period the page's refresh selector sets (0: off). */
  function refresher(select, run) {
    let timer = null;
    const schedule = () => {
      if (timer) clearInterval(timer);
      timer = null;
      const seconds = Number(select ? select.value : 0);
      if (seconds > 0) timer = setInterval(run, seconds * 1000);
    };
    if (select) select.addEventListener("change", schedule);
    schedule();
    return {stop() { if (timer) clearInterval(timer); timer = null; if (select) select.disabled = true; }};
  }

  // ------------------------------------------------------------------ figures

  function figureOf(divId) {
    return JSON.parse(document.getElementById(`${divId}-fig`).textContent);
  }

  // The x axes hold the run's seconds (zoom, tails and plans all speak them); their tick
  // labels are rewritten as UTC clock times after every draw, and hovering still shows
  // the seconds. `originMs`: the clock time of second 0 of the run.
  function clockText(originMs, seconds, withDate) {
    const iso = new Date(originMs + seconds * 1000).toISOString();
    return withDate ? `${iso.slice(5, 10)} ${iso.slice(11, 19)}` : iso.slice(11, 19);
  }
  function relabelClock(gd, originMs) {
    const labels = gd.querySelectorAll(".xaxislayer-above text");
    const values = Array.from(labels, (t) => (t.__data__ ? Number(t.__data__.x) : NaN));
    const finite = values.filter(Number.isFinite);
    if (!finite.length) return;
    const withDate = Math.max(...finite) - Math.min(...finite) >= 86400;
    labels.forEach((t, i) => {
      if (!Number.isFinite(values[i])) return;
      t.textContent = clockText(originMs, values[i], withDate);
      t.setAttribute("data-seconds", values[i]);
    });
    gd.dataset.clock = "1";
  }

  async function draw(divId, clockOriginMs) {
    const gd = document.getElementById(divId);
    const figure = figureOf(divId);
    await Plotly.newPlot(gd, figure.data, figure.layout, PLOT_CONFIG);
    if (state.rendered === null) state.rendered = performance.now();
    gd.dataset.rendered = "1";
    const clock = Number.isFinite(clockOriginMs);
    if (clock) relabelClock(gd, clockOriginMs);
    gd.on("plotly_afterplot", () => {
      state.lastPlot = performance.now();
      if (clock) relabelClock(gd, clockOriginMs);
    });
    return gd;
  }

  function tracesByMeta(gd) {
    const index = {};
    gd.data.forEach((trace, i) => { if (trace.meta) index[trace.meta] = i; });
    return index;
  }

  /** Replace the x/y (and hover text) of every trace named in `traces`. */
  function replaceTraces(gd, traces) {
    const index = tracesByMeta(gd);
    const ids = [], xs = [], ys = [];
    for (const [meta, data] of Object.entries(traces || {})) {
      if (!(meta in index)) continue;
      ids.push(index[meta]); xs.push(data.x); ys.push(data.y);
    }
    return ids.length ? Plotly.restyle(gd, {x: xs, y: ys}, ids) : Promise.resolve();
  }

  /** Append new points; each trace keeps at most `keep` of them. Returns points added. */
  function extendTraces(gd, traces, keep) {
    const index = tracesByMeta(gd);
    const plain = {ids: [], x: [], y: []}, marked = {ids: [], x: [], y: [], hovertext: []};
    let added = 0;
    for (const [meta, data] of Object.entries(traces || {})) {
      if (!(meta in index) || !data.x.length) continue;
      const target = data.hovertext ? marked : plain;
      target.ids.push(index[meta]); target.x.push(data.x); target.y.push(data.y);
      if (data.hovertext) target.hovertext.push(data.hovertext);
      added += data.x.length;
    }
    if (plain.ids.length) Plotly.extendTraces(gd, {x: plain.x, y: plain.y}, plain.ids, keep);
    if (marked.ids.length) {
      Plotly.extendTraces(gd, {x: marked.x, y: marked.y, hovertext: marked.hovertext},
                          marked.ids, keep);
    }
    return added;
  }

  function xRangeOf(event) {
    let start = null, end = null, auto = false;
    for (const [key, value] of Object.entries(event)) {
      if (/^xaxis\d*\.range\[0\]$/.test(key)) start = Number(value);
      else if (/^xaxis\d*\.range\[1\]$/.test(key)) end = Number(value);
      else if (/^xaxis\d*\.range$/.test(key)) { start = Number(value[0]); end = Number(value[1]); }
      else if (/^xaxis\d*\.autorange$/.test(key)) auto = true;
    }
    if (start !== null && end !== null && end > start) return {start, end};
    return auto ? {auto: true} : null;
  }

  /** Re-query a finer window when the user zooms (what makes a long run feel like
   * plotly-resampler); `onAuto` runs on a double-click reset. */
  function onZoom(gd, view, load, onAuto) {
    let pending = null;
    gd.on("plotly_relayout", (event) => {
      if (view.ownRelayout) return;
      const range = xRangeOf(event);
      if (!range) return;
      clearTimeout(pending);
      pending = setTimeout(() => {
        if (range.auto) { view.zoomed = false; onAuto(); return; }
        view.zoomed = true;
        load(range.start, range.end).catch(report);
      }, 150);
    });
  }

  async function relayout(gd, view, update) {
    view.ownRelayout = true;
    try { await Plotly.relayout(gd, update); } finally { view.ownRelayout = false; }
  }

  // ------------------------------------------------------------------ one run

  Dash.runPage = async function (cfg) {
    const gd = await draw("run-plot", cfg.clockOriginMs);
    const view = {
      range: cfg.range, lastStep: cfg.lastStep === null ? -1 : cfg.lastStep,
      lastS: cfg.lastS, firstS: cfg.firstS, zoomed: false, ownRelayout: false,
      keep: 2 * cfg.maxPoints,
    };
    const info = document.getElementById("window-info");
    const showInfo = (points, stride) => {
      if (info) info.textContent = `${points} points per trace` +
        (stride > 1 ? ` (every ${stride}th step; zoom in for more)` : " (every step)");
    };
    showInfo(cfg.points, cfg.stride);

    const planEnd = () => {
      let end = null;
      for (const trace of gd.data) {
        if (typeof trace.meta === "string" && trace.meta.startsWith("plan/") && trace.x &&
            trace.x.length) {
          end = Math.max(end === null ? -Infinity : end, trace.x[trace.x.length - 1]);
        }
      }
      return end;
    };

    const bounds = (range) => {
      if (range.key === "custom") return [range.start_s, range.end_s];
      const width = {"15m": 900, "1h": 3600, "1d": 86400}[range.key];
      const last = view.lastS;
      let start = width && last !== null ? last - width : null;
      // A young loop: start at its first step rather than draw an empty hour before it.
      if (start !== null && view.firstS !== null && start < view.firstS) start = null;
      return [start, null];
    };

    const axisRange = (start, end) => {
      const first = start !== null ? start : view.firstS;
      let last = end !== null ? end : view.lastS;
      const plan = planEnd();
      if (end === null && plan !== null) last = Math.max(last, plan);
      return first !== null && last !== null && last > first ? [first, last] : null;
    };

    const load = async (start, end, moveAxis) => {
      const params = new URLSearchParams({max_points: cfg.maxPoints});
      (cfg.tags || []).forEach((tag) => params.append("tags", tag));
      if (start !== null && start !== undefined) params.set("start_s", start);
      if (end !== null && end !== undefined) params.set("end_s", end);
      const body = await getJSON(`${cfg.windowUrl}?${params}`);
      await replaceTraces(gd, body.traces);
      if (body.spans !== null) await setShapes(body.spans, null);
      showInfo(body.points, body.stride);
      if (moveAxis) {
        const range = axisRange(start, end);
        if (range) await relayout(gd, view, {"xaxis.range": range});
      }
      state.windowLoads += 1;
      state.lastWindowAt = performance.now();
      clearError();
      return body;
    };

    const setShapes = async (spans, now) => {
      const kept = (gd.layout.shapes || []).filter(
        (s) => !(s.name || "").startsWith("span:"));
      let current = spans;
      if (current === null) current = spansOf(gd);
      const shapes = kept.map((s) => (now && s.name === "now" ? {...s, x0: now.time_s,
                                                                   x1: now.time_s} : s));
      if (now && !shapes.some((s) => s.name === "now")) {
        shapes.push({type: "line", xref: "x", yref: "paper", x0: now.time_s, x1: now.time_s,
                     y0: 0, y1: 1, line: {dash: "dot", color: "black"}, name: "now"});
      }
      const spanShapes = current.map((s) => ({
        type: "rect", xref: "x", yref: "paper", x0: s.x0, x1: s.x1, y0: 0, y1: 1,
        fillcolor: cfg.spanColors[s.status] || cfg.spanColors.fallback, line: {width: 0},
        layer: "below", name: `span:${s.status}`}));
      const update = {shapes: shapes.concat(spanShapes)};
      if (now) {
        update.annotations = (gd.layout.annotations || []).map((a) => (
          a.name === "now" ? {...a, x: now.time_s, text: `now (step ${now.step})`} : a));
      }
      await relayout(gd, view, update);
    };

    const spansOf = (graph) => (graph.layout.shapes || [])
      .filter((s) => (s.name || "").startsWith("span:"))
      .map((s) => ({x0: s.x0, x1: s.x1, status: s.name.slice(5)}));

    const mergeSpans = (fresh) => {
      const spans = spansOf(gd);
      for (const span of fresh) {
        const last = spans[spans.length - 1];
        const touch = 1e-9 * Math.max(1, Math.abs(span.x1));
        if (last && last.status === span.status && span.x0 <= last.x1 + touch) {
          last.x1 = span.x1;
        } else {
          spans.push({...span});
        }
      }
      return spans;
    };

    const applyRange = async (range, push) => {
      view.range = range;
      const [start, end] = bounds(range);
      document.querySelectorAll("[data-range]").forEach((b) => {
        b.classList.toggle("active", b.dataset.range === range.key);
      });
      if (push) {
        const url = new URL(window.location.href);
        ["range", "start_s", "end_s"].forEach((k) => url.searchParams.delete(k));
        if (range.key === "custom") {
          url.searchParams.set("start_s", range.start_s);
          url.searchParams.set("end_s", range.end_s);
        } else {
          url.searchParams.set("range", range.key);
        }
        window.history.replaceState(null, "", url);
      }
      view.zoomed = false;
      await load(start, end, true);
    };

    document.querySelectorAll("[data-range]").forEach((button) => {
      button.addEventListener("click", () => {
        applyRange({key: button.dataset.range, start_s: null, end_s: null}, true)
          .catch(report);
      });
    });
    const custom = document.getElementById("custom-range");
    if (custom) {
      custom.addEventListener("submit", (event) => {
        event.preventDefault();
        const start = Number(custom.elements.start_s.value);
        const end = Number(custom.elements.end_s.value);
        if (!(isFinite(start) && isFinite(end) && end > start)) {
          report("custom range: the end must be after the start (seconds of the run)");
          return;
        }
        applyRange({key: "custom", start_s: start, end_s: end}, true).catch(report);
      });
    }
    const zoomTo = (start, end) => {  // a zoom is an absolute range now, as in Grafana
      document.querySelectorAll("[data-range]").forEach((b) => b.classList.remove("active"));
      if (custom) {
        custom.elements.start_s.value = Number(start.toPrecision(8));
        custom.elements.end_s.value = Number(end.toPrecision(8));
      }
      return load(start, end, false);
    };
    onZoom(gd, view, zoomTo, () => applyRange(view.range, false).catch(report));

    const health = (cards) => {
      for (const card of cards || []) {
        const box = document.querySelector(`[data-card="${card.key}"]`);
        if (!box) continue;
        box.className = `card ${card.verdict}`;
        box.querySelector(".headline").textContent = card.headline;
        box.querySelector(".detail").textContent = card.detail;
      }
    };

    const poll = async () => {
      const params = new URLSearchParams({after_step: view.lastStep});
      (cfg.tags || []).forEach((tag) => params.append("tags", tag));
      const body = await getJSON(`${cfg.tailUrl}?${params}`);
      state.polls += 1;
      health(body.health);
      const badge = document.getElementById("loop-status");
      if (badge) {
        const status = body.loop_status || body.run_status;
        badge.textContent = status;
        badge.className = `badge ${status}`;
      }
      if (body.reload) {  // too much is new to append: draw the window afresh
        const [start, end] = bounds(view.range);
        const fresh = await load(start, end, true);
        view.lastStep = fresh.last_step;
        view.lastS = fresh.last_s;
        return body;
      }
      if (body.last_step > view.lastStep) {
        state.appended += extendTraces(gd, body.traces, view.keep);
        extendTraces(gd, body.events, view.keep);
        await replaceTraces(gd, body.plan);
        await setShapes(mergeSpans(body.spans), body.now);
        view.lastStep = body.last_step;
        view.lastS = body.last_s;
        if (view.firstS === null) view.firstS = body.first_s;
        if (!view.zoomed && view.range.key !== "custom") {
          const range = axisRange(...bounds(view.range));
          if (range) await relayout(gd, view, {"xaxis.range": range});
        }
        const counter = document.getElementById("last-step");
        if (counter) counter.textContent = String(body.last_step);
      }
      clearError();
      return body;
    };

    if (cfg.live) {  // the refresh selector sets the period (0: off)
      let busy = false;
      const timer = refresher(document.getElementById("refresh"), async () => {
        if (busy) return;
        busy = true;
        try {
          const body = await poll();
          if (body && !body.live) timer.stop();
        } catch (error) { report(error); } finally { busy = false; }
      });
    }
    Dash.poll = poll;
    return gd;
  };

  // ------------------------------------------------------------------ comparison

  Dash.comparePage = async function (cfg) {
    const gd = await draw("compare-plot");
    const view = {zoomed: false, ownRelayout: false};
    const load = async (start, end) => {
      const params = new URLSearchParams({max_points: cfg.maxPoints});
      cfg.runIds.forEach((id) => params.append("runs", id));
      (cfg.tags || []).forEach((tag) => params.append("tags", tag));
      if (start !== null) params.set("start_s", start);
      if (end !== null) params.set("end_s", end);
      const body = await getJSON(`${cfg.windowUrl}?${params}`);
      await replaceTraces(gd, body.traces);
      state.windowLoads += 1;
      state.lastWindowAt = performance.now();
    };
    onZoom(gd, view, load, () => load(null, null).catch(report));
    return gd;
  };

  // ------------------------------------------------------------------ overview

  function dots(cards) {
    return el("span", {class: "dots"}, (cards || []).map((card) => el("span", {
      class: card.verdict, title: `${card.title} ${card.headline}: ${card.detail}`})));
  }

  function readings(values) {
    if (!values || !values.length) return "—";
    return values.map((r) => `${r.tag} = ${fmt(r.value)} ${r.unit}`).join(", ");
  }

  function alarmCell(alarms) {
    if (!alarms || !alarms.length) return el("span", {class: "muted"}, "none");
    const top = alarms[0];
    return el("span", {},
              el("a", {href: "/alarms", class: `badge ${top.priority}`,
                       "data-alarm-count": alarms.length}, String(alarms.length)),
              " ", el("span", {class: "muted"}, `${top.kind}: ${top.message}`));
  }

  function loopRow(loop) {
    const model = loop.model
      ? el("a", {href: `/models/${loop.model.id}`}, `${loop.model.name} v${loop.model.version}`)
      : "—";
    const last = loop.last_step === null ? "no step yet"
      : `step ${loop.last_step} · ${ago(loop.age_s)}`;
    return el("tr", {"data-loop": loop.run_id},
      el("td", {}, el("a", {href: `/runs/${loop.run_id}`}, `run ${loop.run_id}`),
         el("div", {class: "muted"}, loop.controller)),
      el("td", {}, el("span", {class: `badge ${loop.status}`, "data-status": loop.status},
                      loop.status), el("div", {class: "muted"}, last)),
      el("td", {}, dots(loop.health)),
      el("td", {}, model),
      el("td", {class: "readings"}, readings(loop.setpoints)),
      el("td", {class: "readings"}, readings(loop.actuators)),
      el("td", {}, alarmCell(loop.alarms)));
  }

  function processBlock(process) {
    const head = el("h3", {}, process.name, " ",
                    el("span", {class: `badge ${process.status}`}, process.status),
                    " ", el("span", {class: "muted"}, process.description));
    if (!process.loops.length) {
      return el("div", {class: "process", "data-process": process.name}, head,
                el("p", {class: "muted"}, "no control loop"));
    }
    const header = el("tr", {}, ["control run", "status", "safe · controller · model",
                                 "active model", "setpoints (targets)",
                                 "actuators sent", "open alarms"].map((h) => el("th", {}, h)));
    return el("div", {class: "process", "data-process": process.name}, head,
              el("table", {}, el("thead", {}, header),
                 el("tbody", {}, process.loops.map(loopRow))));
  }

  function renderOverview(data) {
    const box = document.getElementById("processes");
    box.replaceChildren(...(data.processes.length ? data.processes.map(processBlock)
      : [el("p", {class: "muted"}, "No process yet: store a run or start a loop.")]));
    const stamp = document.getElementById("generated-at");
    if (stamp) stamp.textContent = data.generated_at;
    const total = document.getElementById("alarm-total");
    if (total) total.textContent = String(data.open_alarms);
  }

  Dash.overview = function (cfg) {
    renderOverview(JSON.parse(document.getElementById("overview-data").textContent));
    state.rendered = performance.now();
    refresher(document.getElementById("refresh"), () => {
      getJSON(cfg.url).then((data) => {
        renderOverview(data);
        state.polls += 1;
        clearError();
      }).catch(report);
    });
  };
})();

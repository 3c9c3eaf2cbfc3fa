// msmtrec dashboard: the federation's status API drawn in the browser, or a finished
// `msmtrec simulate` run embedded in a static report (window.MSMTREC_REPORT).
// Plain JavaScript, no library, no network beyond the status API of the page's own origin:
// charts and the heatmap are inline SVG built here. Data never goes through innerHTML.
"use strict";
(function () {
  const POLL_MS = 2000;
  const SVGNS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fdb", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#6c757d",
    "#d62976", "#3c9d3c", "#00838f", "#a0522d"];
  const SPLIT_PARTS = [
    ["download_seconds", "download", "#8fb3f0"],
    ["evaluation_seconds", "evaluation", "#f3c96b"],
    ["local_training_seconds", "training", "#2f6fdb"],
    ["upload_seconds", "upload", "#5ec2b7"],
    ["client_other_seconds", "other", "#c9ced6"],
    ["close_latency_seconds", "close latency", "#e0a3a3"],
    ["aggregation_seconds", "aggregation", "#e4572e"],
    ["checkpoint_seconds", "checkpoint", "#8e44ad"],
  ];
  const state = { split: null, heatRound: null, followLatest: true, part: null };

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) if (c) node.append(c);
    return node;
  }
  const byId = (id) => document.getElementById(id);
  const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "n/a" : Number(v).toFixed(d));
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
    if (n >= 1e6) return (n / 1e6).toFixed(2) + " MB";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
    return n + " B";
  }
  const color = (i) => PALETTE[i % PALETTE.length];
  const maxOf = (obj) => {
    const vals = Object.values(obj || {}).filter((v) => typeof v === "number");
    return vals.length ? Math.max(...vals) : null;
  };

  // ------------------------------------------------------------------ data models
  // Both sources become one model: {source, title, phase, completed, total, waiting,
  // scenarios, tasks, splits, rounds: [{round, participants, closedBy, seconds, timing,
  // bytesIn, bytesOut, epsilon, personalization, auc: {split: {scenario: {task: auc}}}}],
  // clients: [{scenario, state, lastSeen, rounds}]}.
  function fromStatusApi(status, rounds, clients) {
    const tasks = new Set();
    const splits = new Set();
    const model = {
      source: "live",
      title: `federation · ${status.method} · ${status.preset} · seed ${status.seed}`,
      phase: status.phase,
      completed: status.completed_rounds,
      total: status.total_rounds,
      waiting: status.waiting_for,
      scenarios: status.scenarios.slice(),
      rounds: [],
      clients: [],
    };
    for (const r of rounds) {
      const auc = {};
      for (const [scen, c] of Object.entries(r.clients || {})) {
        for (const [split, perTask] of Object.entries(c.eval || {})) {
          splits.add(split);
          for (const [task, m] of Object.entries(perTask || {})) {
            tasks.add(task);
            ((auc[split] = auc[split] || {})[scen] = auc[split][scen] || {})[task] = m ? m.auc : null;
          }
        }
      }
      const eps = r.dp_epsilon || r.epsilon || null;
      model.rounds.push({
        round: r.round,
        participants: r.participants || [],
        notSubmitted: r.not_submitted || [],
        closedBy: r.closed_by,
        seconds: r.timing && r.timing.wall_seconds != null ? r.timing.wall_seconds : r.duration_seconds,
        timing: r.timing || null,
        bytesIn: r.bytes_in,
        bytesOut: r.bytes_out,
        epsilon: eps && Object.keys(eps).length ? maxOf(eps) : null,
        personalization: r.personalization || null,
        auc,
      });
    }
    for (const c of clients) {
      let st = "not joined";
      if (c.joined) {
        if (c.final_fetched) st = "done";
        else if (c.live) st = c.submitted_current_round ? "submitted" : "live";
        else st = "silent";
      }
      model.clients.push({
        scenario: c.scenario,
        state: st,
        lastSeen: c.last_seen_seconds_ago,
        rounds: c.rounds ? c.rounds.length : 0,
        bytesIn: c.bytes_in,
        bytesOut: c.bytes_out,
      });
    }
    model.tasks = Array.from(tasks);
    model.splits = ["valid", "test"].filter((x) => splits.has(x)).concat(
      Array.from(splits).filter((x) => x !== "valid" && x !== "test"));
    return model;
  }

  function fromSimulation(res) {
    const history = res.history || [];
    const first = history[0] || { valid: {} };
    const scenarios = Object.keys(first.valid || {});
    const tasks = scenarios.length ? Object.keys(first.valid[scenarios[0]]) : [];
    const total = (res.config && res.config.rounds) || history.length;
    const model = {
      source: "simulate",
      title: `simulate · ${res.method} · best round ${res.best_round}`,
      phase: "finished",
      completed: history.length,
      total,
      waiting: `in-process simulation; model selected at round ${res.best_round} by ${res.selected_by || "validation"}`,
      scenarios,
      tasks,
      splits: ["valid", "test"],
      rounds: [],
      clients: [],
    };
    for (const r of history) {
      const auc = { valid: {}, test: {} };
      for (const split of ["valid", "test"]) {
        for (const [scen, perTask] of Object.entries(r[split] || {})) {
          auc[split][scen] = {};
          for (const [task, m] of Object.entries(perTask)) auc[split][scen][task] = m ? m.auc : null;
        }
      }
      const eps = r.dp_epsilon || r.epsilon || null;
      model.rounds.push({
        round: r.round,
        participants: scenarios,
        notSubmitted: [],
        closedBy: "in-process",
        seconds: r.seconds,
        timing: null,
        bytesIn: null,
        bytesOut: null,
        epsilon: eps && Object.keys(eps).length ? maxOf(eps) : null,
        personalization: r.personalization || null,
        auc,
      });
    }
    for (const scen of scenarios) {
      model.clients.push({ scenario: scen, state: "in-process", lastSeen: null, rounds: history.length });
    }
    return model;
  }

  // ------------------------------------------------------------------ header
  function renderHeader(m) {
    byId("title").textContent = m.source === "live" ? "msmtrec federation" : "msmtrec simulation report";
    const phase = byId("phase");
    phase.textContent = m.phase;
    phase.className = "badge" + (m.phase === "finished" ? " finished" : "");
    byId("round-count").textContent = `${m.completed} / ${m.total} rounds`;
    byId("progress-bar").style.width = `${m.total ? (100 * m.completed) / m.total : 0}%`;
    byId("waiting").textContent = m.waiting || "";
    const eps = m.rounds.map((r) => r.epsilon).filter((v) => v !== null);
    const epsNode = byId("epsilon");
    epsNode.hidden = eps.length === 0;
    if (eps.length) epsNode.textContent = `ε spent ${fmt(eps[eps.length - 1], 3)}`;
    byId("footer").textContent = `${m.title}` + (m.source === "live"
      ? ` · updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000}s` : "");
  }

  // ------------------------------------------------------------------ AUC curves
  function renderAuc(m) {
    const choice = byId("split-choice");
    if (!state.split || !m.splits.includes(state.split)) state.split = m.splits[0] || null;
    choice.replaceChildren(...m.splits.map((sp) => h("button", {
      type: "button", class: sp === state.split ? "on" : null, "data-split": sp,
      onclick: () => { state.split = sp; render(); },
    }, sp)));
    const box = byId("auc-charts");
    if (!m.tasks.length || !state.split) {
      box.replaceChildren(h("p", { class: "muted", text: "no evaluation reported yet" }));
      return;
    }
    box.replaceChildren(...m.tasks.map((task) => aucChart(m, task, state.split)));
  }

  function aucChart(m, task, split) {
    const W = 520, H = 260, L = 52, R = 12, T = 12, B = 34;
    const rounds = m.rounds.map((r) => r.round);
    const xMax = Math.max(m.total || 0, rounds.length ? Math.max(...rounds) : 1, 2);
    const series = m.scenarios.map((scen) => m.rounds
      .map((r) => [r.round, ((r.auc[split] || {})[scen] || {})[task]])
      .filter(([, v]) => typeof v === "number"));
    const values = series.flat().map(([, v]) => v);
    let lo = values.length ? Math.min(...values) : 0.5, hi = values.length ? Math.max(...values) : 1;
    const pad = Math.max((hi - lo) * 0.1, 0.005);
    lo = Math.max(0, lo - pad); hi = Math.min(1, hi + pad);
    if (hi - lo < 0.01) { lo = Math.max(0, lo - 0.005); hi = Math.min(1, hi + 0.005); }
    const x = (r) => L + ((r - 1) / Math.max(xMax - 1, 1)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`, width: "100%", class: "auc-chart", "data-task": task,
      role: "img", "aria-label": `${split} AUC of ${task} per scenario across rounds`,
    });
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", text: v.toFixed(3) }));
    }
    const step = Math.max(1, Math.ceil(xMax / 10));
    for (let r = 1; r <= xMax; r += step) {
      svg.append(s("text", { x: x(r), y: H - B + 16, "text-anchor": "middle", text: String(r) }));
    }
    svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", text: "round" }));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    m.scenarios.forEach((scen, i) => {
      const pts = series[i];
      const c = color(i);
      const curve = s("polyline", {
        class: "curve", stroke: c, "data-scenario": scen,
        points: pts.map(([r, v]) => `${x(r).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      });
      curve.append(s("title", { text: `${scen}` }));
      svg.append(curve);
      for (const [r, v] of pts) {
        svg.append(s("circle", { cx: x(r), cy: y(v), r: 3, fill: c },
          s("title", { text: `${scen} round ${r}: ${split} ${task} AUC ${v.toFixed(4)}` })));
      }
    });
    const legend = h("div", { class: "legend" }, m.scenarios.map((scen, i) =>
      h("span", {}, h("i", { style: `background:${color(i)}` }), scen)));
    return h("div", { class: "chart" }, h("h3", { text: `${task}: ${split} AUC` }), svg, legend);
  }

  // ------------------------------------------------------------------ heatmap
  function renderHeatmap(m) {
    const withReport = m.rounds.filter((r) => r.personalization && r.personalization.learn_from);
    const controls = byId("heatmap-controls");
    const body = byId("heatmap-body");
    if (!withReport.length) {
      controls.replaceChildren();
      body.replaceChildren(h("p", { class: "muted", text: m.rounds.length
        ? "this method reports no server-side personalization"
        : "no round completed yet" }));
      return;
    }
    const latest = withReport[withReport.length - 1].round;
    const available = withReport.map((r) => r.round);
    if (state.followLatest || !available.includes(state.heatRound)) state.heatRound = latest;
    const rec = withReport.find((r) => r.round === state.heatRound);
    const parts = Object.keys(rec.personalization.learn_from).filter((p) => rec.personalization.learn_from[p]);
    if (!state.part || !parts.includes(state.part)) state.part = parts[0];
    const slider = h("input", {
      type: "range", min: 0, max: available.length - 1, value: available.indexOf(state.heatRound),
      "aria-label": "round",
      oninput: (ev) => {
        state.heatRound = available[Number(ev.target.value)];
        state.followLatest = state.heatRound === latest;
        render();
      },
    });
    controls.replaceChildren(
      h("span", { id: "heatmap-round", text: `round ${state.heatRound}` }), slider,
      ...parts.map((p) => h("button", {
        type: "button", class: p === state.part ? "on" : null,
        onclick: () => { state.part = p; render(); },
      }, p)));
    body.replaceChildren(h("div", { class: "heatmaps" }, heatmap(rec.personalization, state.part)));
  }

  function heatmap(report, part) {
    const rows = report.learn_from[part] || {};
    const names = report.clients && report.clients.length ? report.clients : Object.keys(rows);
    const longest = Math.max(...names.map((n) => n.length), 1);
    const cell = 46, L = 20 + 7 * longest, T = longest > 5 ? 14 + 5 * longest : 26;
    const W = L + cell * names.length + 10, H = T + cell * names.length + 10;
    const vals = names.flatMap((a) => names.map((b) => (rows[a] || {})[b])).filter((v) => typeof v === "number");
    // colour spans this matrix's own range, so that differences between sources show
    const vmin = vals.length ? Math.min(...vals) : 0, vmax = vals.length ? Math.max(...vals) : 1;
    const shade = (v) => (vmax - vmin < 1e-12 ? 0.5 : (v - vmin) / (vmax - vmin));
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, class: "heatmap", "data-part": part,
      role: "img", "aria-label": `who learns from whom, ${part}` });
    names.forEach((src, j) => {
      const cx = L + j * cell + cell / 2;
      svg.append(longest > 5
        ? s("text", { x: cx, y: T - 8, "text-anchor": "start", transform: `rotate(-40 ${cx} ${T - 8})`, text: src })
        : s("text", { x: cx - 1, y: T - 8, "text-anchor": "middle", text: src }));
    });
    names.forEach((learner, i) => {
      svg.append(s("text", { x: L - 8, y: T + i * cell + cell / 2 + 4, "text-anchor": "end", text: learner }));
      names.forEach((src, j) => {
        const v = (rows[learner] || {})[src];
        const t = typeof v === "number" ? shade(v) : 0;
        const fill = typeof v !== "number" ? "#eeeeee"
          : v >= 0 ? `rgba(47,111,219,${(0.1 + 0.9 * t).toFixed(3)})` : `rgba(228,87,46,${(0.1 + 0.9 * t).toFixed(3)})`;
        svg.append(s("rect", { x: L + j * cell, y: T + i * cell, width: cell - 2, height: cell - 2, fill, class: "cell" },
          s("title", { text: `${learner} learns from ${src}: ${fmt(v, 4)}` })));
        svg.append(s("text", { class: "cell-label", x: L + j * cell + cell / 2 - 1, y: T + i * cell + cell / 2 + 4,
          "text-anchor": "middle", style: t > 0.6 ? "fill:#fff" : null, text: typeof v === "number" ? v.toFixed(2) : "" }));
      });
    });
    return h("div", {}, h("h3", { text: `${part} (row learns from column)` }), svg,
      h("p", { class: "muted", text: `colour from ${fmt(vmin, 3)} (light) to ${fmt(vmax, 3)} (dark)` }));
  }

  // ------------------------------------------------------------------ tables
  function renderRounds(m) {
    const withEps = m.rounds.some((r) => r.epsilon !== null);
    const withBytes = m.rounds.some((r) => r.bytesIn !== null);
    const head = h("tr", {}, h("th", { class: "num", text: "round" }), h("th", { text: "closed by" }),
      h("th", { text: "participants" }), h("th", { class: "num", text: "seconds" }),
      h("th", { text: "duration split" }),
      withBytes ? [h("th", { class: "num", text: "bytes in" }), h("th", { class: "num", text: "bytes out" })] : null,
      h("th", { class: "num", text: `mean ${state.split || ""} AUC` }),
      withEps ? h("th", { class: "num", text: "ε" }) : null);
    const rows = m.rounds.slice().reverse().map((r) => h("tr", { "data-round": r.round },
      h("td", { class: "num", text: r.round }), h("td", { text: r.closedBy }),
      h("td", { text: `${r.participants.length}: ${r.participants.join(" ")}` +
        (r.notSubmitted.length ? ` (missing ${r.notSubmitted.join(" ")})` : "") }),
      h("td", { class: "num", text: fmt(r.seconds, 2) }),
      h("td", {}, durationBar(r)),
      withBytes ? [h("td", { class: "num", text: fmtBytes(r.bytesIn) }), h("td", { class: "num", text: fmtBytes(r.bytesOut) })] : null,
      h("td", { class: "num", text: fmt(meanAuc(r, state.split)) }),
      withEps ? h("td", { class: "num", text: fmt(r.epsilon, 3) }) : null));
    byId("rounds-table").replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
    const legend = byId("split-legend");
    legend.hidden = !m.rounds.some((r) => r.timing);
    legend.replaceChildren(h("span", { class: "muted", text: "duration split of the critical client:" }),
      ...SPLIT_PARTS.map(([, label, c]) => h("span", {}, h("i", { style: `background:${c}` }), label)));
  }

  function meanAuc(r, split) {
    const vals = [];
    for (const perTask of Object.values((r.auc || {})[split] || {})) {
      for (const v of Object.values(perTask)) if (typeof v === "number") vals.push(v);
    }
    return vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null;
  }

  function durationBar(r) {
    if (!r.timing) return h("span", { class: "muted", text: "–" });
    const total = SPLIT_PARTS.reduce((a, [k]) => a + (r.timing[k] || 0), 0) || 1;
    const tip = SPLIT_PARTS.map(([k, label]) => `${label} ${fmt(r.timing[k] || 0, 2)}s`).join(", ");
    return h("div", { class: "bar", title: `${r.timing.critical_client}: ${tip}` },
      SPLIT_PARTS.map(([k, , c]) => h("div", { style: `width:${(100 * (r.timing[k] || 0)) / total}%;background:${c}` })));
  }

  function renderClients(m) {
    const head = h("tr", {}, h("th", { text: "scenario" }), h("th", { text: "state" }),
      h("th", { class: "num", text: "last seen" }), h("th", { class: "num", text: "rounds joined" }));
    const rows = m.clients.map((c) => h("tr", { "data-scenario": c.scenario },
      h("td", { text: c.scenario }),
      h("td", { class: c.state === "silent" ? "state-silent" : c.state === "not joined" ? "state-waiting" : "state-live", text: c.state }),
      h("td", { class: "num", text: c.lastSeen === null || c.lastSeen === undefined ? "–" : `${fmt(c.lastSeen, 1)}s ago` }),
      h("td", { class: "num", text: c.rounds })));
    byId("clients-table").replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
  }

  // ------------------------------------------------------------------ main loop
  let current = null;
  function render() {
    if (!current) return;
    renderHeader(current);
    renderAuc(current);
    renderHeatmap(current);
    renderRounds(current);
    renderClients(current);
    document.body.dataset.rounds = String(current.completed);
  }

  async function getJson(path) {
    const resp = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return resp.json();
  }

  async function poll() {
    try {
      const [status, rounds, clients] = await Promise.all(
        ["v1/status", "v1/rounds", "v1/clients"].map(getJson));
      current = fromStatusApi(status, rounds, clients);
      byId("error").hidden = true;
      render();
      document.body.dataset.loaded = "true";
    } catch (err) {
      const e = byId("error");
      e.hidden = false;
      e.textContent = `status API unreachable (${err.message}); retrying`;
    }
    setTimeout(poll, POLL_MS);
  }

  if (window.MSMTREC_REPORT) {
    current = fromSimulation(window.MSMTREC_REPORT);
    render();
    document.body.dataset.loaded = "true";
  } else {
    poll();
  }
})();

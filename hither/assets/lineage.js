/* hither lineage page: a layered drawing of the lineage DAG in SVG, with pan and zoom,
 * repeated fan-outs folded into group nodes, and a detail panel.
 *
 * Everything in the data comes from store records and is untrusted: it is only ever
 * inserted as text (textContent, append of strings, setAttribute), never as markup. */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("lineage-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const W = 190, H = 46, GAP_X = 96, GAP_Y = 18;
  const MAX_LIST = 300; // rows shown in one list of the panel

  const nodes = DATA.nodes;
  const keys = Object.keys(nodes);
  const ups = new Map(); // key -> edges into it (from its inputs' jobs)
  const downs = new Map(); // key -> edges out of it (to the jobs that used it)
  for (const k of keys) { ups.set(k, []); downs.set(k, []); }
  for (const e of DATA.edges) {
    if (ups.has(e.to) && downs.has(e.from) && e.from !== e.to) {
      ups.get(e.to).push(e);
      downs.get(e.from).push(e);
    }
  }

  const svg = document.getElementById("graph");
  const viewport = document.getElementById("viewport");
  const edgeLayer = document.getElementById("edges");
  const nodeLayer = document.getElementById("nodes");
  const panel = document.getElementById("detail");

  const expanded = new Set(); // ids of the groups the user opened
  const groupIds = new Map(); // group signature -> stable id
  const tf = { x: 0, y: 0, k: 1 }; // pan and zoom of the viewport
  let view = null; // what is drawn: {of, vis, edges}
  let selected = null; // the id of the selected drawn node

  // ------------------------------------------------------------------ collapsing
  // Depth below the root along the longest path; every job's consumers are shallower.
  const ORDER = [];
  const DEPTH = new Map();
  (function () {
    const pending = new Map(keys.map((k) => [k, downs.get(k).length]));
    const queue = keys.filter((k) => pending.get(k) === 0);
    for (let i = 0; i < queue.length; i++) {
      const k = queue[i];
      ORDER.push(k);
      const d = DEPTH.get(k) || 0;
      for (const e of ups.get(k)) {
        DEPTH.set(e.from, Math.max(DEPTH.get(e.from) || 0, d + 1));
        pending.set(e.from, pending.get(e.from) - 1);
        if (pending.get(e.from) === 0) queue.push(e.from);
      }
    }
    const ordered = new Set(ORDER);
    for (const k of keys) if (!ordered.has(k)) ORDER.push(k); // only on a cycle
  })();

  // Jobs of one function that feed the same arguments of the same (drawn) jobs form a
  // group when there are at least DATA.collapse_at of them. Deciding level by level from
  // the root lets a group's own inputs fold too (the inputs of 500 grouped jobs).
  function collapse() {
    const of = new Map(); // key -> drawn id (the key itself, or a group id)
    const groups = new Map();
    const levels = [];
    for (const k of ORDER) {
      const d = DEPTH.get(k) || 0;
      (levels[d] = levels[d] || []).push(k);
    }
    for (const level of levels) {
      if (!level) continue;
      const bySig = new Map();
      for (const k of level) {
        const outs = downs.get(k);
        if (!outs.length) { of.set(k, k); continue; }
        // feeding a group counts as one use, whichever argument it is
        const uses = new Set(outs.map((e) => groups.has(of.get(e.to)) ? of.get(e.to)
                                              : of.get(e.to) + "\u0001" + e.label));
        const sig = nodes[k].fn + "\u0002" + [...uses].sort().join("\u0003");
        if (!bySig.has(sig)) bySig.set(sig, []);
        bySig.get(sig).push(k);
      }
      const made = [];
      const opened = new Set(); // jobs of a group the user expanded: drawn one by one
      for (const [sig, members] of bySig) {
        const id = groupFor(sig, members.length >= DATA.collapse_at);
        for (const k of members) of.set(k, id || k);
        if (id) made.push({ id, members, fn: nodes[members[0]].fn, kind: "fan-out" });
        else if (members.length >= DATA.collapse_at) members.forEach((k) => opened.add(k));
      }
      // Still too many nodes side by side (a wide tree): fold each function's jobs at this
      // distance from the root into one group, whatever they feed.
      if (new Set(level.map((k) => of.get(k))).size > DATA.layer_max) {
        const byFn = new Map();
        for (const k of level) {
          if (opened.has(k) || !downs.get(k).length) continue;
          if (!byFn.has(nodes[k].fn)) byFn.set(nodes[k].fn, []);
          byFn.get(nodes[k].fn).push(k);
        }
        for (const [fn, members] of byFn) {
          const id = groupFor("level\u0002" + DEPTH.get(members[0]) + "\u0002" + fn, members.length > 1);
          if (!id) continue;
          const inside = new Set(members);
          for (const k of members) of.set(k, id);
          made.splice(0, made.length, ...made.filter((g) => !inside.has(g.members[0])));
          made.push({ id, members, fn, kind: "level" });
        }
      }
      for (const g of made) groups.set(g.id, g);
    }
    return { of, groups };
  }

  // The id of the group of signature `sig`, or null when it is not to be folded (too
  // small, or expanded by the user).
  function groupFor(sig, fold) {
    if (!fold) return null;
    if (!groupIds.has(sig)) groupIds.set(sig, "group-" + groupIds.size);
    return expanded.has(groupIds.get(sig)) ? null : groupIds.get(sig);
  }

  function build() {
    const { of, groups } = collapse();
    const vis = new Map();
    for (const k of ORDER) {
      const id = of.get(k);
      if (!vis.has(id)) {
        vis.set(id, { id, group: groups.get(id) || null, key: groups.has(id) ? null : k,
                      ins: [], outs: [], x: 0, y: 0 });
      }
    }
    const edges = new Map();
    for (const e of DATA.edges) {
      const a = of.get(e.from), b = of.get(e.to);
      if (a === undefined || b === undefined || a === b) continue;
      const id = a + "\u0000" + b;
      let ve = edges.get(id);
      if (!ve) {
        ve = { from: a, to: b, labels: new Map() };
        edges.set(id, ve);
        vis.get(a).outs.push(ve);
        vis.get(b).ins.push(ve);
      }
      ve.labels.set(e.label, (ve.labels.get(e.label) || 0) + 1);
    }
    layout(vis);
    return { of, vis, edges: [...edges.values()] };
  }

  // ------------------------------------------------------------------ layout
  // Layers by longest distance to the root (so each job sits next to its consumer), the
  // root rightmost; then a few barycenter sweeps to reduce edge crossings.
  function layout(vis) {
    const layerOf = new Map();
    const pending = new Map();
    for (const v of vis.values()) pending.set(v.id, v.outs.length);
    const queue = [...vis.values()].filter((v) => v.outs.length === 0);
    for (let i = 0; i < queue.length; i++) {
      const v = queue[i];
      const d = layerOf.get(v.id) || 0;
      layerOf.set(v.id, d);
      for (const e of v.ins) {
        layerOf.set(e.from, Math.max(layerOf.get(e.from) || 0, d + 1));
        pending.set(e.from, pending.get(e.from) - 1);
        if (pending.get(e.from) === 0) queue.push(vis.get(e.from));
      }
    }
    const layers = [];
    const seen = new Set();
    const stack = queue.filter((v) => v.outs.length === 0).reverse();
    for (const v of vis.values()) if (!layerOf.has(v.id)) { layerOf.set(v.id, 0); stack.unshift(v); }
    while (stack.length) { // depth-first from the root, inputs in name order: a first order
      const v = stack.pop();
      if (seen.has(v.id)) continue;
      seen.add(v.id);
      const d = layerOf.get(v.id);
      (layers[d] = layers[d] || []).push(v);
      const ins = [...v.ins].sort((a, b) => edgeLabel(b).localeCompare(edgeLabel(a)));
      for (const e of ins) if (!seen.has(e.from)) stack.push(vis.get(e.from));
    }
    const pos = new Map();
    const place = (layer) => layer.forEach((v, i) => pos.set(v.id, i - (layer.length - 1) / 2));
    layers.forEach((layer) => layer && place(layer));
    const sweep = (layer, neighbours) => {
      const key = new Map();
      for (const v of layer) {
        const ns = neighbours(v);
        key.set(v.id, ns.length ? ns.reduce((s, id) => s + pos.get(id), 0) / ns.length
                                : pos.get(v.id));
      }
      layer.sort((a, b) => key.get(a.id) - key.get(b.id) || pos.get(a.id) - pos.get(b.id));
      place(layer);
    };
    for (let round = 0; round < 4; round++) {
      for (let d = 1; d < layers.length; d++) if (layers[d]) sweep(layers[d], (v) => v.outs.map((e) => e.to));
      for (let d = layers.length - 2; d >= 0; d--) if (layers[d]) sweep(layers[d], (v) => v.ins.map((e) => e.from));
    }
    const last = layers.length - 1;
    for (const v of vis.values()) {
      v.x = (last - layerOf.get(v.id)) * (W + GAP_X);
      v.y = pos.get(v.id) * (H + GAP_Y);
    }
  }

  // ------------------------------------------------------------------ drawing
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) e.setAttribute(name, String(value));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fitText(text, width) {
    const max = Math.floor(width / 6.6);
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function edgeLabel(e) {
    return [...e.labels].map(([label, n]) => (n > 1 ? label + " ×" + n : label)).join(", ");
  }

  function statusCounts(members) {
    const counts = {};
    for (const k of members) counts[nodes[k].status] = (counts[nodes[k].status] || 0) + 1;
    return counts;
  }

  function nodeClass(v) {
    if (v.group) {
      const c = statusCounts(v.group.members);
      const hit = v.group.members.every((k) => nodes[k].cache_hit === true);
      return "node group " + (c.error ? "error" : c.missing ? "missing" : "finished") +
        (hit ? " hit" : "");
    }
    const n = nodes[v.key];
    return "node " + n.status + (n.cache_hit === true ? " hit" : "") +
      (v.key === DATA.root ? " root" : "");
  }

  function nodeLines(v) {
    if (v.group) {
      const c = statusCounts(v.group.members);
      const parts = Object.keys(c).sort().map((s) => c[s] + " " + s);
      return [v.group.fn + " ×" + v.group.members.length, parts.join(", ")];
    }
    const n = nodes[v.key];
    if (n.status === "missing") return [v.key.slice(0, 12), n.note];
    const hit = n.cache_hit === true ? " · cached" : "";
    return [n.fn + " " + n.version, n.result + hit];
  }

  // Where each edge leaves its job and enters its consumer: spread along the node's side,
  // in the order of the nodes at the other end, so the curves and labels do not meet.
  function ports(vis) {
    const port = new Map();
    for (const e of view.edges) port.set(e, {});
    for (const v of vis.values()) {
      const spread = (list, other, side) => {
        const sorted = [...list].sort((a, b) => vis.get(other(a)).y - vis.get(other(b)).y);
        const step = Math.min(H / (sorted.length + 1), 12);
        const top = v.y + H / 2 - (step * (sorted.length - 1)) / 2;
        sorted.forEach((e, i) => { port.get(e)[side] = top + i * step; });
      };
      spread(v.ins, (e) => e.from, "in");
      spread(v.outs, (e) => e.to, "out");
    }
    return port;
  }

  function draw() {
    view = build();
    edgeLayer.replaceChildren();
    nodeLayer.replaceChildren();
    const port = ports(view.vis);
    for (const e of view.edges) {
      const a = view.vis.get(e.from), b = view.vis.get(e.to);
      const x1 = a.x + W, y1 = port.get(e).out, x2 = b.x, y2 = port.get(e).in, mx = (x1 + x2) / 2;
      const g = svgEl("g", { class: "edge", "data-from": e.from, "data-to": e.to });
      g.append(svgEl("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
      // the label sits three quarters along the curve, near the input it feeds
      const t = 0.75, u = 1 - t;
      const lx = u * u * u * x1 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x2;
      const ly = u * u * u * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t * t * t * y2;
      g.append(svgEl("text", { class: "edge-label", x: lx, y: ly - 4 }, edgeLabel(e)));
      edgeLayer.append(g);
    }
    for (const v of view.vis.values()) {
      const attrs = { class: nodeClass(v) + (v.id === selected ? " selected" : ""),
                      transform: `translate(${v.x},${v.y})` };
      attrs[v.group ? "data-group" : "data-key"] = v.id;
      const g = svgEl("g", attrs);
      if (v.group) g.append(svgEl("rect", { class: "stack", x: 5, y: -5, width: W, height: H, rx: 6 }));
      g.append(svgEl("rect", { width: W, height: H, rx: 6 }));
      const [l1, l2] = nodeLines(v);
      g.append(svgEl("text", { class: "l1", x: 10, y: 19 }, fitText(l1, W - 20)));
      g.append(svgEl("text", { class: "l2", x: 10, y: 36 }, fitText(l2 || "", W - 20)));
      g.append(svgEl("title", {}, l1 + "\n" + (l2 || "") + (v.group ? "" : "\n" + v.key)));
      nodeLayer.append(g);
    }
    const n = keys.length, shown = view.vis.size;
    document.getElementById("summary").textContent =
      n + " jobs" + (shown < n ? ", drawn as " + shown + " nodes" : "") +
      (DATA.truncated ? "; " + DATA.truncated + " more not read (node limit)" : "");
  }

  // ------------------------------------------------------------------ pan and zoom
  function apply() {
    viewport.setAttribute("transform", `translate(${tf.x},${tf.y}) scale(${tf.k})`);
  }

  function fit() {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const v of view.vis.values()) {
      x0 = Math.min(x0, v.x); y0 = Math.min(y0, v.y - 6);
      x1 = Math.max(x1, v.x + W + 6); y1 = Math.max(y1, v.y + H);
    }
    const r = svg.getBoundingClientRect(), pad = 30;
    tf.k = Math.max(0.02, Math.min((r.width - 2 * pad) / (x1 - x0), (r.height - 2 * pad) / (y1 - y0), 1.3));
    tf.x = (r.width - (x1 - x0) * tf.k) / 2 - x0 * tf.k;
    tf.y = (r.height - (y1 - y0) * tf.k) / 2 - y0 * tf.k;
    apply();
  }

  function centerOn(id) {
    const v = view.vis.get(id);
    if (!v) return;
    const r = svg.getBoundingClientRect();
    tf.k = Math.max(tf.k, 0.6);
    tf.x = r.width / 2 - (v.x + W / 2) * tf.k;
    tf.y = r.height / 2 - (v.y + H / 2) * tf.k;
    apply();
  }

  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = svg.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const k = Math.max(0.02, Math.min(4, tf.k * Math.exp(-ev.deltaY * 0.0015)));
    tf.x = mx - (mx - tf.x) * k / tf.k;
    tf.y = my - (my - tf.y) * k / tf.k;
    tf.k = k;
    apply();
  }, { passive: false });

  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, y: ev.clientY, tx: tf.x, ty: tf.y, moved: false };
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) > 3) {
      drag.moved = true;
      svg.setPointerCapture(ev.pointerId); // keep panning when the pointer leaves the svg
    }
    if (drag.moved) {
      tf.x = drag.tx + dx; tf.y = drag.ty + dy;
      apply();
      svg.classList.add("dragging");
    }
  });
  svg.addEventListener("pointerup", (ev) => {
    const d = drag;
    drag = null;
    svg.classList.remove("dragging");
    if (!d || d.moved) return;
    const g = nodeAt(ev);
    if (g) select(g.getAttribute("data-key") || g.getAttribute("data-group"));
  });
  svg.addEventListener("dblclick", (ev) => {
    const g = nodeAt(ev);
    if (g && g.hasAttribute("data-group")) expand(g.getAttribute("data-group"));
  });

  function nodeAt(ev) {
    const hit = document.elementFromPoint(ev.clientX, ev.clientY);
    return hit && hit.closest ? hit.closest("g.node") : null;
  }

  // ------------------------------------------------------------------ selection
  function select(id) {
    selected = id;
    for (const g of nodeLayer.children) {
      const gid = g.getAttribute("data-key") || g.getAttribute("data-group");
      g.classList.toggle("selected", gid === id);
    }
    const v = view.vis.get(id);
    if (!v) return;
    if (v.group) showGroup(v.group); else showNode(v.key);
  }

  function expand(groupId) {
    expanded.add(groupId);
    draw();
    select(selected);
  }

  // Draw `key` as its own node (opening the groups it is folded into), select and center it.
  function reveal(key) {
    if (!nodes[key]) return;
    for (let i = 0; i < keys.length && view.of.get(key) !== key; i++) {
      expanded.add(view.of.get(key));
      view = build();
    }
    selected = key;
    draw();
    select(key);
    centerOn(key);
  }

  // ------------------------------------------------------------------ the panel
  function el(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }

  function jobButton(key) {
    const n = nodes[key];
    const b = el("button", "job", key.slice(0, 12) + (n && n.fn !== "?" ? " " + n.fn : ""));
    b.type = "button";
    b.title = key;
    b.addEventListener("click", () => reveal(key));
    return b;
  }

  function table(rows, head) {
    const t = el("table", null);
    if (head) t.append(el("tr", null, ...head.map((h) => el("th", null, h))));
    for (const row of rows) t.append(el("tr", null, ...row.map((c) => el("td", null, c))));
    return t;
  }

  function section(title, ...kids) {
    return el("section", null, el("h3", null, title), ...kids);
  }

  function listJobs(list) {
    const box = el("div", "jobs", ...list.slice(0, MAX_LIST).map(jobButton));
    if (list.length > MAX_LIST) box.append(el("span", "dim", " and " + (list.length - MAX_LIST) + " more"));
    return box;
  }

  function showNode(key) {
    const n = nodes[key];
    const out = [];
    const badge = el("span", "badge " + n.status, n.status === "missing" ? "no record" : n.status);
    out.push(el("h2", null, n.fn + " " + n.version + " ", badge,
                n.cache_hit === true ? el("span", "badge hit", "cache hit") : null,
                n.cache_hit === false ? el("span", "badge ran", "ran") : null));
    out.push(el("p", "key", el("code", null, key)));
    if (n.status === "missing") {
      out.push(el("p", "dim", n.note));
    } else {
      if (n.label && n.label !== n.fn) out.push(el("p", null, "label: " + n.label));
      if (n.status === "finished") out.push(el("p", null, "result: ", el("code", null, n.result)));
      if (n.error) {
        out.push(el("p", "error", n.error.type + ": " + n.error.message));
        if (n.error.traceback) out.push(el("pre", "traceback", n.error.traceback));
      }
      out.push(section("Provenance", table(n.provenance.map(([k, v]) => [k, v]))));
      const rows = n.inputs.map((i) => [
        i.name, i.desc, el("code", null, i.digest.slice(0, 12)),
        i.jobs.length ? listJobs(i.jobs) : el("span", "dim", "value")]);
      out.push(section("Inputs", rows.length ? table(rows, ["name", "value", "digest", "from job"])
                                             : el("p", "dim", "none")));
      const used = [...new Set(downs.get(key).map((e) => e.to))];
      if (used.length) out.push(section("Used by", listJobs(used)));
      out.push(section("What changed (explain)", ...explainPart(n)));
      const con = el("pre", "console");
      for (const [stamp, text, isErr] of n.console) {
        con.append(el("span", isErr ? "stderr" : null, stamp + " " + text + "\n"));
      }
      const more = n.console_total > n.console.length
        ? " (last " + n.console.length + " of " + n.console_total + " lines)" : "";
      out.push(section("Console" + more, n.console.length ? con : el("p", "dim", "no output")));
      const sources = DATA.sources[n.code] || {};
      const pieces = Object.keys(sources);
      out.push(section("Source", ...(pieces.length ? pieces.map((p) => el("div", "source",
        el("h4", null, p), el("pre", "code", sources[p])))
        : [el("p", "dim", "no source was recorded (code identified by bytecode)")])));
    }
    panel.replaceChildren(...out);
    panel.scrollTop = 0;
    history.replaceState(null, "", "#" + encodeURIComponent(key));
  }

  function explainPart(n) {
    const ex = n.explain;
    if (!ex) return [el("p", "dim", "not available for this record")];
    if (!ex.nearest) {
      return [el("p", "dim", "no other record of " + n.fn + " in the store: nothing to compare with")];
    }
    const near = nodes[ex.nearest] ? jobButton(ex.nearest) : el("code", null, ex.nearest.slice(0, 12));
    const head = el("p", null, "nearest other record of " + n.fn + ": ", near,
                    " (version " + ex.version + ", recorded " + ex.recorded + ")");
    if (!ex.differences.length) return [head, el("p", "dim", "no difference in the key parts")];
    return [head, el("ul", "differences", ...ex.differences.map((d) => el("li", null, d)))];
  }

  function showGroup(group) {
    const c = statusCounts(group.members);
    const button = el("button", "expand", "Expand: draw these " + group.members.length + " jobs");
    button.type = "button";
    button.addEventListener("click", () => expand(group.id));
    const order = { error: 0, missing: 1, finished: 2 };
    const members = [...group.members].sort((a, b) => order[nodes[a].status] - order[nodes[b].status]);
    const rows = members.slice(0, MAX_LIST).map((k) => [
      jobButton(k), el("span", "badge " + nodes[k].status, nodes[k].status), nodes[k].result]);
    const args = new Set(), users = new Set();
    for (const k of group.members) for (const e of downs.get(k)) { args.add(e.label); users.add(e.to); }
    const why = group.kind === "level"
      ? "all jobs of " + group.fn + " at this distance from the result (a wide layer)"
      : group.members.length + " jobs of " + group.fn + " feeding the same input";
    panel.replaceChildren(
      el("h2", null, group.fn + " ×" + group.members.length),
      el("p", null, why + ": " + [...args].sort().join(", ") + " of " + users.size +
         (users.size === 1 ? " job" : " jobs")),
      el("p", null, Object.keys(c).sort().map((s) => c[s] + " " + s).join(", ")),
      button,
      section("Jobs", table(rows, ["job", "status", "result"]),
              members.length > MAX_LIST ? el("p", "dim", (members.length - MAX_LIST) + " more") : null));
    panel.scrollTop = 0;
  }

  // ------------------------------------------------------------------ start
  const root = nodes[DATA.root];
  document.getElementById("title").textContent =
    "Lineage of " + (root ? root.fn + " " + root.version : "?") + " · " + DATA.root.slice(0, 12);
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("collapse").addEventListener("click", () => {
    expanded.clear();
    draw();
    fit();
  });
  draw();
  fit();
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted && nodes[wanted]) reveal(wanted);
  document.body.setAttribute("data-ready", "1");
})();

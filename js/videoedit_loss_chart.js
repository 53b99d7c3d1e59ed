// Live loss chart on the pack's training nodes: the server sends "videoedit.training" messages
// ({node, step, total, loss} per step; {reset, total} at start; {history} after a resume) and
// the chart is drawn in the node's body on the canvas while the run goes on.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "videoedit.training";
const TRAINERS = new Set(["VideoEditCFGDistillTrain"]); // training nodes of the pack
const CHART_H = 120;
const charts = new Map(); // node id (string) -> {losses: number[], total: number}

function drawLossChart(ctx, node, st) {
  const w = node.size[0], h = node.size[1];
  const x0 = 8, y0 = h - CHART_H - 6, cw = w - 16, ch = CHART_H;
  ctx.save();
  ctx.fillStyle = "#18181c";
  ctx.fillRect(x0, y0, cw, ch);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(x0, y0, cw, ch);
  const vals = st.losses.filter((v) => Number.isFinite(v));
  const last = vals.length ? vals[vals.length - 1] : NaN;
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(`loss ${Number.isFinite(last) ? last.toPrecision(4) : "-"}  step ${st.losses.length}/${st.total || "?"}`,
               x0 + 4, y0 + 12);
  if (vals.length) {
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi > lo ? hi - lo : 1e-12;
    const n = Math.max(st.total || st.losses.length, 2) - 1;
    ctx.strokeStyle = "#5aaaff";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    st.losses.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const px = x0 + 4 + (cw - 8) * (i / n);
      const py = y0 + ch - 6 - (ch - 24) * ((v - lo) / span);
      if (started) ctx.lineTo(px, py); else { ctx.moveTo(px, py); started = true; }
    });
    ctx.stroke();
  }
  ctx.restore();
}

function onMessage({ detail }) {
  if (!detail || detail.node === undefined || detail.node === null) return;
  const id = String(detail.node);
  let st = charts.get(id);
  if (!st || detail.reset) {
    st = { losses: [], total: detail.total || 0 };
    charts.set(id, st);
  }
  if (Array.isArray(detail.history)) st.losses = detail.history.slice();
  if (typeof detail.loss === "number" && detail.step >= 1) st.losses[detail.step - 1] = detail.loss;
  if (detail.total) st.total = detail.total;
  const node = app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
  if (node) {
    if (!node.__videoeditChart) { // make room for the chart once
      node.__videoeditChart = true;
      node.setSize([Math.max(node.size[0], 260), node.size[1] + CHART_H + 12]);
    }
    node.setDirtyCanvas(true, true);
  }
}

app.registerExtension({
  name: "VideoEdit.LossChart",
  async setup() {
    api.addEventListener(EVENT, onMessage);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TRAINERS.has(nodeData.name)) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      const st = charts.get(String(this.id));
      if (st && st.losses.length && !this.flags?.collapsed) drawLossChart(ctx, this, st);
      return r;
    };
  },
});

// For the browser test and other extensions: the charts and the event name.
window.VideoEditLossChart = { EVENT, TRAINERS, charts, onMessage };

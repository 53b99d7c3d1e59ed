// Live loss chart on the pack's training nodes: the server sends "videoedit.training" messages
// ({node, step, total, loss} per step; {reset, total} at start; {history} after a resume) and
// the chart is drawn in the node's body on the canvas while the run goes on.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "videoedit.training";
const TRAINERS = new Set(["VideoEditCFGDistillTrain", "VideoEditEVELoRAAligner"]); // training nodes of the pack
TRAINERS.add("VideoEditOneStepDistillTrain"); // MoViE one-step student (Stage 4)
const CHART_H = 120;
const CHART_WIDGET = "videoedit_loss_chart";
const charts = new Map(); // node id (string) -> {losses: number[], total: number}

function drawLossChart(ctx, x0, y0, cw, ch, st) {
  ctx.save();
  ctx.fillStyle = "#18181c";
  ctx.fillRect(x0, y0, cw, ch);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(x0, y0, cw, ch);
  const vals = st.losses.filter((v) => Number.isFinite(v));
  const last = vals.length ? vals[vals.length - 1] : NaN;
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(vals.length ? `loss ${last.toPrecision(4)}  step ${st.losses.length}/${st.total || "?"}`
                           : "loss chart: run the workflow", x0 + 4, y0 + 12);
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
  if (!node) return;
  // Nodes 2.0 (Vue renderer, Comfy.VueNodes.Enabled) draws a canvas widget into a <canvas> of its
  // own and repaints it only when widget.triggerDraw() is called (the frontend sets it while the
  // widget is mounted); the classic LiteGraph canvas repaints the node on its next frame.
  node.widgets?.find((w) => w.name === CHART_WIDGET)?.triggerDraw?.();
  node.setDirtyCanvas(true, true);
}

// The chart is a canvas widget of its own (after the node's inputs), so the frontend lays it out
// like any widget: a multiline text box cannot grow over it, and it never reaches the prompt or
// the saved widget values (serialize: false).
function chartWidget(node) {
  return {
    name: CHART_WIDGET,
    type: "videoedit.loss_chart",
    value: null,
    serialize: false,
    options: { serialize: false },
    computeSize: (width) => [width, CHART_H + 8],
    draw(ctx, n, width, y) {
      const st = charts.get(String(n.id)) ?? { losses: [], total: 0 };
      drawLossChart(ctx, 10, y + 4, width - 20, CHART_H, st);
      n.__videoeditChartDrawn = st.losses.length; // what the last frame showed (browser test)
    },
  };
}

app.registerExtension({
  name: "VideoEdit.LossChart",
  async setup() {
    api.addEventListener(EVENT, onMessage);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TRAINERS.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.addCustomWidget(chartWidget(this));
      const size = this.computeSize();
      this.setSize([Math.max(this.size[0], size[0], 280), Math.max(this.size[1], size[1])]);
      return r;
    };
  },
});

// For the browser test and other extensions: the charts and the event name.
window.VideoEditLossChart = { EVENT, TRAINERS, CHART_WIDGET, charts, onMessage };

"""Writes the MoViE workflow templates (UI format) from compact descriptions, with the input
lists and widget order taken from the node definitions of the in-process ComfyUI.
Run: .venv/bin/python tools/make_movie_workflows.py"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness import embedded  # noqa: E402
from harness.model_catalog import models_note, stamp_models  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEEDS = {"seed", "noise_seed"}


def build(name, title, nodes, note, comfy):
    """nodes: list of (id, type, pos, widgets{name: value}, links{input: (src_id, slot)})."""
    nc = comfy.node_classes
    ui_nodes, links, link_id = [], [], 0
    outs = {}
    for nid, typ, pos, widgets, ins in nodes:
        cls = nc[typ]
        spec = cls.INPUT_TYPES()
        inputs, wvals = [], []
        for section in ("required", "optional"):
            for iname, entry in spec.get(section, {}).items():
                t = entry[0]
                opts = entry[1] if len(entry) > 1 else {}
                tname = "COMBO" if isinstance(t, list) or t == "COMBO" else t
                is_widget = tname in WIDGET_TYPES
                item = {"name": iname, "type": tname, "link": None}
                if section == "optional":
                    item["shape"] = 7
                if iname in ins:
                    link_id += 1
                    src, slot = ins[iname]
                    links.append([link_id, src, slot, nid, len(inputs), tname])
                    item["link"] = link_id
                    outs.setdefault((src, slot), []).append(link_id)
                if is_widget:
                    item["widget"] = {"name": iname}
                    if iname in widgets:
                        v = widgets[iname]
                    elif "default" in opts:
                        v = opts["default"]
                    else:
                        v = t[0] if isinstance(t, list) and t else (opts.get("options") or [""])[0]
                    wvals.append(v)
                    if opts.get("control_after_generate") or (tname == "INT" and iname in SEEDS
                                                              and opts.get("control_after_generate") is not False):
                        wvals.append("fixed")
                    if opts.get("video_upload") or opts.get("image_upload"):
                        pass
                if is_widget or iname in ins or tname not in WIDGET_TYPES:
                    inputs.append(item)
        if typ == "LoadVideo":
            wvals.append("image")
        ui_nodes.append({"id": nid, "type": typ, "pos": list(pos), "size": [320, 120], "flags": {}, "order": len(ui_nodes),
                         "mode": 0, "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": typ},
                         "widgets_values": wvals, "_cls": cls})
    for n in ui_nodes:
        cls = n.pop("_cls")
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        n["outputs"] = [{"name": nm, "type": t if isinstance(t, str) else "COMBO", "links": outs.get((n["id"], i)) or None}
                        for i, (nm, t) in enumerate(zip(names, cls.RETURN_TYPES))]
    nid = max(n["id"] for n in ui_nodes) + 1
    ui_nodes.append({"id": nid, "type": "Note", "pos": [0, -420], "size": [640, 360], "flags": {}, "order": len(ui_nodes),
                     "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": "Note"},
                     "widgets_values": [note]})
    wf = {"last_node_id": nid, "last_link_id": link_id, "nodes": ui_nodes, "links": links,
          "groups": [{"id": 1, "title": title, "bounding": [-20, -500, 2100, 60], "color": "#3f789e", "font_size": 24,
                      "flags": {}}], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [100, 560]}}, "version": 0.4}
    stamp_models(wf)  # properties.models per loader: the missing-models dialog's download list
    (ROOT / "example_workflows" / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")


IP2P = "instruct-pix2pix-00-22000.safetensors"
GUIDANCE = "movie_guidance.safetensors"  # what CFG Distill (train) writes under its default output_name


def common(ckpt_pos=(0, 380), empty=True, core_encode=False):
    """core_encode: encode with core VAEEncode + VAELoader("taesd") (same result as TAESD Encode) so
    that consecutive templates never share a cached sub-graph on the test server."""
    enc = [(9, "VAELoader", (0, 620), {"vae_name": "taesd"}, {}),
           (6, "VAEEncode", (600, 0), {}, {"pixels": (2, 0), "vae": (9, 0)})] if core_encode else \
          [(6, "VideoEditTAESDEncode", (600, 0), {"variant": "taesd", "frames_per_chunk": 16}, {"images": (2, 0)})]
    nodes = [
        (1, "LoadVideo", (0, 0), {"file": "videoedit_sample.mp4"}, {}),
        (2, "GetVideoComponents", (300, 0), {}, {"video": (1, 0)}),
        (3, "CheckpointLoaderSimple", ckpt_pos, {"ckpt_name": IP2P}, {}),
        (4, "CLIPTextEncode", (350, 300), {"text": "make it look like a watercolor painting"}, {"clip": (3, 1)}),
        (5, "CLIPTextEncode", (350, 520), {"text": ""}, {"clip": (3, 1)}),
    ]
    return [n for n in nodes if empty or n[0] != 5] + enc


def sampling_tail(guider_id, model_id, steps, x=1500):
    return [
        (20, "RandomNoise", (x, 0), {"noise_seed": 0}, {}),
        (21, "KSamplerSelect", (x, 150), {"sampler_name": "euler"}, {}),
        (22, "BasicScheduler", (x, 280), {"scheduler": "normal", "steps": steps, "denoise": 1.0}, {"model": (model_id, 0)}),
        (23, "SamplerCustomAdvanced", (x + 350, 0), {}, {"noise": (20, 0), "guider": (guider_id, 0), "sampler": (21, 0),
                                                          "sigmas": (22, 0), "latent_image": (guider_id, 1)}),
        (24, "VideoEditTAESDDecode", (x + 700, 0), {"variant": "taesd", "frames_per_chunk": 16}, {"samples": (23, 0)}),
        (25, "CreateVideo", (x + 1000, 0), {"fps": 30.0}, {"images": (24, 0), "fps": (2, 2)}),
    ]


def main():
    comfy = embedded.boot_in_process(embedded.REPO_ROOT / ".comfy" / "test-base")
    teacher = common(core_encode=True) + [
        (7, "VideoEditCrossFrameAttention", (600, 300), {"anchor": "middle", "anchor_count": 3}, {"model": (3, 0)}),
        (8, "VideoEditIP2PGuider", (1000, 300), {"image_guidance": 1.5, "text_guidance": 7.5},
         {"model": (7, 0), "instruction": (4, 0), "empty_text": (5, 0), "source_latent": (6, 0)}),
        *sampling_tail(8, 7, 3),
        (26, "SaveVideo", (2900, 0), {"filename_prefix": "videoedit/movie_ip2p"}, {"video": (25, 0)}),
    ]
    build("movie_ip2p_teacher_edit", "MoViE teacher: InstructPix2Pix + cross-frame anchor + two knobs + TAESD", teacher,
          "MoViE's base pipeline (Sec. 3.1-3.2): InstructPix2Pix edits every frame from an instruction; Cross-Frame "
          "Attention makes every frame also attend to the middle frame (anchor) so the edit stays consistent; "
          "TAESD replaces the SD VAE (encode + decode). The guider is the two-knob guidance of MoViE Eq. 1 "
          "(core DualCFGGuider wired exactly to it): image_guidance = how much of the source to keep, "
          "text_guidance = how strongly to follow the instruction. 3 UNet passes per step.\n\n" + models_note([IP2P, "taesd"]) +
          "\n\nThe template runs 3 steps so it can be tried on the sample clip; use 10-20 steps for real edits. "
          "Sample all frames in one batch (the anchor is chosen among the frames of the batch).", comfy)

    train = common(empty=False, core_encode=True) + [
        (10, "VideoEditCFGDistillTrain", (600, 300), {
            "data_mode": "my frames (data-free)", "instructions": "make it look like a watercolor painting",
            "dataset_folder": "", "resolution": 256, "steps": 1, "batch_size": 1, "learning_rate": 1e-5,
            "adapter": "lora", "lora_rank": 4, "seed": 0, "checkpoint_every": 1,
            "output_name": "movie_guidance_demo", "resume": False},
         {"model": (3, 0), "clip": (3, 1), "vae": (9, 0), "frames": (2, 0)}),
        (11, "PreviewImage", (1000, 700), {}, {"images": (10, 1)}),
        (7, "VideoEditCrossFrameAttention", (1000, 300), {"anchor": "middle", "anchor_count": 3}, {"model": (10, 0)}),
        (8, "VideoEditCFGDistilledGuider", (1250, 300), {"image_guidance": 1.5, "text_guidance": 7.5},
         {"model": (7, 0), "instruction": (4, 0), "source_latent": (6, 0)}),
        *sampling_tail(8, 7, 2, x=1600),
        (26, "SaveVideo", (3000, 0), {"filename_prefix": "videoedit/movie_distill_train"}, {"video": (25, 0)}),
    ]
    build("movie_cfg_distill_train", "MoViE: CFG distillation training (Alg. 1), then a distilled edit", train,
          "Multimodal guidance distillation (MoViE Sec. 3.3, Alg. 1): trains a guidance adapter so the student "
          "predicts the 3-pass two-knob guidance in ONE pass, for image guidance 1-3 and text guidance 2-14. "
          "Data-free mode: the teacher makes the targets on your own frames and instructions (one per line); "
          "or point dataset_folder at (source, instruction, edited) triples. The node shows a live loss chart, "
          "stops at cancel, checkpoints every checkpoint_every steps (output/videoedit_training/<name>) and "
          "resumes exactly; the adapter goes to models/videoedit_guidance/<output_name>.safetensors.\n\n"
          + models_note([IP2P, "taesd"]) + "\n\nThe template trains 1 step at the sample clip's size so it runs anywhere; real runs: "
          "500-5000 steps, learning_rate 1e-5, batch as memory allows, 256x256 frames (GPU). For multi-GPU "
          "training use the headless command (python -m harness.train config.json, under torchrun).", comfy)

    distilled = common(empty=False) + [
        (10, "VideoEditLoadGuidanceAdapter", (0, 800), {"adapter_name": GUIDANCE},
         {"model": (3, 0)}),
        (7, "VideoEditCrossFrameAttention", (600, 300), {"anchor": "middle", "anchor_count": 3}, {"model": (10, 0)}),
        (8, "VideoEditCFGDistilledGuider", (1000, 300), {"image_guidance": 1.5, "text_guidance": 7.5},
         {"model": (7, 0), "instruction": (4, 0), "source_latent": (6, 0)}),
        *sampling_tail(8, 7, 3),
        (26, "SaveVideo", (2900, 0), {"filename_prefix": "videoedit/movie_distilled"}, {"video": (25, 0)}),
    ]
    build("movie_distilled_edit", "MoViE fast path: CFG-distilled edit (1 UNet pass per step) + TAESD", distilled,
          "The fast path: the guidance-distilled student (teacher + adapter from CFG Distill (train)) needs ONE "
          "UNet pass per step instead of three, and keeps both knobs: image_guidance (keep the source) and "
          "text_guidance (follow the instruction). Cross-frame attention on the middle frame and TAESD as in MoViE. "
          "The info output warns when a knob is outside the range the adapter was trained on.\n\n" +
          models_note([IP2P, "taesd", GUIDANCE]) + "\n\nThe template runs 3 steps; MoViE uses 10.", comfy)
    (ROOT / "example_workflows").mkdir(exist_ok=True)


if __name__ == "__main__":
    main()

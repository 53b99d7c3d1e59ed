"""Writes the EVE alignment workflow templates (UI format) with the builder of
tools/make_movie_workflows.py (input lists and widget order from the live node definitions).
Run: .venv/bin/python tools/make_eve_align_workflows.py"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from harness import embedded  # noqa: E402
from make_movie_workflows import build, models_note  # noqa: E402

SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
CONTROLNET = "control_v11e_sd15_ip2p_fp16.safetensors"
MOTION = "mm_sd_v15_v2.ckpt"
LORA = "eve_align_lora.safetensors"  # what the LoRA Aligner (train) writes under its default output_name
MODELS = models_note([SD15, CONTROLNET, MOTION, "taesd"])
V3 = ("\nAnimateDiff's v3 motion module works in place of v2: v3_sd15_mm.ckpt from the same repository "
      "(huggingface.co/guoyww/animatediff), also in models/animatediff_models.")


def source(ckpt=SD15):
    return [
        (1, "LoadVideo", (0, 0), {"file": "videoedit_sample.mp4"}, {}),
        (2, "GetVideoComponents", (300, 0), {}, {"video": (1, 0)}),
        (3, "CheckpointLoaderSimple", (0, 380), {"ckpt_name": ckpt}, {}),
        (4, "ControlNetLoader", (0, 520), {"control_net_name": CONTROLNET}, {}),
        (5, "VideoEditEVELoadVideoAdapter", (0, 620), {"adapter_name": MOTION}, {}),
        (7, "CLIPTextEncode", (360, 380), {"text": "make it a snowy winter scene"}, {"clip": (3, 1)}),
        (8, "CLIPTextEncode", (360, 540), {"text": ""}, {"clip": (3, 1)}),
        (9, "VAELoader", (0, 760), {"vae_name": "taesd"}, {}),
    ]


def edit_tail(model, pos, neg, x=1500, prefix="videoedit/eve"):
    return [
        (14, "VAEEncode", (x - 350, 0), {}, {"pixels": (2, 0), "vae": (9, 0)}),
        (15, "KSampler", (x, 0), {"seed": 42, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                                  "denoise": 1.0},
         {"model": model, "positive": pos, "negative": neg, "latent_image": (14, 0)}),
        (16, "VAEDecode", (x + 350, 0), {}, {"samples": (15, 0), "vae": (9, 0)}),
        (17, "CreateVideo", (x + 350, 140), {"fps": 30.0}, {"images": (16, 0), "fps": (2, 2)}),
        (18, "SaveVideo", (x + 700, 0), {"filename_prefix": prefix}, {"video": (17, 0)}),
    ]


def main():
    comfy = embedded.boot_in_process(embedded.REPO_ROOT / ".comfy" / "test-base")
    train = source() + [
        (6, "VideoEditEVEApplyVideoAdapter", (360, 700), {"anchor_first_frame": True}, {"model": (3, 0), "video_adapter": (5, 0)}),
        (10, "VideoEditEVELoRAAligner", (700, 300), {
            "data_mode": "my clip", "dataset_folder": "eve_align_data", "instruction": "make it a snowy winter scene",
            "caption": "a snowy winter scene", "frames": 2, "resolution": 256, "steps": 1, "batch_size": 1,
            "learning_rate": 1e-5, "lora_rank": 4, "k": 3, "schedule_steps": 1000, "teacher_steps": 2,
            "sds_only_fraction": 2 / 3, "control_strength": 1.0, "seed": 0, "checkpoint_every": 1,
            "output_name": "eve_align_lora_demo", "resume": False},
         {"edit_teacher": (3, 0), "control_net": (4, 0), "clip": (3, 1), "vae": (9, 0), "video_teacher": (6, 0),
          "images": (2, 0)}),
        (11, "PreviewImage", (1100, 700), {}, {"images": (10, 1)}),
        (12, "ControlNetApplyAdvanced", (1100, 300), {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
         {"positive": (7, 0), "negative": (8, 0), "control_net": (4, 0), "image": (2, 0)}),
        *edit_tail((10, 0), (12, 0), (12, 1), prefix="videoedit/eve_lora_align_train"),
    ]
    # a 1-step run at full size peaks at 14.7 GB server RSS (tests: /free before it, fixed glibc mmap threshold)
    build("eve_lora_align_train", "EVE: LoRA alignment (Factorized Diffusion Distillation), then an aligned edit", train,
          "EVE alignment (Sec. 3.2-3.3): the image-edit adapter (ControlNet) and the video adapter (motion module) "
          "were trained separately on one frozen SD1.5; a small LoRA on the backbone aligns them, with NO edited "
          "videos. The student (backbone + both frozen adapters + LoRA) edits a clip from noise in k = 3 steps "
          "(one per K-bin) and learns from SDS of the edit teacher (backbone + ControlNet) and the video teacher "
          "(backbone + motion module), then (after the first 2/3 of the steps) from two discriminators too. "
          "data_mode 'dataset folder': a folder with one .jsonl, a line per clip {\"video\", \"instruction\", "
          "\"caption\"}; 'my clip': the connected frames. Leave video_teacher empty to align image-only (Sec. 4.4). "
          "Live loss chart, cancel, checkpoints (output/videoedit_training/<name>) with exact resume; the LoRA goes to "
          "models/loras/<output_name>.safetensors, for LoraLoader or the Adapter Stacker's lora_name.\n\n" + MODELS + V3 +
          "\n\nThe template trains 1 step on 2 frames of the sample clip so it runs anywhere; the paper: 1500 "
          "iterations (1000 SDS only), batch 64, learning rate 1e-5, 8 frames at 512x512 (GPU; headless: "
          "python -m harness.train with \"trainer\": \"eve_align\", under torchrun). The edit then samples 2 steps at cfg 1: "
          "use 20-30 steps and cfg 5-7.5 for real edits.", comfy)

    aligned = source() + [
        (10, "VideoEditEVEAdapterStacker", (700, 200), {
            "control_strength": 1.0, "context_length": 8, "context_overlap": 4, "anchor_first_frame": True,
            "noise_schedule": "backbone default", "lora_name": LORA, "lora_strength": 1.0},
         {"model": (3, 0), "video_adapter": (5, 0), "control_net": (4, 0), "images": (2, 0), "positive": (7, 0),
          "negative": (8, 0)}),
        *edit_tail((10, 0), (10, 1), (10, 2), prefix="videoedit/eve_aligned_edit"),
    ]
    build("eve_aligned_edit", "EVE: aligned edit (Adapter Stacker + the aligner's LoRA)", aligned,
          "EVE video edit with the aligned model: the Adapter Stacker stacks the image-edit ControlNet (per frame) "
          "and the video adapter on the frozen SD1.5 and loads the LoRA the LoRA Aligner (train) saved "
          "(models/loras). Frame 0 anchors the clip; long clips run in 8-frame windows overlapping by 4.\n\n" +
          models_note([SD15, CONTROLNET, MOTION, "taesd", LORA]) + V3 + "\n\nWrite the edit as an instruction (IP2P style). The template samples 2 steps at cfg 1 (one pass per step, so it runs fast on a CPU): use "
          "20-30 steps and cfg 5-7.5 for real edits.", comfy)


if __name__ == "__main__":
    main()

"""Writes the MoViE one-step workflow templates (UI format) with make_movie_workflows' builder.
Run: .venv/bin/python tools/make_movie_onestep_workflows.py"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_movie_workflows import GUIDANCE, IP2P, build, common, embedded, models_note  # noqa: E402

STUDENT = "movie_onestep.safetensors"  # what One-Step Distill (train) writes under its default output_name


def tail(sampler_id, model_id, x=1400, prefix="videoedit/movie_onestep"):
    """Cross-frame anchor -> One-Step Sampler (1 step, both knobs) -> TAESD Decode -> video."""
    return [
        (7, "VideoEditCrossFrameAttention", (x - 400, 300), {"anchor": "middle", "anchor_count": 3}, {"model": (model_id, 0)}),
        (sampler_id, "VideoEditOneStepSampler", (x, 300), {"image_guidance": 1.5, "text_guidance": 7.5, "steps": 1,
                                                           "seed": 0},
         {"model": (7, 0), "instruction": (4, 0), "source_latent": (6, 0)}),
        (24, "VideoEditTAESDDecode", (x + 400, 0), {"variant": "taesd", "frames_per_chunk": 16}, {"samples": (sampler_id, 0)}),
        (25, "CreateVideo", (x + 700, 0), {"fps": 30.0}, {"images": (24, 0), "fps": (2, 2)}),
        (26, "SaveVideo", (x + 1000, 0), {"filename_prefix": prefix}, {"video": (25, 0)}),
    ]


def main():
    comfy = embedded.boot_in_process(embedded.REPO_ROOT / ".comfy" / "test-base")
    train = common(empty=False, core_encode=True) + [
        (10, "VideoEditLoadGuidanceAdapter", (0, 800), {"adapter_name": GUIDANCE},
         {"model": (3, 0)}),
        (11, "VideoEditOneStepDistillTrain", (600, 300), {
            "data_mode": "my frames (data-free)", "instructions": "make it look like a watercolor painting",
            "dataset_folder": "", "resolution": 256, "v_steps": 1, "steps": 1, "batch_size": 1,
            "v_learning_rate": 1e-6, "learning_rate": 1e-5, "disc_learning_rate": 1e-5, "lambda_mse": 1.0,
            "lambda_gen": 0.1, "lambda_r1": 0.1, "adapter": "lora", "lora_rank": 4, "seed": 0, "checkpoint_every": 1,
            "output_name": "movie_onestep_demo", "resume": False},
         {"model": (10, 0), "clip": (3, 1), "vae": (9, 0), "frames": (2, 0)}),
        (12, "PreviewImage", (1000, 700), {}, {"images": (11, 1)}),
        *tail(8, 11, x=1400, prefix="videoedit/movie_onestep_train"),
    ]
    build("movie_onestep_train", "MoViE: one-step distillation (Stage 4, Alg. 2), then a one-step edit", train,
          "Guidance-preserving one-step distillation (MoViE Sec. 3.4, Alg. 2, appendix B Stage 4). Start from the "
          "guidance-distilled model (Load Guidance Adapter, or CFG Distill (train)). The node first fine-tunes it to "
          "v-prediction (v_steps), then trains a one-step student adversarially: the teacher makes x_0 in 5 LCM "
          "steps, the student denoises at 8 timesteps in one pass with the knobs as input, and a discriminator (the "
          "teacher's frozen encoder + trainable spatial heads) judges both. Live loss chart, cancel, checkpoints "
          "every checkpoint_every steps (output/videoedit_training/<name>), exact resume; the student goes to "
          "models/videoedit_onestep/<output_name>.safetensors. The result edits in ONE UNet pass per frame with "
          "image_guidance and text_guidance still live.\n\n" + models_note([IP2P, "taesd", GUIDANCE]) +
          "\n\nThe template trains 1 + 1 steps at the sample clip's size so it runs anywhere; real runs (the paper): "
          "v-prediction conversion at lr 1e-6, then 20k adversarial steps at lr 1e-5, 256x256 frames, on a GPU; use "
          "the headless command (python -m harness.train config.json with \"trainer\": \"onestep\", under torchrun).",
          comfy)

    edit = common(empty=False) + [
        (10, "VideoEditLoadGuidanceAdapter", (0, 800), {"adapter_name": GUIDANCE},
         {"model": (3, 0)}),
        (11, "VideoEditLoadOneStepStudent", (300, 800), {"student_name": STUDENT},
         {"model": (10, 0)}),
        *tail(8, 11, x=1100, prefix="videoedit/movie_onestep_edit"),
    ]
    build("movie_onestep_edit", "MoViE one-step edit: 1 UNet pass per frame, both knobs, anchor, TAESD", edit,
          "MoViE's full fast path: InstructPix2Pix, guidance-distilled (Load Guidance Adapter) and then distilled to "
          "ONE step (Load One-Step Student), with the middle frame as cross-frame anchor and TAESD for encode and "
          "decode. One UNet pass per frame; image_guidance (keep the source) and text_guidance (follow the "
          "instruction) still change the edit. steps > 1 is allowed (LCM-style) and the sampler's info output notes "
          "that the student was trained for one.\n\n" + models_note([IP2P, "taesd", GUIDANCE, STUDENT]), comfy)


if __name__ == "__main__":
    main()

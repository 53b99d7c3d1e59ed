"""kill -9 in the middle of training, then the same run started again, for each of the three
trainers (CFG Distill, One-Step Distill, EVE LoRA Aligner) through the headless trainers
(``python -m harness.train``, tiny random models): the killed process leaves a whole checkpoint,
the restarted run resumes from it, and its final weights equal an uninterrupted run's bit for bit.

What a tiny model cannot show: nothing about training quality; this is about the bookkeeping
(parameters, optimizer state, per-step randomness, loss history) surviving a SIGKILL. Cancel from
ComfyUI (the interrupt flag) is tested in-process next to each trainer's other resume tests.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")


def _frames_folder(folder: Path, n=2, size=64) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return str(folder)


def _eve_dataset(folder: Path) -> str:
    _frames_folder(folder / "clip0", n=2, size=32)
    (folder / "dataset.jsonl").write_text(json.dumps({"video": "clip0", "instruction": "make it winter",
                                                      "caption": "a snowy street"}) + "\n")
    return str(folder)


# trainer -> (its config for the tiny fixtures, the file with every rank-0 trained tensor)
def _configs(tmp: Path) -> dict:
    frames = {"vae": "taesd", "data_mode": "frames", "frames": _frames_folder(tmp / "frames"),
              "instructions": ["make it snowy"], "batch_size": 1, "learning_rate": 1e-3, "lora_rank": 2, "seed": 1,
              "checkpoint_every": 1}
    return {
        "cfg_distill": ({"model": "fixture:tiny_ip2p", "steps": 3, **frames}, "rank0_weights.safetensors"),
        # killed inside Alg. 2 (after the v-prediction step): heads, discriminator and student state
        "onestep": ({"trainer": "onestep", "model": "fixture:tiny_ip2p", "guidance_adapter": "fixture:random",
                     "v_steps": 1, "steps": 2, "v_learning_rate": 1e-3, "disc_learning_rate": 1e-3, **frames},
                    "rank0_weights.safetensors"),
        # step 1 SDS only, steps 2-3 adversarial (both discriminators)
        "eve_align": ({"trainer": "eve_align", "model": "fixture:tiny", "video_adapter": "fixture", "vae": "taesd",
                       "dataset_folder": _eve_dataset(tmp / "eve_data"), "frames": 2, "resolution": 32, "steps": 3,
                       "learning_rate": 1e-3, "lora_rank": 2, "k": 1, "teacher_steps": 1, "sds_only_fraction": 0.34,
                       "seed": 1, "checkpoint_every": 1}, "rank0_lora.safetensors"),
    }


def _command(config: dict, path: Path) -> list[str]:
    path.write_text(json.dumps(config))
    return [sys.executable, "-m", "harness.train", str(path)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(config: dict, path: Path) -> list[int]:
    """Run to the end; the steps it printed."""
    r = subprocess.run(_command(config, path), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [int(m.group(1)) for m in map(STEP_LINE.match, r.stdout.splitlines()) if m]


def _kill_after(config: dict, path: Path, step: int) -> int:
    """Start the run, SIGKILL it as soon as it reports ``step``; the returncode."""
    with open(path.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(_command(config, path), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        try:
            for line in proc.stdout:
                m = STEP_LINE.match(line)
                if m and int(m.group(1)) == step:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            proc.stdout.close()
            code = proc.wait(timeout=120)
    return code


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from harness.embedded import prepare_base_dir
    from harness.fixtures import install_taesd
    path = tmp_path_factory.mktemp("train-base")
    prepare_base_dir(path)
    install_taesd(path)
    return str(path)


@pytest.mark.slow  # three ComfyUI boots per trainer: about 20 s of CPU each
@pytest.mark.parametrize("trainer", ["cfg_distill", "onestep", "eve_align"])
def test_kill_9_mid_training_resumes_exactly(trainer, base, tmp_path):
    config, weights = _configs(tmp_path)[trainer]
    total = int(config["steps"]) + int(config.get("v_steps", 0))
    config = {**config, "base": base}

    ref = tmp_path / "uninterrupted"
    assert _run({**config, "output_dir": str(ref)}, tmp_path / "ref.json") == list(range(1, total + 1))

    run = tmp_path / "killed"
    killed = {**config, "output_dir": str(run)}
    assert _kill_after(killed, tmp_path / "killed.json", 1) == -signal.SIGKILL
    assert not (run / weights).exists()
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:  # whole: it opens and reads
        at = int(f.metadata()["step"])
        assert all(f.get_tensor(k).numel() >= 0 for k in f.keys())
    assert 1 <= at < total, f"the kill came after step {at} of {total}: nothing left to resume"

    assert _run(killed, tmp_path / "killed.json") == list(range(at + 1, total + 1))  # it resumed there
    got, want = load_file(str(run / weights)), load_file(str(ref / weights))
    assert got.keys() == want.keys() and len(want) > 0
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]

"""./videoedit gpucheck (harness/gpucheck.py, gpucheck_run.py, gpucheck_probe/): how it reads what a
ComfyUI supports, the prompt it runs, the output checks, the table, and the command itself on
this CPU machine against the embedded ComfyUI 0.3.75 and against a running server.

Not shown here: anything on CUDA (no GPU in CI): fp16, the dynamic-VRAM on/off pair and the VRAM
columns only run where a GPU is; the mode logic is tested on flag sets instead."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import gpucheck
from harness.embedded import find_comfyui
from harness.gpucheck_probe.image_stats import image_stats
from harness.gpucheck_run import (OutputCheck, PROBE_NODE, WorkflowRun, prepare_prompt, trainer_ids,
                                  trainer_output_name)
from harness.sample_clip import panned_frames, read_video
from harness.workflow_api import load_workflow

ROOT = Path(__file__).resolve().parent.parent
# what a ComfyUI with dynamic VRAM lists in --help (flag names as in current core's cli_args)
CURRENT_CORE_HELP = ("usage: main.py [-h] [--cpu] [--fp16-unet] [--fp16-vae] [--fp16-text-enc] [--highvram]\n"
                     "  --disable-dynamic-vram  Disable dynamic VRAM and use estimate based model loading.\n"
                     "  --enable-dynamic-vram   Enable dynamic VRAM on systems where it's not enabled by default.\n")


# ----------------------------------------------------------------------------- image stats

def test_image_stats_finds_nan_and_inf_before_quantisation():
    frames = torch.rand(4, 16, 16, 3)
    assert image_stats(frames)["finite"] and not image_stats(frames)["blank"]
    frames[2, 3, 4, 1] = float("nan")
    frames[0, 0, 0, 0] = float("inf")
    s = image_stats(frames)
    assert not s["finite"] and s["nonfinite"] == 2
    assert 0 <= s["min"] and s["max"] <= 1  # over the finite values only


def test_image_stats_blank_only_when_every_frame_is_flat():
    frames = torch.rand(3, 8, 8, 3)
    frames[1] = 0.5
    s = image_stats(frames)
    assert s["flat_frames"] == 1 and not s["blank"]
    s = image_stats(torch.full((3, 8, 8, 3), float("nan")))  # what a NaN decode is before it turns black
    assert s["blank"] and not s["finite"] and s["min"] is None
    assert image_stats(torch.zeros(2, 8, 8, 3) + 0.3 + torch.rand(2, 8, 8, 3) * 1e-3)["blank"]


# ------------------------------------------------------------------ what the ComfyUI supports

def test_embedded_comfyui_has_no_dynamic_vram_so_one_mode():
    comfyui = find_comfyui()
    flags = gpucheck.comfy_flags(sys.executable, comfyui)  # its real `main.py --help`
    assert {"--cpu", "--fp16-unet", "--fp16-vae", "--fp16-text-enc"} <= flags
    assert gpucheck.DYNAMIC_OFF not in flags
    modes, why = gpucheck.vram_modes(flags, "cuda")
    assert [(m.key, m.args) for m in modes] == [("static", [])] and "no dynamic VRAM" in why
    assert [m.key for m in gpucheck.vram_modes(flags, "cpu")[0]] == ["cpu"]
    with pytest.raises(SystemExit, match="no dynamic VRAM"):
        gpucheck.vram_modes(flags, "cuda", "both")
    assert gpucheck.precision_args(flags, "cuda", "fp16")[0] == list(gpucheck.FP16_FLAGS)
    assert gpucheck.precision_args(flags, "cpu", "fp16")[0] == []


def test_current_core_runs_dynamic_vram_on_and_off():
    flags = gpucheck.parse_flags(CURRENT_CORE_HELP)
    modes, _ = gpucheck.vram_modes(flags, "cuda")
    assert [(m.key, m.args, m.wants_dynamic) for m in modes] == [
        ("dynamic-on", [], True), ("dynamic-off", ["--disable-dynamic-vram"], False)]
    assert [m.key for m in gpucheck.vram_modes(flags, "cuda", "off")[0]] == ["dynamic-off"]
    assert [m.key for m in gpucheck.vram_modes(flags, "cpu")[0]] == ["cpu"]  # --cpu turns it off in core


def test_flags_from_cli_args_when_help_fails(tmp_path):
    (tmp_path / "comfy").mkdir()
    (tmp_path / "main.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "comfy" / "cli_args.py").write_text(
        'parser.add_argument("--cpu", action="store_true")\n'
        'parser.add_argument("--disable-dynamic-vram", action="store_true")\n')
    assert gpucheck.comfy_flags(sys.executable, tmp_path) == {"--cpu", "--disable-dynamic-vram"}
    (tmp_path / "comfy" / "cli_args.py").unlink()
    with pytest.raises(SystemExit, match="cannot read ComfyUI's flags"):
        gpucheck.comfy_flags(sys.executable, tmp_path)


def test_checkout_python_is_its_venv(tmp_path):
    assert gpucheck.find_python(tmp_path) == sys.executable
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert gpucheck.find_python(tmp_path) == str(py)


def test_unknown_workflow_is_named_with_the_choices():
    with pytest.raises(SystemExit, match="taesd_video_roundtrip"):
        gpucheck.main(["--only", "no_such_workflow"])
    with pytest.raises(SystemExit):  # argparse: --set needs INPUT=VALUE
        gpucheck.main(["--set", "VideoEditTAESDDecode.frames_per_chunk=3"])


def test_clip_at_512_pans_and_small_clip_is_the_sample(tmp_path):
    frames, fps = read_video(gpucheck.write_clip(tmp_path / "c512.mp4", 512, 8))
    assert frames.shape == (8, 512, 512, 3) and fps == pytest.approx(8)
    assert (frames[1] - frames[0]).abs().mean() > 0.01  # it moves
    small, _ = read_video(gpucheck.write_clip(tmp_path / "c64.mp4", 64, 8))
    assert (small - panned_frames(8, 64, shift=(2, 1))[0]).abs().mean() < 0.03


# --------------------------------------------------------------------------- the prompt

def test_trainer_does_one_step_at_the_check_size_under_its_own_name(object_info):
    wf = load_workflow(ROOT / "example_workflows" / "movie_cfg_distill_train.json")
    prompt, stats, trainers = prepare_prompt(wf, object_info, "clip.mp4", name="movie_cfg_distill_train",
                                             mode="dynamic-off", size=512, input_overrides={"frames_per_chunk": 5})
    assert trainers == trainer_ids(prompt, object_info) and len(trainers) == 1
    inputs = prompt[trainers[0]]["inputs"]
    assert (inputs["steps"], inputs["batch_size"], inputs["resolution"], inputs["resume"]) == (1, 1, 512, False)
    assert inputs["output_name"] == trainer_output_name("movie_cfg_distill_train", "dynamic-off")
    assert "-" not in inputs["output_name"]
    assert inputs["overwrite"] is True  # its own file of an earlier check is replaced, not refused
    assert all(n["inputs"]["file"] == "clip.mp4" for n in prompt.values() if n["class_type"] == "LoadVideo")
    assert all(n["inputs"]["frames_per_chunk"] == 5 for n in prompt.values() if "frames_per_chunk" in n["inputs"])
    # the loss curve (-> PreviewImage) and the decoded frames (-> CreateVideo) are both looked at
    looked = sorted(w.rsplit("-> ", 1)[1] for w in stats.values())
    assert looked == ["CreateVideo", "PreviewImage"]
    for sid in stats:
        src, slot = prompt[sid]["inputs"]["images"]
        assert prompt[sid]["class_type"] == PROBE_NODE
        assert object_info[prompt[src]["class_type"]]["output"][slot] == "IMAGE"
    assert set(load_workflow_loader_names(wf)) <= {v for n in prompt.values() for v in n["inputs"].values()
                                                   if isinstance(v, str)}


def load_workflow_loader_names(wf) -> list[str]:
    """The model file names the template's loaders name (gpucheck leaves them as they are)."""
    return [n["widgets_values"][0] for n in wf["nodes"]
            if n["type"] in ("CheckpointLoaderSimple", "ControlNetLoader") and n.get("widgets_values")]


def test_a_workflow_without_a_video_loader_is_refused(object_info):
    wf = load_workflow(ROOT / "example_workflows" / "taesd_video_roundtrip.json")
    for n in wf["nodes"]:
        if n["type"] == "LoadVideo":
            n["mode"] = 2  # muted: left out of the prompt
    with pytest.raises(ValueError, match="loads no video"):
        prepare_prompt(wf, object_info, "clip.mp4", name="x", mode="cpu")


# ---------------------------------------------------------------------------- the table

def test_table_says_what_failed_and_when_dynamic_vram_did_not_engage():
    on = gpucheck.Mode("dynamic-on", [], True)
    good = WorkflowRun("a", "dynamic-on", ok=True, seconds=3.25, dynamic_vram=True,
                       memory={"torch_peak_allocated": 3 * gpucheck.GiB, "device_used_peak": None},
                       checks=[OutputCheck("IMAGE 1 -> CreateVideo", True)])
    fell_back = WorkflowRun("b", "dynamic-on", ok=True, seconds=1.0, dynamic_vram=False,
                            checks=[OutputCheck("IMAGE 1 -> CreateVideo", False), OutputCheck("video x.mp4", True)])
    failed = WorkflowRun("c", "dynamic-on", error="node 9 (KSampler) failed: OutOfMemoryError: CUDA\nmore")
    rows = gpucheck.format_table([(good, on), (fell_back, on), (failed, on)]).splitlines()
    assert rows[2] == "| a | dynamic-on | 3.2 | 3.00 | - | - | finite |"
    assert "| b | dynamic-on (ran off!) |" in rows[3] and "NaN/inf: IMAGE 1 -> CreateVideo" in rows[3]
    assert rows[4].endswith("| FAILED: node 9 (KSampler) failed: OutOfMemoryError: CUDA |")
    assert good.outputs_good and not fell_back.outputs_good and not failed.outputs_good
    blank_video = OutputCheck("video y.mp4", True, blank=True, blank_fails=False)
    assert blank_video.good and not OutputCheck("video y.mp4", True, blank=True).good
    assert not WorkflowRun("d", "cpu", ok=True).outputs_good  # nothing checked is not a pass


# ---------------------------------------------------------------------------- the command

def _gpucheck(args, tmp_path, timeout=900):
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "harness.gpucheck", "--only", "taesd_video_roundtrip",
                        "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout, json.loads(out.read_text()), out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_command_on_cpu_starts_the_embedded_comfyui(tmp_path):
    stdout, res, md = _gpucheck(["--base", str(tmp_path / "base")], tmp_path)
    assert "[cpu] 1/1 taesd_video_roundtrip" in stdout and "VideoEditTAESDDecode" in stdout  # progress lines
    assert "| taesd_video_roundtrip | cpu |" in stdout and md in stdout.replace("\r", "")
    assert res["header"]["comfyui"].startswith("0.3.75") and res["header"]["clip"] == "64x64, 8 frames"
    (row,) = res["rows"]
    assert row["ok"] and row["outputs_good"] and row["mode"] == "cpu" and row["dynamic_vram"] is None
    assert row["memory"]["source"] == "probe" and row["memory"]["host_peak_rss"] > 2 ** 20
    assert row["memory"]["torch_peak_allocated"] is None  # no CUDA here
    assert any(c["what"].startswith("IMAGE") and c["detail"]["shape"] == [8, 64, 64, 3] for c in row["checks"])


@pytest.mark.slow
def test_command_against_a_running_server(comfy_server, tmp_path):
    stdout, res, _ = _gpucheck(["--server", comfy_server.url, "--quiet", "--size", "32", "--frames", "4"], tmp_path)
    (row,) = res["rows"]
    assert row["mode"] == "as-running" and row["outputs_good"], row
    assert row["memory"]["source"] == "probe"  # the test server has the probe linked
    video = next(c for c in row["checks"] if c["what"].startswith("video"))
    assert video["detail"]["shape"] == [4, 32, 32, 3]
    assert (comfy_server.base / "input" / "gpucheck_32px_4f.mp4").is_file()  # uploaded

"""harness.batch: one workflow over many clips on several real ComfyUI servers.

The servers are real ComfyUI subprocesses with this pack, each on its own loopback port and base
folder (input/output), reached only by URL as remote ones would be. What these tests show: jobs
spread over two servers; a server SIGKILLed mid-job loses its job to the other; a server that comes
back on its URL is used again; a rerun skips finished jobs (outputs untouched) and retries failed
ones; one output per job, nothing else in --out; per-clip values reach the prompt (the output's
frame rate); TokenFlow inverts once per clip, moves the inversion file to another server, and the
edit equals the unsplit workflow's frame for frame. What they cannot show: servers on other
machines or GPUs, slow or partitioned networks (all is 127.0.0.1), and real pictures (the
models are random-weight fixtures: outputs are noise; only their identity and metadata count).
"""
from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest

from harness import embedded, fixtures
from harness.batch import main as batch_main
from harness.batch_plan import (INVERTER, LOAD_INVERSION, SAVE_INVERSION, Clip, PlanError, find_clips, plan_jobs,
                                read_rows, split_inversions)
from harness.runner import find_workflow
from harness.sample_clip import panned_frames, read_video, write_mp4
from harness.server import ComfyServer
from harness.workflow_api import load_workflow, to_api

FPS = 8


def _server(base: Path, port: int | None = None, models=fixtures.install_taesd) -> ComfyServer:
    base = embedded.prepare_base_dir(base)
    models(base)
    return ComfyServer(base, port=port, log_path=base / "user" / "server.log").start()


def _clips(folder: Path, n: int) -> list[Path]:
    """n different sample clips (the photo panned at different speeds), 8 frames 64x64."""
    return [write_mp4(panned_frames(8, 64, shift=(i + 1, 1))[0], folder / f"shot{i}.mp4", fps=FPS) for i in range(n)]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    return path


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["jobs"]


def _history_prompt(url: str, prompt_id: str) -> dict:
    return ComfyServer.attach(url).history(prompt_id)["prompt"][2]


@pytest.fixture(scope="module")
def taesd_servers(tmp_path_factory):
    """Two servers with only the TAESD fixtures, and the object_info they serve."""
    root = tmp_path_factory.mktemp("servers")
    a = _server(root / "a")
    try:
        b = _server(root / "b")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b, a.object_info()
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------------------------- planning
def test_clips_rows_and_job_names(tmp_path):
    clips = _clips(tmp_path / "clips", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("# shots\nclips/shot1.mp4\n")
    assert find_clips([tmp_path / "clips"]) == [c.resolve() for c in clips]
    assert find_clips([listing]) == [clips[1].resolve()]
    (tmp_path / "other").mkdir()
    write_mp4(panned_frames(2, 64)[0], tmp_path / "other" / "shot0.mp4")
    with pytest.raises(PlanError, match="both write outputs named shot0"):
        find_clips([tmp_path / "clips", tmp_path / "other"])

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"clip": "shot0.mp4", "name": "a b", "edit prompt.text": "3", "KSampler.seed": 3}\n\n'
                     '{"clip": "shot1.mp4", "CreateVideo.fps": 12.5}\n')
    rows = read_rows(jsonl, [c.resolve() for c in clips])
    assert [(r.name, r.overrides) for r in rows] == [
        ("a_b", ['edit prompt.text="3"', "KSampler.seed=3"]), (None, ["CreateVideo.fps=12.5"])]
    csv_rows = read_rows(_write_csv(tmp_path / "rows.csv", [{"clip": "shot1.mp4", "CreateVideo.fps": "12.5",
                                                             "KSampler.seed": ""}]), [c.resolve() for c in clips])
    assert csv_rows[0].overrides == ["CreateVideo.fps=12.5"]  # an empty cell leaves the input alone
    for text, msg in [('{"clip": "shot9.mp4"}', "line 1: clip 'shot9.mp4' is not among"),
                      ('{"clip": "shot0.mp4", "seed": 3}', "line 1: key 'seed' is not NODE.INPUT"),
                      ('{"clip": "shot0.mp4"}\n{"clip": ', "line 2: not JSON")]:
        jsonl.write_text(text)
        with pytest.raises(PlanError, match=msg):
            read_rows(jsonl, [c.resolve() for c in clips])


def test_plan_inverts_once_per_clip_and_source(taesd_servers, tmp_path):
    """TokenFlow: edit prompts that differ only after the inverter share one invert job; a row that
    changes the source prompt gets its own; names and fingerprints are stable across plans."""
    info = taesd_servers[2]
    prompt = to_api(load_workflow(find_workflow("tokenflow_pnp_edit")), info)
    paths = [c.resolve() for c in _clips(tmp_path, 2)]
    clips = [Clip(p, f"{i}" * 64) for i, p in enumerate(paths)]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("\n".join(json.dumps(r) for r in [
        {"clip": "shot0.mp4", "name": "marble", "edit prompt.text": "a marble statue"},
        {"clip": "shot0.mp4", "name": "gold", "edit prompt.text": "a golden statue"},
        {"clip": "shot0.mp4", "name": "src", "source prompt (inversion).text": "a man"}]))
    rows = read_rows(rows_file, paths)
    jobs = plan_jobs(prompt, info, clips, ["VideoEditTokenFlowDDIMInverter.steps=1"], rows)
    inverts = [j for j in jobs if j.kind == "invert"]
    edits = {j.id: j for j in jobs if j.kind == "edit"}
    assert list(edits) == ["shot0.marble", "shot0.gold", "shot0.src", "shot1"]
    assert len(inverts) == 3 and jobs[:3] == inverts  # inversions first: they unlock the edits
    need = {k: set(j.needs.values()) for k, j in edits.items()}
    assert need["shot0.marble"] == need["shot0.gold"] and len(need["shot0.marble"]) == 1
    assert need["shot0.src"] != need["shot0.marble"] and need["shot1"] != need["shot0.marble"]
    for inv in inverts:
        classes = sorted(n["class_type"] for n in inv.prompt.values())
        assert classes == sorted(["LoadVideo", "GetVideoComponents", "CheckpointLoaderSimple", "CLIPTextEncode",
                                  "VAEEncode", INVERTER, SAVE_INVERSION]), classes
        assert inv.prompt[inv.save_node]["inputs"]["filename_prefix"].startswith(f"videoedit_batch/{inv.clip.path.stem}-")
    for e in edits.values():
        classes = [n["class_type"] for n in e.prompt.values()]
        assert INVERTER not in classes and classes.count(LOAD_INVERSION) == 1 and "SaveVideo" in classes
        # the source prompt's encoder only fed the inverter: pruned from the edit
        assert len([c for c in classes if c == "CLIPTextEncode"]) == 2
    again = plan_jobs(prompt, info, clips, ["VideoEditTokenFlowDDIMInverter.steps=1"], read_rows(rows_file, paths))
    assert [(j.id, j.fingerprint) for j in again] == [(j.id, j.fingerprint) for j in jobs]
    assert len({j.fingerprint for j in jobs}) == len(jobs)

    # an inverter whose noised latent is used cannot be replaced by a file: left in the edit
    used = dict(prompt, **{"99": {"class_type": "PreviewAny", "inputs": {"source": [next(
        k for k, n in prompt.items() if n["class_type"] == INVERTER), 1]}}})
    edit, invert_prompts, loads, _ = split_inversions(used, info)
    assert invert_prompts == {} and loads == {} and INVERTER in [n["class_type"] for n in edit.values()]


# ---------------------------------------------------------------------------------- running
def test_two_servers_one_killed_mid_job_then_resume(taesd_servers, tmp_path):
    a, b, _ = taesd_servers
    clips = _clips(tmp_path / "clips", 3)
    rows = _write_csv(tmp_path / "rows.csv", [
        {"clip": "shot0.mp4", "name": "slow", "CreateVideo.fps": "8"},
        {"clip": "shot0.mp4", "name": "fast", "CreateVideo.fps": "16"},
        # no such files on the servers yet: fails on its own merits (a node error)
        {"clip": "shot1.mp4", "name": "sd3", "VideoEditTAESDEncode.variant": "taesd3",
         "VideoEditTAESDDecode.variant": "taesd3"}])
    out = tmp_path / "out"
    killed = []

    def kill_a_mid_job(event, job_id, worker, data):
        if worker.server.url == a.url and event == "executing" and data.get("node") and not killed:
            killed.append(job_id)
            a.proc.kill()
            a.proc.wait()

    argv = ["taesd_video_roundtrip", "--videos", str(tmp_path / "clips"), "--out", str(out),
            "--per-clip", str(rows), "--server", a.url, "--server", b.url]
    assert batch_main(argv, observer=kill_a_mid_job) == 1  # one job failed
    assert killed, "server a never ran a job, so it was never killed"
    jobs = _manifest(out)
    assert {k: v["state"] for k, v in jobs.items()} == {
        "shot0.slow": "done", "shot0.fast": "done", "shot1.sd3": "failed", "shot2": "done"}
    assert "taesd3_encoder.safetensors" in jobs["shot1.sd3"]["error"]  # the server's own message
    lost = jobs[killed[0]]["attempts"]
    assert lost[0]["server"] == a.url and lost[0]["result"] == "server lost"
    assert lost[-1]["server"] == b.url and lost[-1]["result"] in ("done", "failed")
    assert sum(att["result"] == "server lost" for j in jobs.values() for att in j["attempts"]) == 1

    # one file per finished job, nothing else; each carries its row's values
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "shot0.fast.mp4", "shot0.slow.mp4", "shot2.mp4"]
    for name, fps in [("shot0.slow", 8), ("shot0.fast", 16), ("shot2", FPS)]:
        frames, rate = read_video(out / f"{name}.mp4")
        assert frames.shape == (8, 64, 64, 3) and rate == pytest.approx(fps), name
        done = jobs[name]["attempts"][-1]
        queued = _history_prompt(done["server"], done["prompt_id"])
        create = next(n for n in queued.values() if n["class_type"] == "CreateVideo")
        assert (create["inputs"]["fps"] == fps) if name != "shot2" else isinstance(create["inputs"]["fps"], list)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.mp4")}

    # rerun after installing the missing files on b; a is still dead (listed anyway: it is probed
    # and skipped): finished jobs are skipped, the failed one runs again
    for f in fixtures.taesd_files("taesd3", 16):
        fixtures._link(f, b.base / "models" / "vae_approx")
    assert batch_main(argv) == 0
    again = _manifest(out)
    assert all(v["state"] == "done" for v in again.values())
    assert [att["result"] for att in again["shot1.sd3"]["attempts"]] == ["failed", "done"]
    for name in ("shot0.slow", "shot0.fast", "shot2"):
        assert again[name]["attempts"] == jobs[name]["attempts"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.mp4") if p.name in before} == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "shot0.fast.mp4", "shot0.slow.mp4", "shot1.sd3.mp4", "shot2.mp4"]


def test_a_server_that_comes_back_is_used_again(tmp_path):
    """The only server dies mid-job and is restarted on the same URL: the batch waits for it
    (probing) and runs the next job there; with --max-lost 1 the job it lost is failed, not retried."""
    clips_dir = tmp_path / "clips"
    _clips(clips_dir, 2)
    srv = _server(tmp_path / "base")
    restarted: list[ComfyServer] = []
    killed = []

    def kill_and_restart(event, job_id, worker, data):
        if event == "executing" and data.get("node") and not killed:
            killed.append(job_id)
            srv.proc.kill()
            srv.proc.wait()
            threading.Thread(target=lambda: restarted.append(_server(srv.base, port=srv.port))).start()

    try:
        rc = batch_main(["taesd_video_roundtrip", "--videos", str(clips_dir), "--out", str(tmp_path / "out"),
                         "--server", srv.url, "--max-lost", "1", "--give-up-after", "120"], observer=kill_and_restart)
    finally:
        srv.stop()
        for s in restarted:
            s.stop()
    assert rc == 1 and killed and restarted
    jobs = _manifest(tmp_path / "out")
    other = next(j for j in jobs if j != killed[0])
    assert [(a["server"], a["result"]) for a in jobs[killed[0]]["attempts"]] == [(srv.url, "server lost")]
    assert jobs[killed[0]]["state"] == "failed" and "lost 1 times" in jobs[killed[0]]["error"]
    assert [(a["server"], a["result"]) for a in jobs[other]["attempts"]] == [(srv.url, "done")]
    assert [p.name for p in (tmp_path / "out").glob("*.mp4")] == [f"{other}.mp4"]


@pytest.mark.slow
def test_tokenflow_inverts_once_and_moves_the_inversion(comfy_server, sample_clip, tmp_path):
    """Run 1 on server a, two prompts: one inversion, two edits that load it, and the edit equals
    the unsplit workflow's (which inverts inside the job) frame for frame. Run 2 adds a prompt and
    has only server b, which lacks the inversion: it is copied there through <out>/inversions,
    nothing is inverted again and the finished edits are skipped."""
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "shot.mp4").write_bytes(sample_clip.path.read_bytes())
    rows = [{"clip": "shot.mp4", "name": "marble", "edit prompt.text": "a marble statue"},
            {"clip": "shot.mp4", "name": "gold", "edit prompt.text": "a golden statue"}]
    out = tmp_path / "out"
    common = ["tokenflow_pnp_edit", "--videos", str(clips), "--set", "VideoEditTokenFlowDDIMInverter.steps=1"]
    a = comfy_server.url
    assert batch_main(common + ["--out", str(out), "--per-clip", str(_write_csv(tmp_path / "r1.csv", rows)),
                                "--server", a]) == 0
    # the reference: the workflow as it is (inverting inside the edit job), on the same server
    assert batch_main(common + ["--out", str(tmp_path / "ref"), "--no-invert-once", "--per-clip",
                                str(_write_csv(tmp_path / "ref.csv", rows[1:])), "--server", a]) == 0
    jobs = _manifest(out)
    inv = next(v for v in jobs.values() if v["kind"] == "invert")
    assert len(inv["attempts"]) == 1 and inv["holders"] == [a]
    for job in ("shot.marble", "shot.gold"):
        classes = [n["class_type"] for n in _history_prompt(a, jobs[job]["attempts"][0]["prompt_id"]).values()]
        assert INVERTER not in classes and LOAD_INVERSION in classes
    ref = _manifest(tmp_path / "ref")["shot.gold"]
    assert INVERTER in [n["class_type"] for n in _history_prompt(a, ref["attempts"][0]["prompt_id"]).values()]
    edited, _ = read_video(out / "shot.gold.mp4")
    reference, _ = read_video(tmp_path / "ref" / "shot.gold.mp4")
    assert edited.shape == (8, 64, 64, 3)
    assert (edited - reference).abs().max().item() == 0.0

    rows.append({"clip": "shot.mp4", "name": "bronze", "edit prompt.text": "a bronze statue"})
    b = _server(tmp_path / "b", models=fixtures.install_all)
    try:
        batch_main(common + ["--out", str(out), "--per-clip", str(_write_csv(tmp_path / "r2.csv", rows)),
                            "--server", b.url])
        again = _manifest(out)
        inv = next(v for v in again.values() if v["kind"] == "invert")
        assert len(inv["attempts"]) == 1 and inv["holders"] == [a, b.url]
        assert [len(again[j]["attempts"]) for j in ("shot.marble", "shot.gold")] == [1, 1]
        sub, name = inv["output"].rsplit("/", 1)
        assert (b.base / "output" / sub / name).read_bytes() == (comfy_server.base / "output" / sub / name).read_bytes()
        assert (out / "inversions" / name).is_file()  # the local copy it went through
        bronze = again["shot.bronze"]
        assert bronze["state"] == "done", bronze.get("error")  # the other server's model is the same model
        assert read_video(out / "shot.bronze.mp4")[0].shape == (8, 64, 64, 3)
    finally:
        b.stop()

"""The shipped templates name the real public model files and say where to get them.

Every model-file widget value (and the TAESD alias ``taesd``) of every template has a download
entry {name, url, directory} on its node (``properties.models``, what ComfyUI's missing-models
dialog reads; alias files also in the workflow-level ``models`` list), the URL is a direct
https download of exactly that file on huggingface.co or github.com, the directory is a model
folder of ComfyUI with this pack loaded, the template's Note names the file, and the entries are
exactly what harness/model_catalog.py says (no stale or hand-edited ones). Files the pack's
trainers write have no download: the template that trains them must exist and write the demo
name, and the trainer's default output_name must be the name the edit templates load. Every
name has a random-weight stand-in (harness/fixtures.py) so the templates run as shipped in the
tests. Each template ships a JPEG thumbnail of the same base name (what the frontend loads for
custom-node templates). What this cannot show: that the URLs are live (no network here).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from harness import fixtures
from harness.model_catalog import ALIASES, PUBLIC, TRAINED, is_model_file_name, stamp_models

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
IDS = [p.stem for p in WORKFLOWS]
DOWNLOAD_HOSTS = {"huggingface.co", "github.com"}
THUMBNAIL_MAX_BYTES = 100_000


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _model_values(node: dict) -> list[str]:
    values = node.get("widgets_values") or []
    return [v for v in values if isinstance(v, str) and (is_model_file_name(v) or v in ALIASES)]


def _note(wf: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note")


@pytest.fixture(scope="module")
def model_folders(comfy):
    import folder_paths
    return set(folder_paths.folder_names_and_paths)


def test_every_template_is_listed():
    assert len(WORKFLOWS) >= 12


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_models_entries_are_exactly_the_catalogs(path):
    wf = _load(path)
    assert stamp_models(copy.deepcopy(wf)) == wf, \
        f"{path.name}: model entries differ from harness/model_catalog.py; run tools/stamp_template_models.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_every_model_widget_has_a_download_entry(path, model_folders):
    wf = _load(path)
    workflow_level = {m["name"]: m for m in wf.get("models", [])}
    note = _note(wf)
    for node in wf["nodes"]:
        entries = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        for value in _model_values(node):
            if value in TRAINED:
                assert not entries, f"{path.name}: node {node['id']} offers a download for a trained file"
                assert value in note, f"{path.name}: the Note does not say where {value} comes from"
                continue
            names = ALIASES.get(value, (value,))
            for name in names:
                assert name in entries, f"{path.name}: node {node['id']} ({node['type']}) names {value} but has no " \
                                        f"properties.models entry for {name}"
                m = entries[name]
                url = urlparse(m["url"])
                assert url.scheme == "https" and url.hostname in DOWNLOAD_HOSTS, m["url"]
                assert url.path.rsplit("/", 1)[-1] == name, f"{m['url']} does not download {name}"
                assert "/resolve/" in url.path or url.hostname != "huggingface.co", \
                    f"{m['url']}: a huggingface.co page, not the file (use /resolve/)"
                assert m["directory"] in model_folders, \
                    f"{path.name}: {m['directory']} is not a ComfyUI model folder (folder_paths)"
                assert name in note, f"{path.name}: the Note does not name {name}"
                if value in ALIASES:  # the frontend matches node entries against file-name widget values only
                    assert workflow_level.get(name) == m, f"{path.name}: {name} missing from the workflow-level models"


def test_catalog_urls_and_folders(model_folders):
    for m in PUBLIC.values():
        url = urlparse(m.url)
        assert url.scheme == "https" and url.hostname in DOWNLOAD_HOSTS and url.path.endswith("/" + m.name)
        assert m.directory in model_folders
    for t in TRAINED.values():
        assert t.directory in model_folders


def test_no_template_names_a_fixture():
    fixture_names = {"random"}  # every fixture file of harness/fixtures.py is named *_random*
    for path in WORKFLOWS:
        for node in _load(path)["nodes"]:
            for value in _model_values(node):
                assert not any(f in value for f in fixture_names), f"{path.name}: node {node['id']} names {value}"
                assert value in PUBLIC or value in TRAINED or value in ALIASES, f"{path.name}: unknown model {value}"


@pytest.mark.parametrize("trained", list(TRAINED.values()), ids=list(TRAINED))
def test_trained_files_come_from_a_shipped_training_template(trained, comfy):
    """The edit templates load what the trainer writes by default; the training template trains a
    short demo under another name, so running it never overwrites a real training run."""
    stem = trained.name.rsplit(".", 1)[0]
    spec = comfy.node_classes[trained.trainer].INPUT_TYPES()
    default = {**spec.get("required", {}), **spec.get("optional", {})}["output_name"][1]["default"]
    assert default == stem
    wf = _load(ROOT / "example_workflows" / f"{trained.template}.json")
    trainer = [n for n in wf["nodes"] if n["type"] == trained.trainer]
    assert trainer and f"{stem}_demo" in trainer[0]["widgets_values"]
    assert any(trained.name in _model_values(n) for p in WORKFLOWS for n in _load(p)["nodes"])


def test_every_named_file_has_a_random_stand_in():
    used = {name for p in WORKFLOWS for n in _load(p)["nodes"] for v in _model_values(n)
            for name in ALIASES.get(v, (v,))}
    assert used <= set(fixtures.stand_ins()), sorted(used - set(fixtures.stand_ins()))


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_thumbnail_ships_next_to_the_template(path):
    from PIL import Image
    thumb = path.with_suffix(".jpg")  # ComfyUI_frontend: custom-node templates show <name>.jpg
    assert thumb.is_file(), f"no thumbnail {thumb.name}"
    assert thumb.stat().st_size < THUMBNAIL_MAX_BYTES
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and min(im.size) >= 256
        assert len(set(im.convert("L").resize((32, 32)).getdata())) > 8  # a picture, not a blank


# ------------------------------------------------------------------ the stand-ins' architectures

def _shapes(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


@pytest.mark.slow
def test_stand_ins_have_the_real_files_architectures():
    """Read from the file headers: each checkpoint name is linked to a fixture of its own family
    (SD2.1: 1024-d OpenCLIP context, linear transformer projections, 24-layer text encoder;
    SD1.5: 768-d context, conv projections; InstructPix2Pix: 8 input channels)."""
    si = fixtures.stand_ins()
    attn_k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    proj_in = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    sd21 = _shapes(si["v2-1_512-ema-pruned.safetensors"]())
    assert sd21[attn_k] == [320, 1024] and len(sd21[proj_in]) == 2 and sd21[conv_in][1] == 4
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in sd21
    for name, in_ch in (("v1-5-pruned-emaonly-fp16.safetensors", 4), ("instruct-pix2pix-00-22000.safetensors", 8)):
        sd = _shapes(si[name]())
        assert sd[attn_k] == [320, 768] and len(sd[proj_in]) == 4 and sd[conv_in][1] == in_ch, name
    assert si["mm_sd_v15_v2.ckpt"]().suffix == ".ckpt"

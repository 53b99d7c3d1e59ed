"""A saved TokenFlow inversion through the real server: accepted by the same checkpoint after
``POST /free`` (the model is loaded again) and after a server restart, with the very same edit;
refused, naming what differs, for the same checkpoint with a LoRA and for another checkpoint.
The models are the full-size random-weight SD1.5 / InstructPix2Pix fixtures at 64x64, 1 step
(outputs are noise: only the acceptance and the bit-identity of the edit count)."""
from __future__ import annotations

import hashlib

import pytest
from safetensors.torch import load_file

from harness import embedded, fixtures
from harness.server import ComfyServer, ComfyServerError

pytestmark = pytest.mark.slow

# the names install_all links the random stand-ins under (the real public files' names)
CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
OTHER_CKPT = "instruct-pix2pix-00-22000.safetensors"
LORA = "eve_align_lora.safetensors"


def _invert_prompt() -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
            "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
            "4": {"class_type": "VideoEditTokenFlowDDIMInverter",
                  "inputs": {"model": ["1", 0], "positive": ["2", 0], "latent": ["3", 0], "steps": 1,
                             "scheduler": "ddim_uniform", "refine_iters": 0, "frames_per_chunk": 16}},
            "5": {"class_type": "VideoEditTokenFlowSaveInversion",
                  "inputs": {"inversion": ["4", 0], "filename_prefix": "reload_test"}}}


def _edit_prompt(name: str, ckpt: str = CKPT, lora: str | None = None) -> dict:
    model = ["1", 0]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a marble statue", "clip": ["1", 1]}},
              "3": {"class_type": "VideoEditTokenFlowLoadInversion", "inputs": {"name": name}},
              "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "reload_edit"}}}
    if lora:
        prompt["6"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": 1.0}}
        model = ["6", 0]
    prompt["4"] = {"class_type": "VideoEditTokenFlowKeyframeSampler",
                   "inputs": {"model": model, "positive": ["2", 0], "negative": ["2", 0], "inversion": ["3", 0],
                              "cfg": 2.0, "keyframe_interval": 1, "keyframes": "random", "seed": 0,
                              "propagation": True, "extended_attention": True, "pnp_f_t": 0.8, "pnp_attn_t": 0.5,
                              "denoise": 1.0, "frames_per_chunk": 16, "keyframe_store": "memory"}}
    return prompt


def _edited(server: ComfyServer, name: str):
    result = server.run(_edit_prompt(name), timeout=900)
    [latent] = result.files()
    return load_file(str(server.base / "output" / latent["subfolder"] / latent["filename"]))["latent_tensor"]


def _outputs(server: ComfyServer) -> dict:
    return {str(p.relative_to(server.base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (server.base / "output").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of our own (it is restarted), with every fixture linked into its base."""
    base = embedded.prepare_base_dir(tmp_path_factory.mktemp("reload"))
    fixtures.install_all(base)
    srv = ComfyServer(base, log_path=base / "user" / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


def test_saved_inversion_survives_free_and_restart_and_other_models_are_refused(server):
    saved = server.run(_invert_prompt(), timeout=900)
    name = saved.outputs["5"]["text"][0]
    assert name.startswith("tokenflow/reload_test_")
    before = _edited(server, name)

    server.free()  # unloads the checkpoint: the next prompt loads it again (a new model object)
    assert (_edited(server, name) == before).all()

    untouched = _outputs(server)
    with pytest.raises(ComfyServerError, match=r"inversion: it was made with a different model than the one "
                                               r"connected here \(weight patches \(LoRAs, merges\): made with 0 "
                                               r"patched weights, this model has \d+\); connect the model"):
        server.run(_edit_prompt(name, lora=LORA), timeout=900)
    server.free()
    with pytest.raises(ComfyServerError, match=r"inversion: it was made with a different model .*\(model type: "
                                               r"made with BaseModel, this is \w+; weights: another checkpoint"):
        server.run(_edit_prompt(name, ckpt=OTHER_CKPT), timeout=900)
    assert _outputs(server) == untouched

    server.stop()
    server.start()
    assert (_edited(server, name) == before).all()

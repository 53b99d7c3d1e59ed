"""The trainers under current ComfyUI's dynamic VRAM, and core's training flag
(nodes/host/training_models.py), on tiny random models on CPU.

The real ``ModelPatcherDynamic`` was not available: ComfyUI 0.3.75 (what this suite runs) has no
dynamic VRAM, and current core's class needs CUDA and comfy_aimdo. ``DynamicPatcher`` below stands
in for it and models current core (Comfy-Org/ComfyUI comfy/model_patcher.py, read at commit
08d0e510) in exactly the parts the trainers touch:
- ``is_dynamic()`` is True, and ``clone()`` of it is dynamic again;
- ``get_non_dynamic_delegate()`` returns a plain ``ModelPatcher`` over a *fresh load of the same
  file* (core rebuilds the model through the loader's ``cached_patcher_init``; here ``reload``
  builds the same random weights again) carrying the patches, object patches, weight wrappers,
  model options and attachments of the dynamic one, with the fresh model's own (empty) backups,
  as core's ``clone(disable_dynamic=True, model_override=...)`` does; without a reload recipe it
  raises core's RuntimeError ("cached_patcher_init is not initialized");
- dynamic loading itself (weights staged and cast into VRAM buffers per call) is not modelled:
  any attempt to load this patcher fails the test, because a trainer must never load it.
``DynamicControlNet`` models current core's ControlNet on such a patcher, with its
``deepclone_multigpu`` (a copy holding a deep copy of the control model on a plain ModelPatcher).
What this cannot show: that a training step under real dynamic VRAM on a GPU is right; the
``gpucheck`` run on a CUDA machine does that."""
from __future__ import annotations

import copy

import pytest
import torch

F, SIZE = 3, 32


@pytest.fixture(scope="module")
def dyn(comfy):
    from comfy.model_patcher import ModelPatcher
    import comfy.controlnet
    import comfy.model_management

    class DynamicPatcher(ModelPatcher):
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False, reload=None):
            super().__init__(model, load_device, offload_device, size, weight_inplace_update)
            self.reload = reload

        def is_dynamic(self):
            return True

        def clone(self):
            n = super().clone()  # 0.3.75 builds self.__class__: the clone is dynamic too
            n.reload = self.reload
            return n

        def get_non_dynamic_delegate(self):
            if self.reload is None:
                raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
            fresh = ModelPatcher(self.reload(), self.load_device, self.offload_device)  # core: the loader again
            self.__class__ = ModelPatcher
            try:
                n = self.clone()  # a plain ModelPatcher with this one's patches, options, attachments ...
            finally:
                self.__class__ = DynamicPatcher
            n.model, n.size = fresh.model, 0  # ... over the fresh model, with its own backups
            n.backup, n.object_patches_backup, n.pinned = fresh.backup, fresh.object_patches_backup, fresh.pinned
            return n

        def _refuse(self, *args, **kwargs):
            raise AssertionError("a trainer loaded the dynamic patcher itself")

        load = partially_load = patch_model = _refuse

    class DynamicControlNet(comfy.controlnet.ControlNet):
        def __init__(self, net):
            super().__init__(net, load_device=torch.device("cpu"))
            self.control_model_wrapped = DynamicPatcher(net, torch.device("cpu"), torch.device("cpu"))

        def deepclone_multigpu(self, load_device, autoregister=False):  # current core's, line for line
            c = self.copy()
            c.control_model = copy.deepcopy(c.control_model)
            c.control_model_wrapped = ModelPatcher(c.control_model, load_device=load_device,
                                                   offload_device=comfy.model_management.unet_offload_device())
            return c

    return DynamicPatcher, DynamicControlNet


def _dynamic(dyn, plain, reload):
    cpu = torch.device("cpu")
    return dyn[0](plain.model, cpu, cpu, reload=reload)


# ------------------------------------------------------------------ MoViE CFG distillation

@pytest.fixture(scope="module")
def ip2p(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    load = lambda: build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    clip = build_clip(tiny=True)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
    lat = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    from videoedit.nodes.movie import engine_cfg_distill as md
    data = md.DistillData(lat, lat, enc("make it snowy").expand(4, -1, -1), enc(""))
    return load, data


def _distill_cfg(**kw):
    from videoedit.nodes.movie import engine_cfg_distill as md
    return md.DistillConfig(**{"steps": 2, "batch_size": 2, "learning_rate": 1e-3, "rank": 2, "seed": 5,
                               "checkpoint_every": 0, **kw})


def test_a_dynamic_teacher_trains_on_its_delegate_exactly_as_a_plain_one(dyn, ip2p):
    from videoedit.nodes.movie import engine_cfg_distill as md
    load, data = ip2p
    plain = md.Distiller(load(), data, _distill_cfg())
    dynamic_teacher = _dynamic(dyn, load(), lambda: load().model)
    d = md.Distiller(dynamic_teacher, data, _distill_cfg())
    assert type(d.student).__name__ == "ModelPatcher" and not hasattr(d.student, "is_dynamic")
    assert d.student.model is not dynamic_teacher.model  # the delegate's fresh model
    assert d.run() == plain.run()  # bit for bit (the dynamic patcher itself refuses to be loaded)
    for n, m in dynamic_teacher.model.named_modules():  # nothing was attached to the dynamic model
        assert not getattr(m, "weight_function", []), n


def test_no_delegate_is_an_error_naming_the_input_and_the_flag(dyn, ip2p):
    from videoedit.nodes.movie import engine_cfg_distill as md
    load, data = ip2p
    with pytest.raises(RuntimeError, match=r"^model: .*dynamic VRAM.*--disable-dynamic-vram"):
        md.Distiller(_dynamic(dyn, load(), None), data, _distill_cfg())


def test_the_training_flag_is_set_during_the_steps_and_restored_after_a_run_and_a_cancel(comfy, ip2p, monkeypatch):
    import comfy.model_management as mm
    from videoedit.nodes.movie import engine_cfg_distill as md
    load, data = ip2p
    monkeypatch.setattr(mm, "in_training", False, raising=False)  # current core has it; 0.3.75 does not
    seen = []
    md.Distiller(load(), data, _distill_cfg()).run(on_step=lambda s, loss: seen.append(mm.in_training))
    assert seen == [True, True] and mm.in_training is False

    class Cancelled(Exception):
        pass

    def cancel_before_step_2():
        if seen and len(seen) == 3:
            raise Cancelled
    with pytest.raises(Cancelled):
        md.Distiller(load(), data, _distill_cfg()).run(on_step=lambda s, loss: seen.append(mm.in_training),
                                                       interrupted=cancel_before_step_2)
    assert seen == [True, True, True] and mm.in_training is False


def test_without_the_flag_in_core_nothing_is_set(comfy):
    import comfy.model_management as mm
    from videoedit.nodes.host.training_models import training_mode
    assert not hasattr(mm, "in_training")  # ComfyUI 0.3.75
    with training_mode():
        assert not hasattr(mm, "in_training")
    assert not hasattr(mm, "in_training")


# ------------------------------------------------- the one-step distiller and the EVE aligner

@pytest.fixture(scope="module")
def eve_stack(comfy):
    from harness.fixtures import build_clip, build_model, tiny_controlnet, tiny_motion_module_sd, tiny_unet_config
    from videoedit.nodes.eve import engine_align_trainer as et
    from videoedit.nodes.eve.temporal_adapter import adapter_from_state_dict
    load = lambda: build_model(tiny_unet_config(), seed=3)
    clip = build_clip(tiny=True)
    adapter = adapter_from_state_dict(tiny_motion_module_sd(seed=31), "tiny motion module")
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
    g = torch.Generator().manual_seed(0)
    data = et.AlignData(torch.randn(1, F, 4, SIZE // 8, SIZE // 8, generator=g),
                        torch.rand(1, F, SIZE, SIZE, 3, generator=g), enc("make it winter"), enc("a snowy street"),
                        enc(""), ["a"])
    return load, adapter, data


def _align_cfg():
    from videoedit.nodes.eve.engine_align_trainer import AlignConfig
    return AlignConfig(steps=1, batch_size=1, learning_rate=1e-3, rank=2, k=2, teacher_steps=2, seed=1,
                       checkpoint_every=0)


def _aligner(eve_stack, model, control, video=True):
    from videoedit.nodes.eve.engine_align_trainer import Aligner
    from videoedit.nodes.eve.engine_video_adapter import apply_video_adapter
    load, adapter, data = eve_stack
    return Aligner(model, control, apply_video_adapter(model, adapter, anchor=True) if video else None, data,
                   _align_cfg())


def test_the_aligner_student_runs_the_delegates_own_layers_and_matches_a_plain_one(dyn, eve_stack):
    from harness.fixtures import tiny_controlnet, tiny_unet_config
    from videoedit.nodes.eve.engine_align_trainer import is_temporal
    load, adapter, data = eve_stack
    plain = _aligner(eve_stack, load(), tiny_controlnet(tiny_unet_config()))
    dynamic_model = _dynamic(dyn, load(), lambda: load().model)
    dynamic_control = dyn[1](tiny_controlnet(tiny_unet_config()).control_model)
    a = _aligner(eve_stack, dynamic_model, dynamic_control)
    assert type(a.student).__name__ == "ModelPatcher" and a.student.model is not dynamic_model.model
    assert type(a.control_patcher).__name__ == "ModelPatcher"
    assert a.control.control_model is not dynamic_control.control_model  # its own copy of the ControlNet
    own = dict(a.student.model.named_modules())
    old = {id(m) for m in dynamic_model.model.modules()}
    for path, block in a.student.object_patches.items():
        if any(is_temporal(c) for c in block.children()):
            for name, layer in block.named_children():
                if not is_temporal(layer):  # the backbone layers of the patched blocks: the delegate's
                    assert layer is own[f"{path}.{name}"] and id(layer) not in old, (path, name)
    outs = []
    for al in (plain, a):
        al._load()
        idx = torch.tensor([0])
        m = al.batch_models(idx)
        x = torch.randn(F, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
        t = torch.full((F,), 500)
        with torch.no_grad():
            outs.append([m.student(x, t), m.edit_teacher(x, t), m.video_teacher(x, t)])
    for p, d in zip(*outs):
        assert torch.equal(p, d)


def test_a_dynamic_control_net_without_a_copy_method_is_an_error(dyn, eve_stack):
    from harness.fixtures import tiny_controlnet, tiny_unet_config
    load = eve_stack[0]
    control = tiny_controlnet(tiny_unet_config())  # 0.3.75's ControlNet: no deepclone_multigpu
    control.control_model_wrapped = dyn[0](control.control_model, torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"^control_net: .*--disable-dynamic-vram"):
        _aligner(eve_stack, load(), control, video=False)


def test_every_trainer_sets_the_flag_around_its_loop_and_restores_it_on_a_cancel(comfy, ip2p, eve_stack,
                                                                                  monkeypatch):
    import comfy.model_management as mm
    from harness.fixtures import tiny_controlnet, tiny_unet_config
    from videoedit.nodes.eve import engine_align_trainer as et
    from videoedit.nodes.movie import engine_cfg_distill as md, engine_onestep_distill as od
    from videoedit.nodes.movie.engine_guidance import make_student
    monkeypatch.setattr(mm, "in_training", False, raising=False)
    seen = []

    def cancelled_loop(*args, **kwargs):
        seen.append(mm.in_training)
        raise KeyboardInterrupt  # a cancel inside the loop

    load, data = ip2p
    adapter = md.new_adapter(load(), _distill_cfg())
    trainers = {
        md: md.Distiller(load(), data, _distill_cfg()),
        od: od.OneStepDistiller(make_student(load(), adapter), data,
                                od.OneStepConfig(v_steps=1, steps=1, batch_size=1, rank=2)),
        et: _aligner(eve_stack, eve_stack[0](), tiny_controlnet(tiny_unet_config()), video=False),
    }
    for module, trainer in trainers.items():
        monkeypatch.setattr(module, "run_training_loop", cancelled_loop)
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
        assert mm.in_training is False, module.__name__
    assert seen == [True, True, True]

"""Development harness: the embedded ComfyUI, model fixtures, headless runner, benchmarks.

Not loaded by ComfyUI (only the pack's ``__init__.py`` is); used by ./videoedit and tests.
"""

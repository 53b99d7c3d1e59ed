"""MoViE (mobile video editing): InstructPix2Pix with a cross-frame anchor, two guidance knobs,
CFG distilled into one pass, one-step adversarial distillation. Pure math: ``guidance.py``,
``cross_frame.py``, ``onestep.py``, ``mobile_pix2pix.py``; engines ``engine_*.py``; nodes
``nodes_movie.py`` (editing) and ``nodes_movie_train.py`` (trainers)."""

CATEGORY = "video edit/MoViE"

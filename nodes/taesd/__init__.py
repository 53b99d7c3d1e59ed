"""TAESD for video (MoViE's fast autoencoder): ``engine_taesd.py``, ``nodes_taesd.py``."""

CATEGORY = "video edit/TAESD"

"""soundops library: plain functions and small classes behind every pipeline stage.

Nothing here imports Prefect or talks to a server; stages are file-to-file steps that
the DVC graph (``dvc.yaml``) runs through ``soundops stage NAME``.
"""

__version__ = "0.1.0"

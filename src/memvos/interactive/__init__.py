"""memvos.interactive: clicks, scribbles and boxes -> masks (PML pixel embeddings), propagated with memory.

``InteractiveVideo`` (:mod:`memvos.interactive.video`) is the Python API; ``memvos ui`` serves it in the
browser (:mod:`memvos.interactive.server`). The embedding head is trained by ``memvos train`` with
``"stage": "pml"`` (:mod:`memvos.training.pml`).
"""

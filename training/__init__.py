"""Offline DaRL training: data → linear probe → DASA → fine-tune → WiSE → eval → export.

Modules are flat and import heavy libraries (torch, transformers, faiss) inside the
functions that need them, so ``darl --help`` stays fast. This package never imports
``service``; the artifact directory written by ``training.export`` is the hand-off.
"""

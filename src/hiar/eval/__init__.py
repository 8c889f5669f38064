"""Evaluation: the drift metric suite (:mod:`hiar.eval.drift`), its learned metrics
(:mod:`hiar.eval.learned`), the shapes world's scores (:mod:`hiar.eval.shapes_scores`) and plots.

Submodules are imported on use, so ``import hiar.eval`` stays light (no transformers).
"""

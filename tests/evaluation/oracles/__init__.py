"""Frozen oracles: the official BraTS lesion-wise evaluations, step by step as their scripts do it.

Each module names its source (repository, file, commit) and licence. They are slow on purpose
(full-grid dilations per lesion, one pass per label pair, as the scripts do) and independent of
glioseg's code: only the libraries the scripts use (cc3d, SciPy, DeepMind's surface_distance).
Never edit them to make a test pass; a difference is glioseg's to explain.
"""

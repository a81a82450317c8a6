"""``glioseg experiment``: comparisons of arms (model + recipe + overrides) run fairly.

spec (YAML → dataclasses) → resolve (one checked TrainConfig per arm) → folds (stratified k-fold)
→ plan (one run per arm, fold and seed; its status) → job (train or resume, predict and score the
held-out cases, small result files) → executors (local processes, submitit / Slurm) → results
(tables of the result files) → stats (pure functions) → figures → report (Markdown, HTML).
"""

"""The prepared GPU check (``bench/gpu/check.py``, BENCHMARKS.md §6), in parts.

- :mod:`bench.gpu.common`: paths, constants and small helpers (dtypes, hashing, the environment, JSON files);
- :mod:`bench.gpu.model`: the randomly initialised model built from a published config (or its tiny scaling);
- :mod:`bench.gpu.probes`: what is measured inside a training process (a ``TrainerCallback``: step times, tokens,
  peak memory) and the answer-position logits compared after save -> reload; also used by the tests;
- :mod:`bench.gpu.jobs`: the child processes (``python -m bench.gpu.jobs JOB.json``): training, LF generation,
  reload checks, ``attok predict``;
- :mod:`bench.gpu.runner`: the parent: phases in order under a time budget, ``results.json`` after every phase.
"""

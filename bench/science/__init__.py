"""Does AttTok help, or do its confounds? The CPU-scale experiment, v3 (BENCHMARKS.md §4).

v3 over v2 (`bench_results/science_v2/`, superseded): **one decision rule for every arm** in each scorer (one
forward: `attok predict --mode answer`, the probability of each class's whole answer; generative: greedy decoding,
parsed); **a primary endpoint** written into the protocol before any run — generative balanced accuracy, attok −
matched, on the datasets that pass inclusion, with a hierarchical interval (replicates, then images) and the minimum
detectable effect; **a capacity-matched control** (``matched``: `bench/science/control.py`); **8 independent
replicates** of one seed each (v2: 3 replicates × 2 seeds, whose seeds moved together); the datasets v2's
inclusion rule admitted (PneumoniaMNIST, RetinaMNIST; BreastMNIST's vanilla never left the majority); the ablation
and the reproducibility check behind ``--parts``. v1 (`bench_results/science/`) decoded with the wrong positions and
had no control. The same for every arm of a dataset:

- **Replicates.** ``--replicates`` (default 1–8) independent initialisations: replicate r has its own tiny
  Qwen2-VL (random weights, seed r), its own tower pretraining and its own warm start; each is trained with
  ``--seeds`` (default 1: data order and new-parameter init).
- **A tower that sees** (`bench/science/tower.py`): label-free SimCLR on the dataset's training images (tower +
  merger, 300 steps), then frozen in every arm; the linear probe of its features on val is reported with the random
  tower's and the majority rate.
- **Label-free warm start** (text only, full fine-tuning, 1 epoch): every training question answered by a uniformly
  random class name, half of them written bare (the vanilla answer, ``pneumonia``) and half with a leading space (the
  text an AttTok answer has after its attribute token, `` pneumonia``), so the arms' first text tokens are all trained.
- **Arms** (`finetuning_type: freeze`, every LLM layer trainable, embed / head / tower / merger frozen):
  ``vanilla``; ``class_rows`` — vanilla plus trainable embed and head rows of K class-name tokens (the token at which
  each class name departs from the others: the rows greedy decoding decides on), the same element count as AttTok's
  K attribute rows (`bench/science/run.py`); ``matched`` — class_rows plus ACC over K free learnable vectors,
  AttTok's forward-path capacity without its attribute semantics (`bench/science/control.py`); ``tokens``
  (attribute tokens alone); ``+ACC``; ``+ACM``; ``attok`` (tokens + ACC + ACM). ``changed`` counts, per group, the
  elements that moved against the warm model.
- **Recipe**: AdamW, wd 1e-4, cosine, 10 % warm-up, batch 32, images 112²; learning rate and epochs per dataset from
  ``RECIPES`` (chosen in v1 on val with the vanilla arm; not re-chosen for v2), ``--lr`` / ``--epochs`` with
  ``--data-dir``.
- **Scoring** of every test image, stored per image: one forward (every arm: the likelihood of each class's whole
  answer as its dataset writes it; AttTok arms also by attribute-token probabilities, secondary) and generative (LF
  ``do_predict``, greedy, the training positions for every arm,
  parsed by `attok eval classify`'s rules; unparseable = wrong). The vanilla arm also scores val (the inclusion rule).
- **Inclusion rule** (`bench/science/stats.py`, fixed before any v2 test number was read; v1 had already shown
  BreastMNIST stuck at the majority): a dataset is in the headline when vanilla's mean val accuracy beats the val
  majority rate by ≥ 3 points.
- **Statistics** (`bench/science/stats.py`): per (replicate, seed) McNemar; over replicates a paired t-test; over
  images a bootstrap 95 % interval.
- **Reproducibility** (``repro`` part): replicate 1, seed 1 of every main arm on the focus dataset is trained again
  from scratch; its per-image predictions must equal the first run's (each run is one process, one thread,
  ``PYTHONHASHSEED=0``).

Parts: ``main`` (the default: vanilla, class_rows, matched, attok on every dataset), ``ablation`` (tokens, +ACC, +ACM
on ``--focus``,
``--ablation-seeds``, default: the same as ``--seeds``), ``repro``. Runs go ``--workers`` at a time, one torch
thread each; a rerun skips what is in results.json.

    python -m bench.science run [--parts main ablation repro] [--datasets pneumonia retina] [--out DIR]
    python -m bench.science run --data-dir DIR --name NAME [--lr 5e-4 --epochs 3] --out OUT   # `attok data classify`

Files: ``datasets.py`` (MedMNIST and `attok data classify` datasets imported into the experiment's folder),
``experiment.py`` (the runs, the results file and its resume), ``cli.py`` (the command), ``run.py`` (one run in its
own process), ``tower.py``, ``params.py``, ``stats.py``, ``report.py``, ``medmnist.py``.
"""

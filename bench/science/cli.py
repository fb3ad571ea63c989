"""`python -m bench.science run …`: the command of the science experiment (options in the package docstring)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.science import __doc__ as DESIGN
from bench.science.common import (
    ABLATION_ARMS,
    COST,
    DEFAULT_OUT,
    FOCUS,
    MAIN_ARMS,
    PARTS,
    RECIPES,
    V3_DATASETS,
    VERSION,
)
from bench.science.datasets import Dataset, build_medmnist, fingerprint, read_dataset, write_dataset
from bench.science.experiment import Experiment
from bench.science.medmnist import CLASS_MAPS
from bench.science.report import PRIMARY_TEXT
from bench.science.stats import INCLUSION_MARGIN, INCLUSION_RULE


def check_out(out: Path, overwrite: bool, data_dir: Path | None) -> None:
    """``--out`` is a new or empty folder, or an earlier output of this command (resumed); never the dataset's folder
    nor a folder around it; anything else needs ``--overwrite`` (which removes it first)."""
    from llamafactory_attok.safe_paths import within

    if data_dir is not None and (within(out, data_dir) or within(data_dir, out)):
        raise SystemExit(f"--out {out}: lies inside --data-dir {data_dir} or holds it; the dataset's folder is only "
                         "read — choose another --out")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    results = out / "results.json"
    ours = out.is_dir() and results.is_file() and json.loads(results.read_text()).get("version") == VERSION
    if overwrite:
        if not ours:
            raise SystemExit(f"--out {out}: --overwrite removes only an earlier output of this command "
                             f"(a folder with a version-{VERSION} results.json); choose a new --out")
        shutil.rmtree(out)
    elif not ours:
        raise SystemExit(f"--out {out}: exists and is not an output of `bench.science run` (no version-{VERSION} "
                         "results.json); choose a new or empty folder")


def run_experiment(ns: argparse.Namespace) -> None:
    imported = {ns.name: read_dataset(Path(ns.data_dir).resolve(), ns.name)} if ns.data_dir else {}  # before --out
    check_out(Path(ns.out), ns.overwrite, Path(ns.data_dir) if ns.data_dir else None)
    exp = Experiment(Path(ns.out))
    source = f"--data-dir {Path(ns.data_dir).resolve()} --name {ns.name}" if ns.data_dir else "MedMNIST"
    if exp.results.get("source", source) != source:
        raise SystemExit(f"--out {exp.out}: holds the experiment on {exp.results['source']}, not {source}; "
                         "use another --out")
    exp.results["source"] = source
    exp.out.mkdir(parents=True, exist_ok=True)
    exp.save()  # from here on --out is recognisably this command's output (resumable, --overwrite-able)
    start = time.time()
    if ns.data_dir:
        recipes = {ns.name: {"lr": ns.lr or 5e-4, "epochs": ns.epochs or 3}}
        focus = ns.name
    else:
        names = dict.fromkeys([*ns.datasets, *([ns.focus] if {"ablation", "repro"} & set(ns.parts) else [])])
        imported = {name: read_dataset(build_medmnist(name, exp.out / "sources" / name), name) for name in names}
        recipes = {name: {"lr": ns.lr or RECIPES[name]["lr"], "epochs": ns.epochs or RECIPES[name]["epochs"]}
                   for name in names}
        focus = ns.focus
    with exp.lock:
        exp.results.setdefault("protocol", {"inclusion_rule": INCLUSION_RULE, "inclusion_margin": INCLUSION_MARGIN,
                                            "primary_endpoint": PRIMARY_TEXT})
    datasets = []
    for name, read in imported.items():
        digest = fingerprint(read)
        exp.check_resume(name, digest, recipes[name])  # before the import rewrites the experiment's copy
        ds = write_dataset(read, exp.data)
        ds.recipe = recipes[name]
        exp.add_dataset(ds, digest)
        datasets.append(ds)
    main_names = [ds.name for ds in datasets if ns.data_dir or ds.name in ns.datasets]
    order = sorted(datasets, key=lambda d: -COST.get(d.name, 1))
    first = ns.replicates[0]
    tasks = {ds.name: [] for ds in order}
    for ds in order:
        if "main" in ns.parts and ds.name in main_names:
            tasks[ds.name] += [(arm, r, s, "main") for r in ns.replicates for s in ns.seeds for arm in MAIN_ARMS]
        if "ablation" in ns.parts and ds.name == focus:
            tasks[ds.name] += [(arm, r, s, "ablation") for r in ns.replicates for s in ns.ablation_seeds
                               for arm in ABLATION_ARMS]
    repro_arms = [arm for arm in MAIN_ARMS if "repro" in ns.parts and focus in main_names
                  and not exp.find("repro", dataset=focus, arm=arm, replicate=first, seed=ns.seeds[0],
                                   **recipes[focus])]
    if repro_arms and "main" not in ns.parts:
        missing = [arm for arm in repro_arms if not exp.find("runs", dataset=focus, arm=arm, replicate=first,
                                                             seed=ns.seeds[0], **recipes[focus])]
        if missing:
            raise SystemExit(f"--parts repro: no first run of {missing} (replicate {first}, seed {ns.seeds[0]}) on "
                             f"{focus} in {exp.path} to repeat; run the main part first")

    def todo(ds: Dataset, replicate: int) -> bool:
        """Does (ds, replicate) still need its warm model? (A resumed, finished experiment retrains nothing.)"""
        runs = [t for t in tasks[ds.name] if t[1] == replicate and not exp.find(
            "runs", dataset=ds.name, arm=t[0], replicate=replicate, seed=t[2], **ds.recipe)]
        repeat = "repro" in ns.parts and ds.name == focus and replicate == first and focus in main_names and (
            bool(repro_arms) or not exp.find("repro", dataset=focus, arm="tower + warm start", replicate=first))
        return bool(runs) or repeat

    with ThreadPoolExecutor(max_workers=ns.workers) as pool:
        warm = {(ds.name, r): pool.submit(exp.prepare, ds, r) for ds in order for r in ns.replicates if todo(ds, r)}
        futures = [pool.submit(exp.run, ds, arm, r, s, warm[(ds.name, r)], part)
                   for ds in order for arm, r, s, part in tasks[ds.name] if (ds.name, r) in warm]
        failures = [f"{f.exception()}" for f in [*warm.values(), *futures] if f.exception() is not None]
        if not failures:  # from val only, stored before the report reads any test number
            exp.fix_inclusion(main_names, ns.replicates, ns.seeds)
        if "repro" in ns.parts and focus in main_names and not failures:  # after the runs it repeats
            ds = exp.datasets[focus]
            repro = [pool.submit(exp.run, ds, arm, first, ns.seeds[0], warm[(focus, first)], "main", True)
                     for arm in repro_arms]
            if not exp.find("repro", dataset=focus, arm="tower + warm start", replicate=first):
                repro.append(pool.submit(exp.repeat_preparation, ds, first))
            failures += [f"{f.exception()}" for f in repro if f.exception() is not None]
        failures = list(dict.fromkeys(failures))  # one failed warm start fails every run that needs it
    wall = round(time.time() - start)
    if warm:  # something was trained (a resumed, finished experiment adds no wall-time line)
        with exp.lock:
            exp.results.setdefault("wall_seconds", []).append({"parts": ns.parts, "seconds": wall,
                                                               "workers": ns.workers})
    exp.save()
    from bench.science.report import report

    (exp.out / "summary.md").write_text(report(exp.results))
    print(report(exp.results))
    print(f"wall time {wall / 60:.1f} min", flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.science", description=DESIGN,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="the experiment")
    go.add_argument("--parts", nargs="+", choices=PARTS, default=["main"],
                    help="main (default), ablation (tokens, +ACC, +ACM on --focus), repro (a run trained again)")
    go.add_argument("--datasets", nargs="+", choices=list(CLASS_MAPS),
                    help=f"MedMNIST datasets of the main part (default: {' '.join(V3_DATASETS)})")
    go.add_argument("--focus", help=f"dataset of the ablation and the reproducibility check (default: {FOCUS})")
    go.add_argument("--data-dir", help="a dataset built by `attok data classify` (instead of the MedMNIST ones)")
    go.add_argument("--name", help="its --name (with --data-dir)")
    go.add_argument("--lr", type=float, help="learning rate (default: RECIPES, or 5e-4 with --data-dir)")
    go.add_argument("--epochs", type=int, help="epochs (default: RECIPES, or 3 with --data-dir)")
    go.add_argument("--replicates", type=int, nargs="+", default=list(range(1, 9)),
                    help="independent replicates (own base model, tower, warm start; default 1–8)")
    go.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds per replicate (default 1)")
    go.add_argument("--ablation-seeds", type=int, nargs="+", help="seeds of the ablation (default: --seeds)")
    go.add_argument("--out", help=f"results folder (default: {DEFAULT_OUT}; required with --data-dir)")
    go.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    go.add_argument("--overwrite", action="store_true", help="remove an earlier output in --out first")
    ns = parser.parse_args(argv)
    ns.ablation_seeds = ns.ablation_seeds or ns.seeds
    if not set(ns.ablation_seeds) <= set(ns.seeds):
        parser.error(f"--ablation-seeds {ns.ablation_seeds}: must be among --seeds {ns.seeds} (the ablation arms are "
                     "compared with vanilla runs of the same seeds)")
    if min(ns.replicates) < 1 or min(ns.seeds) < 0:
        parser.error("--replicates must be ≥ 1 and --seeds ≥ 0")
    if ns.data_dir and (ns.datasets is not None or ns.focus is not None):
        parser.error("--datasets / --focus choose MedMNIST datasets; with --data-dir the dataset is --name")
    ns.datasets = ns.datasets or list(V3_DATASETS)
    for option in ("seeds", "datasets", "parts", "replicates", "ablation_seeds"):
        values = getattr(ns, option)
        if len(set(values)) != len(values):
            parser.error(f"--{option.replace('_', '-')}: a value given twice ({values})")
    if bool(ns.data_dir) != bool(ns.name):
        parser.error("--data-dir and --name go together")
    if ns.data_dir and ns.out is None:
        parser.error("--data-dir needs its own --out (the default one holds the MedMNIST experiment)")
    ns.out = ns.out or DEFAULT_OUT
    if ns.data_dir:
        ns.focus = ns.name
    else:
        ns.focus = ns.focus or FOCUS
    if ns.focus not in CLASS_MAPS and not ns.data_dir:
        parser.error(f"--focus: one of {list(CLASS_MAPS)}")
    for option, bad, rule in (("--workers", ns.workers < 1, "≥ 1"),
                              ("--epochs", ns.epochs is not None and ns.epochs < 1, "≥ 1"),
                              ("--lr", ns.lr is not None and ns.lr <= 0, "> 0")):
        if bad:
            parser.error(f"{option} must be {rule}")
    run_experiment(ns)


if __name__ == "__main__":
    main()

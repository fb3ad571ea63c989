"""A vision tower that sees something: label-free pretraining of the tiny tower and a linear probe of it (§4, #24).

The tiny Qwen2-VL's tower starts random; frozen, its features are fixed random projections and ACC / ACM have nothing
learned to work with. Here the tower *and its merger* (the part that writes the LLM-width visual tokens ACC attends
over) learn **SimCLR** (Chen et al., 2020) on the **training images only**, no label read: two augmented views of each
image (torchvision v2 crop-and-resize, flip, brightness / contrast) are pulled together and away from the other images
of the batch (NT-Xent, τ = 0.2) through a small projection head on the mean visual token. The head is thrown away; the
tower is written into a copy of the model folder that every arm then starts from (frozen in every arm).
``--objective rotation`` (predict k·90°, Gidaris et al., 2018) is kept for comparison: on these images it learned
features that probe *worse* than the random tower's (PneumoniaMNIST val 0.895 vs 0.908, RetinaMNIST 0.483 vs 0.550,
where the fundus is nearly rotation-symmetric), so SimCLR is the default.

The linear probe says how much the tower sees: logistic regression (scikit-learn) on the mean visual token of each
training image, scored on val, for the random tower and the pretrained one, next to the val majority rate.

    python -m bench.science.tower MODEL TRAIN.json VAL.json OUT [--steps 300] [--seed 1] [--objective simclr]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

BATCH, STEPS, LR = 32, 300, 2e-3


def read_split(path: Path) -> tuple[list[Path], list[str]]:
    """Image paths (resolved against the JSON's folder) and labels of an `attok data classify` split."""
    rows = json.loads(path.read_text())
    images = [Path(row["images"][0]) for row in rows]
    return [p if p.is_absolute() else path.parent / p for p in images], [row["label"] for row in rows]


def load_images(paths: list[Path]) -> torch.Tensor:
    """uint8 RGB tensors (N, 3, H, W); every image of one build has the same size."""
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class Tower:
    """The model's own tower + merger, fed through the model's own image processor (the training path)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.width = self.model.config.text_config.hidden_size

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Mean visual token per image (N, width): what the LLM receives, averaged."""
        batch = self.processor.image_processor(images=list(images), return_tensors="pt")
        features = self.model.get_image_features(pixel_values=batch["pixel_values"],
                                                 image_grid_thw=batch["image_grid_thw"]).pooler_output
        return torch.stack([tokens.mean(0) for tokens in features])

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 128) -> np.ndarray:
        self.model.eval()
        return torch.cat([self.pooled(images[i:i + batch]) for i in range(0, len(images), batch)]).numpy()


def probe(tower: Tower, train: tuple[torch.Tensor, list[str]], val: tuple[torch.Tensor, list[str]]) -> float:
    """Val accuracy of a logistic regression on the frozen mean visual token (standardised)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(tower.features(train[0]), train[1])
    return float(classifier.score(tower.features(val[0]), val[1]))


def _views(images: torch.Tensor) -> torch.Tensor:
    """One random SimCLR view per image (torchvision v2: crop-and-resize, flip, brightness / contrast)."""
    from torchvision.transforms import v2

    size = images.shape[-1]
    augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.4, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                          v2.ColorJitter(brightness=0.4, contrast=0.4)])
    return torch.stack([augment(image) for image in images])


def nt_xent(z: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss over 2N embeddings whose rows i and i + N are two views of one image."""
    z = torch.nn.functional.normalize(z, dim=-1)
    n = z.shape[0] // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(logits, targets)


def pretrain(tower: Tower, images: torch.Tensor, steps: int, seed: int, objective: str = "simclr") -> list[float]:
    """``simclr`` (two augmented views of each image agree) or ``rotation`` (predict k·90°) on ``images``; returns
    the loss of every 25th step."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if objective == "simclr":
        head = torch.nn.Sequential(torch.nn.Linear(tower.width, tower.width), torch.nn.ReLU(),
                                   torch.nn.Linear(tower.width, 32))
    else:
        head = torch.nn.Linear(tower.width, 4)
    visual = tower.model.model.visual
    params = [*visual.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps, pct_start=0.1)
    visual.train()
    losses = []
    for step in range(steps):
        index = torch.randint(len(images), (BATCH,), generator=generator)
        if objective == "simclr":
            loss = nt_xent(head(tower.pooled(torch.cat([_views(images[index]), _views(images[index])]))))
        else:
            turns = torch.randint(4, (BATCH,), generator=generator)
            batch = torch.stack([torch.rot90(images[i], int(k), dims=(1, 2))
                                 for i, k in zip(index, turns, strict=True)])
            loss = torch.nn.functional.cross_entropy(head(tower.pooled(batch)), turns)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            losses.append(round(float(loss), 4))
    return losses


def build_tower_model(model_dir: Path, train_json: Path, val_json: Path, out: Path, *, steps: int = STEPS,
                      seed: int = 1, objective: str = "simclr") -> dict:
    """Write ``out`` = ``model_dir`` with a pretrained tower (``objective``); return the probe and the loss trace.
    ``out`` is written next to itself and renamed into place (a half-written model is never left)."""
    torch.manual_seed(seed)
    random.seed(seed)
    start = time.time()
    train_paths, train_labels = read_split(train_json)
    val_paths, val_labels = read_split(val_json)
    train = (load_images(train_paths), train_labels)
    val = (load_images(val_paths), val_labels)
    tower = Tower(model_dir)
    report = {"objective": objective, "images": len(train_paths), "steps": steps, "batch": BATCH, "lr": LR,
              "seed": seed, "val_majority": max(val_labels.count(c) for c in set(val_labels)) / len(val_labels),
              "probe_val_random_tower": probe(tower, train, val)}
    report["pretraining_loss"] = pretrain(tower, train[0], steps, seed, objective)
    report["probe_val_pretrained_tower"] = probe(tower, train, val)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    tower.model.save_pretrained(tmp)
    report["seconds"] = round(time.time() - start, 1)
    (tmp / "tower_pretraining.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("train_json", type=Path)
    parser.add_argument("val_json", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--objective", choices=("simclr", "rotation"), default="simclr")
    ns = parser.parse_args()
    if ns.steps < 10:
        parser.error("--steps must be ≥ 10 (the one-cycle schedule warms up over the first 10 %)")
    print(json.dumps(build_tower_model(ns.model, ns.train_json, ns.val_json, ns.out, steps=ns.steps, seed=ns.seed,
                                       objective=ns.objective)))


if __name__ == "__main__":
    main()

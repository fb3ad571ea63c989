"""Analysis figures of a trained AttTok model (paper Fig. 1b, 5, 6, 7), headless matplotlib:

- t-SNE (scikit-learn) of image-level visual tokens (dots, coloured by class) with the attribute tokens a_k and the
  other book entries (stars);
- similarity heatmaps of class-mean visual features against textual (keyword) and attribute features;
- ACC attention maps: per visual token, the attention ACC pays to the entries of the image's own class, overlaid on
  the image.

Visual features are the vision tower's output before ACC (a forward hook prepended to ACC's own).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from ..attach import base_model_of, family_of, module_of
from ..errors import AttTokError
from ..plan import image_means
from .attribute_classifier import Sample, encode_sample, open_image, prompt_encoder
from .figures import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


@torch.no_grad()
def collect(model, processor, samples: list[Sample], token_ids: list[int], batch_size: int = 8,
            device: str = "cpu", template: str | None = None, default_system: str | None = None) -> dict:
    """Per image: mean visual token (pre-ACC), token grid and ACC weights; plus the books of the model.

    Inputs are the samples' training prompts (LF's template), cut right before the attribute token.
    """
    model.to(device).eval()
    encoder = prompt_encoder(processor, template, default_system)
    base = base_model_of(model)
    module = module_of(model)
    if module is None:
        raise AttTokError("the model carries no AttTok module: the analysis figures need an AttTok model")
    captured: list[torch.Tensor] = []
    family = family_of(base)

    def capture(mod, args, kwargs, out) -> None:
        features = family.read_features(out)
        if features is None:
            raise AttTokError(f"{family.name}: the vision tower's output holds no visual tokens to analyse")
        captured.append(features.detach().float())

    handle = family.feature_module(base).register_forward_hook(capture, with_kwargs=True, prepend=True)
    means: list[torch.Tensor] = []
    grids: list[tuple[int, int] | None] = []
    weights: list[torch.Tensor] = []
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="features", leave=False):
            batch = samples[start:start + batch_size]
            inputs = encoder.batch([encode_sample(encoder, s, set(token_ids)) for s in batch], device, model)
            captured.clear()
            model(**inputs)
            features = captured[0]
            sizes = family.image_sizes(inputs, base.config)
            if sizes is None:
                raise AttTokError("a batch of the analysed samples carries no images")
            books, valid = module.book_entries(features.device)
            means.extend(image_means(features, sizes).cpu())
            grids.extend(family.token_grids(inputs, sizes, base.config))
            if module.acc is not None:
                weights.extend(w.cpu() for w in torch.split(module.acc(features, books, valid)[1], sizes))
        books, valid = module.book_entries(torch.device(device))
    finally:
        handle.remove()
    return {"means": torch.stack(means), "grids": grids, "weights": weights, "books": books.float().cpu(),
            "valid": valid.cpu()}


def tsne_figure(features: dict, labels: list[int], class_names: list[str], out: Path, seed: int = 0) -> Path:
    from sklearn.manifold import TSNE

    books = features["books"]  # (K, 3, d)
    k = books.shape[0]
    points = torch.cat([features["means"], books[:, 0], books[:, 1]]).numpy()
    embedded = TSNE(n_components=2, perplexity=min(30, len(points) - 1), random_state=seed,
                    init="pca").fit_transform(points)
    n = len(labels)
    colours = plt.cm.tab10(np.arange(k) % 10)
    fig, axis = plt.subplots(figsize=(7, 6))
    for c in range(k):
        mask = np.asarray(labels) == c
        axis.scatter(embedded[:n][mask, 0], embedded[:n][mask, 1], s=12, color=colours[c], label=class_names[c])
        axis.scatter(embedded[n + c, 0], embedded[n + c, 1], marker="*", s=300, color=colours[c],
                     edgecolor="black")  # a_k
        axis.scatter(embedded[n + k + c, 0], embedded[n + k + c, 1], marker="P", s=150, color=colours[c],
                     edgecolor="black")  # e_ind(k)
    axis.set_title("t-SNE: images (dots), attribute tokens (stars), keyword embeddings (plus)")
    axis.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def similarity_figure(features: dict, labels: list[int], class_names: list[str], out: Path) -> Path:
    means = features["means"]
    k = features["books"].shape[0]
    class_means = torch.stack([means[torch.tensor(labels) == c].mean(0) for c in range(k)])
    visual = torch.nn.functional.normalize(class_means, dim=-1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")  # colour bars never cover a title
    for axis, index, title in zip(axes, (1, 0), ("textual (keyword) features", "attribute tokens"), strict=True):
        other = torch.nn.functional.normalize(features["books"][:, index], dim=-1)
        image = axis.imshow((visual @ other.T).numpy(), cmap="viridis")
        axis.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(k), class_names, fontsize=7)
        axis.set_title(f"class-mean visual vs\n{title}", fontsize=9)
        fig.colorbar(image, ax=axis, shrink=0.85, label="cosine similarity")
    return save_figure(fig, out)


def acc_map_figure(samples: list[Sample], features: dict, labels: list[int], out: Path, count: int = 6) -> Path:
    if not features["weights"]:
        raise ValueError("the model has no ACC (attok_acc: false): no attention maps to draw")
    count = min(count, len(samples))
    fig, axes = plt.subplots(1, count, figsize=(2.5 * count, 2.8))
    for axis, sample, weights, grid, label in zip(np.atleast_1d(axes), samples, features["weights"],
                                                  features["grids"], labels, strict=False):
        image = open_image(sample)
        axis.set_axis_off()
        if grid is None:  # tokens of several tiles (InternVL crops): no single map to draw
            axis.set_title("(tiled image: no single map)", fontsize=7)
            continue
        own = weights.reshape(weights.shape[0], -1, 3)[:, label].sum(-1).reshape(grid).numpy()
        axis.imshow(image)
        axis.imshow(own, cmap="jet", alpha=0.45, extent=(0, image.width, image.height, 0), interpolation="bilinear")
        axis.set_axis_off()
        axis.set_title(sample.label or "", fontsize=7)
    fig.suptitle("ACC attention to the image's own attribute book")
    fig.tight_layout()
    return save_figure(fig, out)

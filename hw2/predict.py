"""Classify photos with a trained FoodCNN checkpoint:
`python -m hw2.predict ckpt=<ckpt> images=<files or folder> [top_k=3]`.

The network, the class names and the evaluation preprocessing (image size, resize, mean/std)
all come from the checkpoint (read with weights_only=True); nothing else is needed."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.datasets.folder import IMG_EXTENSIONS

from hw2.checkpoints import load_module
from hw2.data.image_data import (
    BadImageError,
    EvalResize,
    build_eval_transform,
    draft_side,
    eval_sizes,
    load_rgb,
)
from hw2.models.classifier import ImageClassifier


def image_files(items: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files as given, and every image under each folder (sorted, hidden files skipped)."""
    if isinstance(items, (str, Path)):
        items = [items]
    out: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {path}")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"images: {path} is neither a file nor a folder")
    return out


def predict(ckpt: str | Path, images: str | Path | Iterable[str | Path], top_k: int = 3,
            batch_size: int = 16, device: str = "cpu", eval_resize: EvalResize = None
            ) -> Iterator[tuple[Path, list[tuple[str, float]] | str]]:
    """(photo, [(class name, probability)] best first) per photo, or (photo, reason) for a
    file that does not decode. `eval_resize` (a size or a list: the probabilities of the
    views averaged) replaces the checkpoint's (None: keep it)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if eval_resize is not None:
        eval_sizes(eval_resize, key="eval_resize")  # a bad value fails before loading
    model = load_module(ckpt, ImageClassifier, map_location=device)
    hp = model.hparams
    # the eval resize; checkpoints from before it have none (None on loading): the training one
    resize = next((r for r in (eval_resize, hp.get("eval_resize"), hp.get("resize"))
                   if r is not None), None)
    transform = build_eval_transform(hp.image_size, resize, mean=hp.get("mean", (0.5,) * 3),
                                     std=hp.get("std", (0.5,) * 3))
    # decoded as the data module decoded them (checkpoints without the key were drafted)
    min_side = draft_side(resize) if hp.get("jpeg_draft", True) else None
    names: Sequence[str] = model.class_names
    k = min(top_k, len(names))
    files = image_files(images)
    for start in range(0, len(files), batch_size):
        batch, good = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(transform(load_rgb(path, min_side)))
                good.append(path)
            except BadImageError as e:
                yield path, str(e)
        if not batch:
            continue
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(batch).to(device)).float(), dim=1).cpu()
        top = probs.topk(k, dim=1)
        for path, p, i in zip(good, top.values.tolist(), top.indices.tolist(), strict=True):
            yield path, [(names[j], q) for j, q in zip(i, p, strict=True)]


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    images = cfg.images
    images = OmegaConf.to_container(images) if OmegaConf.is_list(images) else str(images)
    failed = 0
    try:
        for path, result in predict(cfg.ckpt, images, cfg.top_k, cfg.batch_size, cfg.device,
                                    cfg.eval_resize):  # a list arrives as a ListConfig: fine
            if isinstance(result, str):
                failed += 1
                print(f"error: {result}", file=sys.stderr)
            else:
                print(f"{path}: " + ", ".join(f"{n} {p:.3f}" for n, p in result), flush=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

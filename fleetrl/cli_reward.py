"""``fleetrl reward``: train the success classifier that rewards real robots (HIL-SERL style, arXiv 2410.21845).

Separate from :mod:`fleetrl.cli` so that the main CLI can mount it with ``app.add_typer(reward_app, name="reward")``
without an import cycle; errors go through :func:`fleetrl.cli_common.fail` like every command's.
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from fleetrl.cli_common import console, fail

reward_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Success-reward classifiers for real robots, trained from labelled camera frames.")

@reward_app.callback()
def _reward() -> None:
    """Success-reward classifiers for real robots, trained from labelled camera frames."""
    # A callback makes this a command group even with one command, so `reward train ...` parses the same whether
    # the app is mounted under `fleetrl` or invoked on its own.


@reward_app.command()
def train(
    frames: Annotated[list[pathlib.Path], typer.Argument(
        help=".npz files (images uint8 [N, H, W, 3], labels [N] of 0/1) or directories of them.",
        show_default=False)],
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Classifier file to write.")],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training frames.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per gradient step.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation, (0, 0.5].")
                            ] = 0.2,
    min_precision: Annotated[float, typer.Option(
        help="Automatic threshold: the smallest in [0.5, 0.95] with this validation precision.")] = 0.95,
    threshold: Annotated[float | None, typer.Option(
        help="Success threshold in (0, 1); overrides the automatic choice.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, initial weights, batch order and augmentation.")
                    ] = 0,
    image_key: Annotated[str, typer.Option(help="Name of the frames array in the .npz files.")] = "images",
    label_key: Annotated[str, typer.Option(help="Name of the labels array in the .npz files.")] = "labels",
) -> None:
    """Train a success classifier on labelled frames and write it for a robot actor's reward."""
    # Defaults repeat ClassifierConfig's (a test holds them equal): importing it here would import torch for
    # every `fleetrl --help`.
    from fleetrl.datasets.frames import load_labelled_frames
    from fleetrl.learners.reward_classifier import ClassifierConfig, save_classifier, train_classifier

    try:
        cfg = ClassifierConfig(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
                               min_precision=min_precision, threshold=threshold, seed=seed)
        images, labels = load_labelled_frames(frames, image_key=image_key, label_key=label_key)
    except ValueError as exc:  # DatasetError is a ValueError
        fail(str(exc))
    n_pos = int(labels.sum())
    console.print(f"{len(labels)} frames {images.shape[1]}x{images.shape[2]}: {n_pos} success, "
                  f"{len(labels) - n_pos} failure", highlight=False)

    def progress(epoch: int, loss: float) -> None:
        console.print(f"epoch {epoch}/{cfg.epochs}  train loss {loss:.4f}", highlight=False)

    try:
        model, metrics = train_classifier(images, labels, cfg, progress=progress)
    except ValueError as exc:
        fail(str(exc))
    try:
        save_classifier(out, model, {"threshold": metrics["threshold"], "metrics": metrics,
                                     "sources": [str(f) for f in frames]})
    except OSError as exc:
        fail(f"{out}: cannot write ({exc})")
    print(f"frames: {metrics['n_train']} train, {metrics['n_val']} validation; "
          f"{metrics['positives']} success, {metrics['negatives']} failure")
    print(f"validation: accuracy {metrics['val_accuracy']:.3f}  precision {metrics['val_precision']:.3f}  "
          f"recall {metrics['val_recall']:.3f}  AUC {metrics['val_auc']:.3f}")
    print(f"threshold: {metrics['threshold']:.2f} ({metrics['threshold_reason']})")
    print(f"wrote {out}")

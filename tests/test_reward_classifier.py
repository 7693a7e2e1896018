"""Tests of the success-reward classifier: training on real sim frames, the threshold rule, the file round trip,
``ClassifierReward``, the labelled-frames loader and ``fleetrl reward train`` (CPU, no Ray)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fleetrl.cli_reward import reward_app
from fleetrl.cli_reward import train as train_command
from fleetrl.datasets.episode import DatasetError
from fleetrl.datasets.frames import load_labelled_frames
from fleetrl.envs.success_reward import ClassifierReward
from fleetrl.learners.reward_classifier import (
    ClassifierConfig,
    SuccessClassifier,
    choose_threshold,
    load_classifier,
    predict_proba,
    save_classifier,
    train_classifier,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
TINY = ClassifierConfig(epochs=2, batch_size=16, channels=(8, 16), shift_pad=2)


def bright_dark(n_per_class: int, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark noise frames (label 0) then bright noise frames (label 1)."""
    rng = np.random.default_rng(seed)
    dark = rng.integers(0, 100, (n_per_class, size, size, 3), dtype=np.uint8)
    bright = rng.integers(156, 256, (n_per_class, size, size, 3), dtype=np.uint8)
    return np.concatenate([dark, bright]), np.repeat([0, 1], n_per_class)


@pytest.fixture(scope="module")
def arm_frames() -> tuple[np.ndarray, np.ndarray]:
    """Third-person frames of the MuJoCo WidowX with the TCP moved high or low (with random x, y and gripper moves
    as distractors); label from the sim's own state: success = TCP above 12 cm, failure = below 7 cm. Frames in
    between are left out, so that every label is visibly right at 32 px."""
    from fleetrl.envs.widowx.env import WidowXEnv

    env = WidowXEnv("reach", privileged=False, image=True, image_size=SIZE, terminate_on_success=False)
    rng = np.random.default_rng(0)
    images, heights = [], []
    try:
        for episode in range(40):
            env.reset(seed=episode)
            low = episode % 2 == 0  # half the episodes go down towards the table, half stay near the start height
            for step in range(4):
                action = rng.uniform(-1.0, 1.0, 7)
                action[3:6] = 0.0  # no wrist rotation
                action[2] = (-1.0 if step < 2 else rng.uniform(-0.5, 0.5)) if low else rng.uniform(-0.3, 0.6)
                obs, *_ = env.step(action)
                images.append(obs["image"])
                heights.append(float(obs["state"][2]))
    finally:
        env.close()
    images, heights = np.stack(images), np.array(heights)
    high, low = heights > 0.12, heights < 0.07
    assert high.sum() >= 40 and low.sum() >= 40  # enough of both for a 30 % validation split
    return images[high | low], high[high | low]


# ------------------------------------------------------------------------------------------------- learning

LEARN = ClassifierConfig(epochs=80, batch_size=32, shift_pad=2, val_fraction=0.3)


def test_learns_arm_height_from_sim_frames(arm_frames) -> None:
    images, labels = arm_frames
    model, metrics = train_classifier(images, labels, LEARN)
    assert metrics["val_accuracy"] >= 0.9 and metrics["val_auc"] >= 0.95, metrics
    assert metrics["n_train"] + metrics["n_val"] == len(labels)
    assert metrics["positives"] == labels.sum() and metrics["negatives"] == (~labels).sum()
    # Stratified split: the validation frames keep the class balance of the whole set.
    assert metrics["n_val"] == round(0.3 * labels.sum()) + round(0.3 * (~labels).sum())
    if not metrics["threshold_reason"].startswith("fallback"):
        assert metrics["val_precision"] >= LEARN.min_precision
    # The model comes back in eval mode and scores the frames it learned from mostly right too.
    assert not model.training
    assert np.mean((predict_proba(model, images) >= metrics["threshold"]) == labels) >= 0.9


def test_shuffled_labels_stay_near_chance(arm_frames) -> None:
    images, labels = arm_frames
    shuffled = np.random.default_rng(1).permutation(labels)
    _, metrics = train_classifier(images, shuffled, LEARN)
    assert metrics["val_auc"] <= 0.75 and metrics["val_accuracy"] <= 0.75, metrics


def test_training_is_deterministic_given_the_seed() -> None:
    images, labels = bright_dark(8)
    runs = [train_classifier(images, labels, dataclasses.replace(TINY, seed=s)) for s in (3, 3, 4)]
    (m1, r1), (m2, r2), (m3, _) = runs
    assert r1 == r2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values(),
                                                      strict=True))


def test_threshold_is_the_smallest_meeting_the_precision() -> None:
    probs = np.array([0.55, 0.60, 0.70, 0.80, 0.90, 0.30])
    labels = np.array([0, 1, 0, 1, 1, 0], bool)
    t, reason = choose_threshold(probs, labels, min_precision=0.95)
    # Above 0.70 only the two success frames pass (precision 1); at 0.70 the failure at 0.70 passes too.
    assert t == pytest.approx(0.71) and "fallback" not in reason
    t, reason = choose_threshold(probs, labels, min_precision=0.7)  # 3 of 5 from 0.5, 3 of 4 above 0.55
    assert t == pytest.approx(0.56)
    # Every success scores below every failure: no threshold is precise enough.
    t, reason = choose_threshold(1 - probs, labels, min_precision=0.95)
    assert t == 0.5 and reason.startswith("fallback")


def test_given_threshold_overrides_the_choice() -> None:
    images, labels = bright_dark(6)
    _, metrics = train_classifier(images, labels, dataclasses.replace(TINY, threshold=0.83))
    assert metrics["threshold"] == 0.83 and metrics["threshold_reason"] == "given"


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("weight_decay", -1.0),
                                         ("val_fraction", 0.0), ("val_fraction", 0.7), ("shift_pad", -1),
                                         ("channels", ()), ("min_precision", 1.5), ("threshold", 1.0)])
def test_config_validation_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        ClassifierConfig(**{field: value})


def test_bad_training_data_is_refused() -> None:
    images, labels = bright_dark(6)
    with pytest.raises(ValueError, match="only one class"):
        train_classifier(images, np.ones(len(images)), TINY)
    with pytest.raises(ValueError, match="at least 4"):
        train_classifier(images[3:], labels[3:], TINY)  # 3 failure frames
    with pytest.raises(ValueError, match="labels"):
        train_classifier(images, labels[:-1], TINY)
    with pytest.raises(ValueError, match="square"):
        train_classifier(images[:, :, :20], labels, TINY)
    with pytest.raises(ValueError, match="0/1"):
        train_classifier(images, labels * 2, TINY)


# ----------------------------------------------------------------------------------------------- file + reward


def test_save_load_round_trip(tmp_path) -> None:
    images, labels = bright_dark(6)
    model, metrics = train_classifier(images, labels, TINY)
    path = save_classifier(tmp_path / "clf.pt", model, {"threshold": 0.7, "metrics": metrics})
    loaded, meta = load_classifier(path)
    assert np.array_equal(predict_proba(loaded, images), predict_proba(model, images))
    assert meta["threshold"] == 0.7 and meta["image_size"] == 24 and meta["channels"] == [8, 16]
    assert meta["metrics"] == metrics and meta["format_version"] == 1 and not loaded.training


def test_load_refuses_other_files(tmp_path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    for name in ("other.pt", "text.pt", "missing.pt"):
        with pytest.raises(ValueError, match=name):
            load_classifier(tmp_path / name)
    with pytest.raises(ValueError, match="threshold"):
        save_classifier(tmp_path / "x.pt", SuccessClassifier(16, (8,)), {"threshold": 1.0})
    with pytest.raises(ValueError, match=r"meta\['metrics'\]\['auc'\].*float32"):
        save_classifier(tmp_path / "x.pt", SuccessClassifier(16, (8,)), {"threshold": 0.7,
                                                                          "metrics": {"auc": np.float32(0.9)}})
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture
def untrained_file(tmp_path):
    """An untrained classifier saved with threshold 0.6, and frames of distinct probabilities (lowest, highest)."""
    torch.manual_seed(0)
    model = SuccessClassifier(SIZE, (8, 16)).eval()
    path = save_classifier(tmp_path / "clf.pt", model, {"threshold": 0.6})
    frames = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    probs = predict_proba(model, frames)
    lo, hi = frames[np.argmin(probs)], frames[np.argmax(probs)]
    assert 0 < probs.min() < probs.max() < 1
    return path, lo, hi, float(probs.min()), float(probs.max())


def test_reward_threshold_semantics(untrained_file) -> None:
    path, lo, hi, p_lo, p_hi = untrained_file
    assert ClassifierReward(path).threshold == 0.6  # from the file
    between = ClassifierReward(path, threshold=(p_lo + p_hi) / 2)
    assert between({"image": lo}) == (0.0, False) and between.last_probability == pytest.approx(p_lo, abs=1e-6)
    assert between({"image": hi}) == (1.0, True) and between.last_probability == pytest.approx(p_hi, abs=1e-6)
    at = ClassifierReward(path, threshold=between.probability({"image": hi}))
    assert at({"image": hi}) == (1.0, True)  # probability == threshold counts as success
    wrist = ClassifierReward(path, threshold=p_lo, image_key="wrist_image")
    assert wrist({"wrist_image": lo, "image": hi}) == (1.0, True)


def test_reward_errors(untrained_file) -> None:
    path, lo, *_ = untrained_file
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="reward_threshold"):
            ClassifierReward(path, threshold=bad)
    reward = ClassifierReward(path)
    with pytest.raises(ValueError, match=r"image.*\(32, 32, 3\)"):
        reward({"state": np.zeros(7)})
    with pytest.raises(ValueError, match=r"image.*\(32, 32, 3\).*\(16, 16, 3\)"):
        reward({"image": lo[:16, :16]})


# ------------------------------------------------------------------------------------------------ frames loader


def test_loader_concatenates_files_and_directories(tmp_path) -> None:
    images, labels = bright_dark(4, size=16)
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "b.npz", images=images[4:], labels=labels[4:].astype(bool))
    np.savez(tmp_path / "d" / "a.npz", images=images[:2], labels=labels[:2].astype(np.float32))
    np.savez(tmp_path / "c.npz", images=images[2:4], labels=labels[2:4])
    x, y = load_labelled_frames([tmp_path / "d", str(tmp_path / "c.npz")])
    order = np.r_[0:2, 4:8, 2:4]  # the directory's files in sorted order, then the file
    assert np.array_equal(x, images[order]) and np.array_equal(y, labels[order].astype(bool))
    x, y = load_labelled_frames(tmp_path / "c.npz")
    assert len(x) == 2


def test_loader_errors_name_file_and_key(tmp_path) -> None:
    images, labels = bright_dark(2, size=16)
    cases = {"nolabels.npz": ({"images": images}, "'labels'"),
             "float.npz": ({"images": images / 255.0, "labels": labels}, "'images'.*uint8"),
             "two.npz": ({"images": images, "labels": labels * 2}, "'labels'.*0/1"),
             "short.npz": ({"images": images, "labels": labels[:-1]}, "'labels'.*3.*4"),
             "gray.npz": ({"images": images[..., 0], "labels": labels}, r"'images'.*\[N, H, W, 3\]")}
    for name, (arrays, pattern) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DatasetError, match=f"{name}.*{pattern}"):
            load_labelled_frames([tmp_path / name])
    np.savez(tmp_path / "frames.npz", frames=images, labels=labels)
    assert len(load_labelled_frames([tmp_path / "frames.npz"], image_key="frames")[0]) == 4
    np.savez(tmp_path / "big.npz", frames=bright_dark(2, size=20)[0], labels=labels)
    with pytest.raises(DatasetError, match="big.npz.*frames.npz"):
        load_labelled_frames([tmp_path / "frames.npz", tmp_path / "big.npz"], image_key="frames")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_labelled_frames([tmp_path / "empty"])
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(DatasetError, match="junk.npz"):
        load_labelled_frames([tmp_path / "junk.npz"])


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_defaults_match_the_config() -> None:
    defaults = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    for field in dataclasses.fields(ClassifierConfig):
        if field.name in defaults:
            assert defaults[field.name] == field.default, field.name


def test_cli_trains_a_file_the_reward_loads(tmp_path) -> None:
    images, labels = bright_dark(8)
    np.savez(tmp_path / "frames.npz", images=images, labels=labels)
    out = tmp_path / "out" / "clf.pt"
    result = CliRunner().invoke(reward_app, ["train", str(tmp_path / "frames.npz"), "--out", str(out),
                                             "--epochs", "3", "--batch-size", "8", "--threshold", "0.8"])
    assert result.exit_code == 0, result.output
    assert "8 success, 8 failure" in result.stdout and "0.80 (given)" in result.stdout
    reward = ClassifierReward(out)
    assert reward.threshold == 0.8 and reward.image_size == 24
    assert reward.meta["metrics"]["n_train"] + reward.meta["metrics"]["n_val"] == 16
    assert 0 <= reward.probability({"image": images[0]}) <= 1


@pytest.mark.parametrize("case", ["missing", "one_class", "bad_option"])
def test_cli_errors_exit_2(tmp_path, case: str) -> None:
    images, labels = bright_dark(8)
    np.savez(tmp_path / "one.npz", images=images, labels=np.ones_like(labels))
    np.savez(tmp_path / "ok.npz", images=images, labels=labels)
    args, expect = {"missing": ([str(tmp_path / "nothere.npz")], "nothere.npz"),
                    "one_class": ([str(tmp_path / "one.npz")], "one class"),
                    "bad_option": ([str(tmp_path / "ok.npz"), "--val-fraction", "0.9"], "val_fraction")}[case]
    out = tmp_path / "clf.pt"
    result = CliRunner().invoke(reward_app, ["train", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and expect in result.stderr and "Traceback" not in result.output
    assert not out.exists()

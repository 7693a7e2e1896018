"""read_robomimic and read_rlds: files written here (h5py; a real TFDS build) read back as the documented episodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fleetrl.datasets import DatasetError, read_rlds, read_robomimic

LOW_DIM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
IMAGE = (16, 16, 3)


# ---------------------------------------------------------------------------------------------------- robomimic

def _demo(rng: np.random.Generator, rewards: list[float], dones: list[int]) -> dict[str, Any]:
    """A demo of T = len(rewards) steps; ``full`` holds the T+1 observations that obs/next_obs are cut from."""
    length = len(rewards)
    full = {k: rng.normal(size=(length + 1, n)) for k, n in LOW_DIM.items()}  # float64, as robomimic stores them
    full["agentview_image"] = rng.integers(0, 256, (length + 1, *IMAGE), dtype=np.uint8)
    return {"full": full, "actions": rng.uniform(-1, 1, (length, 7)), "rewards": np.array(rewards, dtype=np.float64),
            "dones": np.array(dones, dtype=np.int64)}


def _write_robomimic(path: Path, demos: dict[str, dict[str, Any]], masks: dict[str, list[str]] | None = None) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        data.attrs["total"] = sum(len(d["actions"]) for d in demos.values())
        for name, demo in demos.items():
            group = data.create_group(name)
            group.attrs["num_samples"] = len(demo["actions"])
            for key, full in demo["full"].items():
                group[f"obs/{key}"] = full[:-1]
                group[f"next_obs/{key}"] = full[1:]
            for key in ("actions", "rewards", "dones"):
                group[key] = demo[key]
        for key, names in (masks or {}).items():
            f[f"mask/{key}"] = np.array(names, dtype="S")
    return path


@pytest.fixture
def robomimic(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    rng = np.random.default_rng(0)
    demos = {  # written out of order: the reader sorts numerically (demo_2 before demo_10)
        "demo_10": _demo(rng, [0, 0, 0], [0, 0, 1]),  # done_mode=1: done at the end although it failed
        "demo_0": _demo(rng, [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]),  # done_mode=2: done on every success state too
        "demo_2": _demo(rng, [0.1, 0.2, 0.6, 0.3], [0, 0, 0, 0]),  # shaped reward, never done: truncated
    }
    return _write_robomimic(tmp_path / "lift.hdf5", demos, {"train": ["demo_10", "demo_0"]}), demos


def test_robomimic_default_mapping_round_trips(robomimic: tuple[Path, dict[str, Any]]) -> None:
    path, demos = robomimic
    episodes = list(read_robomimic(path))
    assert [e.attrs for e in episodes] == [{"source": "robomimic", "demo": d} for d in ("demo_0", "demo_2", "demo_10")]
    for episode in episodes:
        demo = demos[episode.attrs["demo"]]
        assert sorted(episode.observations) == sorted(demo["full"])
        for key, full in demo["full"].items():
            got = episode.observations[key]
            assert got.dtype == (np.uint8 if key == "agentview_image" else np.float32), key
            np.testing.assert_array_equal(got, full.astype(got.dtype))  # obs[0..T-1] + next_obs[T-1]
        np.testing.assert_array_equal(episode.actions, demo["actions"].astype(np.float32))
        np.testing.assert_array_equal(episode.rewards, demo["rewards"].astype(np.float32))
        assert episode.actions.dtype == episode.rewards.dtype == np.float32
    flags = {e.attrs["demo"]: (e.terminated.tolist(), e.truncated.tolist(), e.success.tolist()) for e in episodes}
    # Intermediate dones of demo_0 do not end it; success comes from rewards >= 1, never from dones.
    assert flags["demo_0"] == ([False] * 4 + [True], [False] * 5, [False, False, False, True, True])
    assert flags["demo_2"] == ([False] * 4, [False, False, False, True], [False] * 4)
    assert flags["demo_10"] == ([False, False, True], [False] * 3, [False] * 3)


def test_robomimic_key_mapping_concatenates_in_listed_order(robomimic: tuple[Path, dict[str, Any]]) -> None:
    path, demos = robomimic
    mapping = {"state": ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"],
               "reversed": ["robot0_gripper_qpos", "robot0_eef_pos"], "object": ["object"],
               "image": ["agentview_image"]}
    episode = next(read_robomimic(path, mapping))
    full = demos["demo_0"]["full"]
    assert sorted(episode.observations) == ["image", "object", "reversed", "state"]
    state = episode.observations["state"]
    assert state.shape == (6, 9) and state.dtype == np.float32
    np.testing.assert_array_equal(state[:, :3], full["robot0_eef_pos"].astype(np.float32))
    np.testing.assert_array_equal(state[:, 3:7], full["robot0_eef_quat"].astype(np.float32))
    np.testing.assert_array_equal(state[:, 7:], full["robot0_gripper_qpos"].astype(np.float32))
    np.testing.assert_array_equal(episode.observations["reversed"], np.concatenate(
        [full["robot0_gripper_qpos"], full["robot0_eef_pos"]], axis=1).astype(np.float32))
    np.testing.assert_array_equal(episode.observations["object"], full["object"].astype(np.float32))
    np.testing.assert_array_equal(episode.observations["image"], full["agentview_image"])


def test_robomimic_filter_key_and_success_threshold(robomimic: tuple[Path, dict[str, Any]]) -> None:
    path, _ = robomimic
    assert [e.attrs["demo"] for e in read_robomimic(path, filter_key="train")] == ["demo_0", "demo_10"]
    with pytest.raises(DatasetError, match=r"mask/valid is missing \(the file has \['train'\]\)"):
        read_robomimic(path, filter_key="valid")
    shaped = list(read_robomimic(path, success_reward_threshold=0.5))[1]
    assert shaped.attrs["demo"] == "demo_2" and shaped.success.tolist() == [False, False, True, False]


def _damage(path: Path, demos: dict[str, Any], how: str) -> None:
    with h5py.File(path, "a") as f:
        group = f["data/demo_2"]
        if how == "missing obs":
            del group["obs/robot0_eef_pos"]
        elif how == "missing next_obs":
            del group["next_obs/object"]
        elif how == "missing rewards":
            del group["rewards"]
        elif how == "short obs":
            del group["obs/object"]
            group["obs/object"] = demos["demo_2"]["full"]["object"][:2]
        elif how == "1-D actions":
            del group["actions"]
            group["actions"] = np.zeros(4)
        elif how == "NaN action":
            group["actions"][2, 3] = np.nan
        elif how == "NaN next_obs":
            group["next_obs/robot0_eef_quat"][3, 1] = np.nan


@pytest.mark.parametrize(("how", "message"), [
    ("missing obs", "demo_2: key 'obs/robot0_eef_pos' is missing"),
    ("missing next_obs", "demo_2: key 'next_obs/object' is missing"),
    ("missing rewards", "demo_2: key 'rewards' is missing"),
    ("short obs", "demo_2: obs/object has shape (2, 10), but actions has 4 steps"),
    ("1-D actions", "demo_2: actions has shape (4,), expected (T, A)"),
    ("NaN action", "demo_2: actions is not finite at index (2, 3) (nan)"),
    ("NaN next_obs", "demo_2: next_obs/robot0_eef_quat[3] is not finite at index (1,)"),
])
def test_robomimic_errors_name_file_demo_and_key(robomimic: tuple[Path, dict[str, Any]], how: str,
                                                 message: str) -> None:
    path, demos = robomimic
    _damage(path, demos, how)
    reader = read_robomimic(path)
    assert next(reader).attrs["demo"] == "demo_0"  # demos before the damaged one come back intact
    with pytest.raises(DatasetError) as info:
        next(reader)
    assert str(info.value).startswith(f"{path}: {message}")


def test_robomimic_rejects_bad_mappings_and_foreign_files(robomimic: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = robomimic
    with pytest.raises(DatasetError, match=r"demo_0: obs/agentview_image \(uint8 \(16, 16, 3\)\) cannot be "
                                           r"concatenated into observations/x"):
        next(read_robomimic(path, {"x": ["object", "agentview_image"]}))
    with pytest.raises(DatasetError, match=r"obs_keys\['image'\] must be a non-empty list"):
        read_robomimic(path, {"image": "agentview_image"})
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f["episodes/x"] = np.zeros(3)
    with pytest.raises(DatasetError, match=rf"^{other}: not a robomimic dataset \(no 'data' group\)"):
        read_robomimic(other)
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match=r"text.hdf5: not a readable HDF5 file"):
        read_robomimic(tmp_path / "text.hdf5")
    with pytest.raises(DatasetError, match=r"missing.hdf5: no such file"):
        read_robomimic(tmp_path / "missing.hdf5")


# --------------------------------------------------------------------------------------------------------- RLDS

def _rlds_episode(rng: np.random.Generator, rewards: list[float], terminal: bool) -> list[dict[str, Any]]:
    """Bridge-like steps (list of dicts) with is_first/is_last set and is_terminal on the last step if ``terminal``."""
    length = len(rewards)
    return [{"observation": {"state": rng.normal(size=7).astype(np.float32), "gripper": rng.normal(size=2),
                             "image_0": rng.integers(0, 256, IMAGE, dtype=np.uint8),
                             "image_1": rng.integers(0, 256, IMAGE, dtype=np.uint8)},
             "action": rng.uniform(-1, 1, 7).astype(np.float32), "reward": rewards[i], "discount": 1.0,
             "is_first": i == 0, "is_last": i == length - 1, "is_terminal": terminal and i == length - 1,
             "language_instruction": "put the spoon in the pot"} for i in range(length)]


def _build_rlds(data_dir: Path, episodes: list[list[dict[str, Any]]], action_shape: tuple[int, ...] = (7,)) -> Path:
    """Write ``episodes`` as a real TFDS build directory (PNG images, so pixels round-trip) and return its path."""
    tfds = pytest.importorskip("tensorflow_datasets")
    png = {"shape": IMAGE, "dtype": np.uint8, "encoding_format": "png"}
    features = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                "gripper": tfds.features.Tensor(shape=(2,), dtype=np.float64),
                "image_0": tfds.features.Image(**png), "image_1": tfds.features.Image(**png)}),
            "action": tfds.features.Tensor(shape=action_shape, dtype=np.float32),
            **{k: tfds.features.Scalar(dtype=np.float32) for k in ("reward", "discount")},
            **{k: tfds.features.Scalar(dtype=np.bool_) for k in ("is_first", "is_last", "is_terminal")},
            "language_instruction": tfds.features.Text()}),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()})})

    class ToyBridge(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self) -> Any:
            # disable_shuffling keeps the generation order, so episode i on disk is episodes[i].
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

        def _split_generators(self, dl_manager: Any) -> Any:
            return {"train": self._generate_examples()}

        def _generate_examples(self) -> Any:
            for i, steps in enumerate(episodes):
                yield f"{i:04d}", {"steps": steps, "episode_metadata": {"file_path": f"raw/{i}"}}

    builder = ToyBridge(data_dir=str(data_dir))
    builder.download_and_prepare()
    return Path(builder.data_dir)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[dict[str, Any]]]]:
    rng = np.random.default_rng(1)
    episodes = [_rlds_episode(rng, [0, 0, 0, 1], terminal=True),  # Bridge: success reward + terminal on the last step
                _rlds_episode(rng, [0, 0, 0], terminal=False),  # cut short: truncated
                _rlds_episode(rng, [0, 1, 0], terminal=True)]  # strict RLDS: reward on step 1, step 2 is o_2 only
    path = _build_rlds(tmp_path_factory.mktemp("rlds"), episodes)
    assert sorted(p.name for p in path.iterdir())[:2] == ["dataset_info.json", "features.json"]
    return path, episodes


def _column(steps: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.stack([s["observation"][key] if key in s["observation"] else s[key] for s in steps])


def test_rlds_transition_mode_round_trips(bridge: tuple[Path, list[Any]]) -> None:
    path, raw = bridge
    episodes = list(read_rlds(path, obs_keys={"state": ["state"], "image": ["image_0"]}))
    assert [e.attrs for e in episodes] == [{"source": "rlds", "split": "train", "episode_index": i} for i in range(3)]
    for episode, steps in zip(episodes, raw, strict=True):
        length = len(steps)
        assert episode.length == length  # T = L: the last step is a real transition
        for name, key in (("state", "state"), ("image", "image_0")):
            column = _column(steps, key)  # o_0..o_{L-1}, then o_{L-1} again as the final next-observation
            np.testing.assert_array_equal(episode.observations[name], np.concatenate([column, column[-1:]]))
        assert episode.observations["image"].dtype == np.uint8
        np.testing.assert_array_equal(episode.actions, _column(steps, "action"))
        np.testing.assert_array_equal(episode.rewards, _column(steps, "reward").astype(np.float32))
    assert [e.terminated.tolist() for e in episodes] == [[False] * 3 + [True], [False] * 3, [False, False, True]]
    assert [e.truncated.tolist() for e in episodes] == [[False] * 4, [False, False, True], [False] * 3]
    assert [e.success.tolist() for e in episodes] == [[False] * 3 + [True], [False] * 3, [False, True, False]]
    assert not any(e.success.any() for e in read_rlds(path, success_reward_threshold=2.0))


def test_rlds_observation_mode_drops_the_last_action(bridge: tuple[Path, list[Any]]) -> None:
    path, raw = bridge
    episodes = list(read_rlds(path, obs_keys={"state": ["state"]}, final_step="observation"))
    for episode, steps in zip(episodes, raw, strict=True):
        length = len(steps)
        assert episode.length == length - 1  # T = L-1: the last step only carries o_{L-1}
        np.testing.assert_array_equal(episode.observations["state"], _column(steps, "state"))
        np.testing.assert_array_equal(episode.actions, _column(steps, "action")[:-1])
        np.testing.assert_array_equal(episode.rewards, _column(steps, "reward")[:-1].astype(np.float32))
    assert [e.terminated[-1] for e in episodes] == [True, False, True]
    assert [e.truncated[-1] for e in episodes] == [False, True, False]
    assert [e.success.tolist() for e in episodes] == [[False] * 3, [False] * 2, [False, True]]


def test_rlds_key_mapping_and_default(bridge: tuple[Path, list[Any]]) -> None:
    path, raw = bridge
    episode = next(read_rlds(path, obs_keys={"proprio": ["gripper", "state"]}))
    proprio = episode.observations["proprio"]
    assert proprio.dtype == np.float32 and proprio.shape == (5, 9)
    want = np.concatenate([_column(raw[0], "gripper"), _column(raw[0], "state")], axis=1).astype(np.float32)
    np.testing.assert_array_equal(proprio, np.concatenate([want, want[-1:]]))
    default = next(read_rlds(path))
    assert {k: (v.dtype.name, v.shape) for k, v in default.observations.items()} == {
        "gripper": ("float32", (5, 2)), "image_0": ("uint8", (5, *IMAGE)), "image_1": ("uint8", (5, *IMAGE)),
        "state": ("float32", (5, 7))}
    np.testing.assert_array_equal(default.observations["image_1"][:4], _column(raw[0], "image_1"))


def test_rlds_schema_errors_name_path_and_key(bridge: tuple[Path, list[Any]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = bridge
    with pytest.raises(DatasetError, match=rf"^{path}: steps/observation/image_9 is missing \(observation has "
                                           r"\['gripper', 'image_0', 'image_1', 'state'\]\)"):
        read_rlds(path, obs_keys={"image": ["image_9"]})
    with pytest.raises(DatasetError, match=rf"^{path}: episode 0: steps/observation/image_0 \(uint8 \(16, 16, 3\)\) "
                                           r"cannot be concatenated"):
        next(read_rlds(path, obs_keys={"x": ["state", "image_0"]}))
    with pytest.raises(DatasetError, match=rf"^{path}: cannot read split 'test' \(the dataset has \['train'\]\)"):
        read_rlds(path, split="test")
    with pytest.raises(DatasetError, match="final_step must be"):
        read_rlds(path, final_step="last")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=rf"^{tmp_path}: not a TFDS dataset directory \(no dataset_info.json\)"):
        read_rlds(tmp_path)
    with pytest.raises(DatasetError, match=r"nowhere: no such directory"):
        read_rlds(tmp_path / "nowhere")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if it were not installed
    with pytest.raises(DatasetError, match=r"needs tensorflow_datasets .*pip install 'tensorflow-datasets==4.9.4'"):
        read_rlds(path)


def test_rlds_episode_errors_name_path_episode_and_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    rng = np.random.default_rng(2)
    episodes = [_rlds_episode(rng, [0, 1], terminal=True) for _ in range(4)]
    episodes[1][1]["action"][4] = np.nan
    episodes[2][0]["is_terminal"] = True  # terminal before the end: two episodes glued together?
    episodes[3] = episodes[3][:1]
    episodes[3][0]["is_last"] = True  # a single-step episode
    episodes.append([])  # no steps at all
    path = _build_rlds(tmp_path_factory.mktemp("bad"), episodes)
    reader = read_rlds(path)
    assert next(reader).length == 2  # the episode before the damaged one is intact
    with pytest.raises(DatasetError, match=rf"^{path}: episode 1: steps/action is not finite at index \(1, 4\)"):
        next(reader)
    with pytest.raises(DatasetError, match=rf"^{path}: episode 0: steps/is_terminal is set at step 0 of 2"):
        next(read_rlds(path, split="train[2:3]"))
    assert next(read_rlds(path, split="train[3:]")).length == 1
    with pytest.raises(DatasetError, match=r"episode 0: has 1 step; final_step='observation' needs at least 2"):
        next(read_rlds(path, split="train[3:]", final_step="observation"))
    with pytest.raises(DatasetError, match=r"episode 0: cannot read \(corrupt file or empty episode\?\): Dataset was "
                                           r"empty\.$"):
        next(read_rlds(path, split="train[4:]"))

    wide = _build_rlds(tmp_path_factory.mktemp("wide"), [[{**s, "action": np.zeros((2, 3), np.float32)}
                                                          for s in _rlds_episode(rng, [0, 1], terminal=True)]],
                       action_shape=(2, 3))
    with pytest.raises(DatasetError, match=rf"^{wide}: episode 0: steps/action has shape \(2, 2, 3\), expected a "
                                           r"vector \(A,\) per step"):
        next(read_rlds(wide))


def test_importing_fleetrl_datasets_does_not_import_tfds() -> None:
    code = "import sys, fleetrl.datasets; print('tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ into the Reverb offline table

@pytest.mark.parametrize("fmt", ["robomimic", "rlds"])
def test_both_formats_load_into_a_real_reverb_offline_table(fmt: str, robomimic: tuple[Path, Any],
                                                            bridge: tuple[Path, list[Any]]) -> None:
    """The whole path a run takes: format detection, key mapping, schema check, MC returns, Reverb, the learner's
    batch source; every sampled (obs, next_obs, action) is one of the dataset's transitions."""
    import reverb

    from fleetrl.config import DatasetConfig, LearnerConfig, config_from_dict
    from fleetrl.distributed.offline import load_offline, offline_table
    from fleetrl.distributed.replay import make_batch_source
    from fleetrl.learners.builder import returns_fn
    from fleetrl.types import ArraySpec, TransitionSpec

    f32 = np.dtype(np.float32)
    if fmt == "robomimic":
        path, _ = robomimic
        obs_keys = {"state": ["robot0_eef_pos", "robot0_gripper_qpos"], "image": ["agentview_image"]}
        spec = TransitionSpec(obs={"state": ArraySpec((5,), f32), "image": ArraySpec(IMAGE, np.dtype(np.uint8))},
                              action=ArraySpec((7,), f32))
        expected = list(read_robomimic(path, obs_keys))
    else:
        path, _ = bridge
        obs_keys = {"state": ["state"], "image": ["image_0"]}
        spec = TransitionSpec(obs={"state": ArraySpec((7,), f32), "image": ArraySpec(IMAGE, np.dtype(np.uint8))},
                              action=ArraySpec((7,), f32))
        expected = list(read_rlds(path, obs_keys=obs_keys))
    server = reverb.Server([offline_table(spec, 1000)])
    address = f"localhost:{server.port}"
    try:
        summary = load_offline(reverb.Client(address), spec, [DatasetConfig(path=str(path), obs_keys=obs_keys)],
                               1000, returns_fn(LearnerConfig()))
        assert summary["transitions"] == sum(e.length for e in expected)
        cfg = config_from_dict({"learner": {"batch_size": 8}, "replay": {"min_size": 8}})
        source = make_batch_source(address, spec, cfg, "cpu", offline_only=True)
        try:
            batch = source.next(timeout_s=30)
        finally:
            source.close()
        assert batch is not None
        known = {(e.observations["state"][t].tobytes(), e.observations["image"][t + 1].tobytes(),
                  e.actions[t].tobytes()) for e in expected for t in range(e.length)}
        for i in range(8):
            key = (batch.obs["state"][i].numpy().tobytes(), batch.next_obs["image"][i].numpy().tobytes(),
                   batch.action[i].numpy().tobytes())
            assert key in known
    finally:
        server.stop()

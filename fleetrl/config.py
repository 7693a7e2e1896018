"""Typed, frozen run configuration, loaded from YAML with ``section.key=value`` overrides.

Every hyperparameter of the system is a field here with a documented default. Loading validates everything before
any process starts: an unknown key, a value of the wrong type or a value out of range raises :class:`ConfigError`
whose message names the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from fleetrl.algo_config import (  # noqa: F401  (re-exported: fleetrl.config is where configs are imported from)
    CQLConfig,
    EncoderConfig,
    FlowConfig,
    OGPOConfig,
    RewardConfig,
    SACConfig,
)

_STRICT = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


@dataclass(frozen=True, config=_STRICT)
class EnvConfig:
    """Which environment every sim actor runs."""

    id: str = "InvertedPendulum-v5"
    """Gymnasium id (any registered env with a Box action space; ``fleetrl envs`` lists fleetrl's own)."""
    max_episode_steps: int | None = Field(200, ge=1)
    """Time limit; reaching it is a truncation, never a termination. ``null``: the env's own limit (the WidowX
    tasks' Bridge-like lengths; robosuite envs truncate at their ``horizon``)."""
    success: Literal["info", "survive"] = "survive"
    """How an episode's success is read: ``info`` = ``info["success"]`` (or ``is_success``) at the last step;
    ``survive`` = the episode reached the time limit without terminating (balance tasks)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``gymnasium.make``."""


@dataclass(frozen=True, config=_STRICT)
class ActorsConfig:
    """The fleet of sim actors."""

    num_sim: int = Field(2, ge=0)
    """Number of simulated actors (Ray actors, one process each)."""
    seed: int = 0
    """Base seed; actor ``i`` seeds its env with ``seed + 1000 * i``."""
    random_steps: int = Field(1000, ge=0)
    """Per actor, steps taken with uniform random actions before the policy acts (exploration warm-up)."""
    weight_poll_timeout_s: float = Field(1.0, gt=0)
    """Long-poll window for new weights; a publish wakes the actors at once, this only bounds each wait."""
    torch_threads: int = Field(1, ge=1)
    """Torch intra-op threads per actor process (one avoids oversubscribing small machines)."""
    max_steps_per_s: float | None = Field(None, gt=0)
    """Pace each sim actor to at most this many env steps per second (a robot's control rate); None = flat out."""


@dataclass(frozen=True, config=_STRICT)
class RobotConfig:
    """One real (or served) WidowX that runs as an actor beside the sim actors (``fleetrl robot-server``)."""

    name: str
    """Shown in status and logs, e.g. ``widowx_0``."""
    server: str
    """``HOST:PORT`` of its robot server."""
    token: str | None = None
    """The server's shared token (needed unless it listens on localhost)."""
    resource: str | None = None
    """Ray custom resource of the node wired to this robot (the actor is placed there), e.g. ``widowx_0``."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Or node labels that pick that node (``ray start --labels robot=widowx_0``)."""
    legacy_pickle: bool = False
    """Talk to a legacy Bridge server (lz4 + pickle; trusted servers only)."""
    image: bool = True
    image_size: int = Field(128, ge=16, le=512)
    """Must give the same observation schema as the run's ``env`` (e.g. a WidowX task with ``privileged: false``
    and the same camera settings)."""
    max_steps_per_s: float = Field(5.0, gt=0)
    """Control rate (Bridge robots step at 5 Hz)."""
    swap_weights: Literal["episode", "step"] = "episode"
    """When new weights take effect on the robot: between episodes (default) or at any step, as sim actors do."""
    reward_classifier: str | None = None
    """File of a success classifier (``fleetrl reward train``) that gives the reward: 1 when the camera frame's
    success probability reaches ``reward_threshold``, else 0. None: reward 0 unless a person labels the episode."""
    reward_threshold: float | None = Field(None, gt=0, lt=1)
    """Success threshold of ``reward_classifier`` (None: the one chosen at training; HIL-SERL uses 0.7-0.85)."""
    terminate_on_success: bool = True
    """End the episode when the classifier (or a person) says success (HIL-SERL)."""
    max_pending_episodes: int = Field(20, ge=1)
    """Finished episodes that may wait for the replay writer (a separate thread) before the robot waits at home."""

    @model_validator(mode="after")
    def _classifier_needs_images(self) -> RobotConfig:
        if self.reward_classifier is not None and not self.image:
            raise ValueError("reward_classifier: the classifier reads camera frames; set image: true")
        return self


@dataclass(frozen=True, config=_STRICT)
class ReplayConfig:
    """The Reverb replay service."""

    capacity: int = Field(200_000, ge=1)
    """Maximum transitions kept in table ``online`` (FIFO eviction)."""
    min_size: int = Field(1000, ge=1)
    """Transitions in ``online`` before the learner may sample."""
    updates_per_step: float = Field(1.0, gt=0)
    """Update-to-data ratio the rate limiter holds: learner updates per env step inserted."""
    rate_tolerance_steps: int = Field(1000, ge=1)
    """How many env steps the learner may run ahead of or behind the ratio (Reverb's error buffer, in inserts).
    Keep it <= ``min_size``: otherwise the learner may take more than its ratio of updates on the first
    transitions. Larger values let bursty writers (whole episodes at once) run without blocking."""
    port: int = Field(0, ge=0, le=65535)
    """gRPC port of the Reverb server; 0 picks a free one."""


@dataclass(frozen=True, config=_STRICT)
class LearnerConfig:
    """The learner process."""

    algorithm: Literal["sac", "cql", "calql", "ogpo", "flow-bc"] = "sac"
    """``sac``: RLPD-style SAC (section ``sac``); ``cql`` and ``calql``: section ``cql``; ``ogpo``: a flow policy
    fine-tuned with OGPO (sections ``flow`` and ``ogpo``); ``flow-bc``: behaviour cloning of the flow policy
    (``fleetrl pretrain``; section ``flow``)."""
    batch_size: int = Field(256, ge=1)
    sac: SACConfig = Field(default_factory=SACConfig)
    cql: CQLConfig = Field(default_factory=CQLConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    ogpo: OGPOConfig = Field(default_factory=OGPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    publish_every: int = Field(10, ge=1)
    """Publish weights to the actors every this many updates."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` takes CUDA when Ray gives the learner a GPU."""
    torch_threads: int = Field(1, ge=1)
    """Torch intra-op threads of the learner process."""
    prefetch_batches: int = Field(4, ge=1)
    """Batches the background sampler keeps ready."""
    seed: int = 0
    normalize_obs: bool = False
    """Standardise the state vector (the float observation keys) with the offline datasets' per-dimension mean and
    std, computed when they are loaded. Fixed for the run, saved with the learner and shipped in the policy's
    weights, so actors normalise exactly as the learner does. Needs ``offline.datasets`` (or ``--init-from`` a
    learner that has the statistics)."""

    def algo(self) -> SACConfig | OGPOConfig:
        """The hyperparameters of the chosen algorithm (gamma, networks, learning rates); flow BC uses OGPO's gamma
        (the returns its data are stored with, for the fine-tuning that follows)."""
        if self.algorithm in ("ogpo", "flow-bc"):
            return self.ogpo
        return self.sac if self.algorithm == "sac" else self.cql

    def horizon(self) -> int:
        """Env steps per replay item: the flow policy's chunk length for ``ogpo`` / ``flow-bc``, else 1."""
        return self.flow.horizon if self.algorithm in ("ogpo", "flow-bc") else 1

    def success_table(self) -> bool:
        """Whether the replay keeps table ``success`` (OGPO's success-buffer BC)."""
        return self.algorithm == "ogpo" and self.ogpo.success_bc


@dataclass(frozen=True, config=_STRICT)
class DatasetConfig:
    """One offline dataset loaded into the ``offline`` replay table."""

    path: str
    """A ``fleetrl collect`` HDF5 file, a robomimic HDF5 file or an RLDS / TFDS dataset directory."""
    format: Literal["auto", "fleetrl", "robomimic", "rlds"] = "auto"
    """``auto``: a directory is RLDS; an HDF5 file with a ``data`` group is robomimic, else fleetrl's format."""
    obs_keys: dict[str, list[str]] | None = None
    """robomimic / RLDS: the run's observation keys built from the dataset's, e.g. ``{state: [robot0_eef_pos,
    robot0_gripper_qpos]}`` (low-dimensional keys are concatenated in order; image keys map one to one). None keeps
    the dataset's keys. fleetrl files need none: their keys must equal the env's."""
    split: str = "train"
    """RLDS split."""
    max_episodes: int | None = Field(None, ge=1)
    """Load at most this many episodes (the first ones)."""


@dataclass(frozen=True, config=_STRICT)
class OfflineConfig:
    """Offline data: the ``offline`` replay table, how batches mix it with online data, and pretraining."""

    datasets: tuple[DatasetConfig, ...] = ()
    """Datasets loaded into table ``offline`` at the start of a run (skipped when a resumed table already holds
    them). Empty: no offline table, learner batches are all online."""
    ratio: float = Field(0.5, ge=0, le=1)
    """Fraction of every learner batch sampled from ``offline`` while training online (Cal-QL / RLPD: 0.5)."""
    capacity: int = Field(2_000_000, ge=1)
    """Most transitions the offline table holds; loading more is an error (nothing is evicted)."""
    pretrain_updates: int = Field(10_000, ge=1)
    """``fleetrl pretrain``: learner updates on offline batches only."""
    pretrain_eval_episodes: int = Field(10, ge=0)
    """``fleetrl pretrain``: evaluation episodes of the pretrained policy at the end (0 = none)."""


@dataclass(frozen=True, config=_STRICT)
class DemosConfig:
    """People's actions (HIL-SERL): table ``demos`` and its share of every learner batch."""

    ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of every learner batch sampled from table ``demos`` (HIL-SERL: 0.5). The table holds every step a
    person took over (they are in ``online`` too, marked ``is_intervention``) and the seed ``datasets``. The learner
    samples once the table holds a transition. 0: no demos table."""
    capacity: int = Field(200_000, ge=1)
    """Most transitions ``demos`` keeps (the oldest are evicted beyond it; seeds must fit)."""
    datasets: tuple[DatasetConfig, ...] = ()
    """Recorded demonstrations that seed ``demos`` at the start (HIL-SERL seeds about 20 episodes), e.g. written by
    ``fleetrl collect --teleop``. Needs ``ratio`` > 0."""


@dataclass(frozen=True, config=_STRICT)
class TeleopConfig:
    """A person taking over an actor (``fleetrl teleop``, ``fleetrl console``)."""

    enabled: bool = True
    """Every actor opens a teleop endpoint (ZeroMQ, token-checked; shown in ``status.json``)."""
    timeout_s: float = Field(0.5, gt=0)
    """An operator silent this long has let go: control goes back (``on_disconnect``)."""
    on_disconnect: Literal["policy", "hold"] = "policy"
    """After a dropped operator: the policy acts again, or (``hold``) the actor sends zero motion with the gripper
    as it was, and keeps it until the operator is back or releases (robots near people)."""
    bind: str = "0.0.0.0"
    """Interface the actors' teleop endpoints listen on (a random free port each)."""
    scripted_share: float = Field(0.0, ge=0, le=1)
    """Experiments in simulation: the WidowX task's scripted expert stands in for the person and takes over this
    share of sim actors' episodes (0: never). Its steps are stored as interventions, as a person's are."""
    scripted_steps: int = Field(20, ge=1)
    """How many steps the scripted operator keeps control once it takes over (early in the episode)."""
    scripted_noise: float = Field(0.0, ge=0, le=2)
    """Noise of the scripted operator's expert (0: the expert as is)."""


@dataclass(frozen=True, config=_STRICT)
class CheckpointConfig:
    """When the learner and the replay tables are saved."""

    every_updates: int = Field(5000, ge=1)
    """Learner + Reverb checkpoint every this many updates (and always at shutdown)."""
    keep: int = Field(3, ge=1)
    """Learner checkpoints kept on disk (Reverb keeps only its newest)."""


@dataclass(frozen=True, config=_STRICT)
class NodeSelector:
    """Which Ray nodes may run a component: every listed custom resource offered and every listed label equal."""

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources the component takes on its node (``ray start --resources '{"sim_slot": 8}'``)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Node labels that must match exactly (``ray start --labels fleetrl/role=head``)."""

    @model_validator(mode="after")
    def _positive(self) -> NodeSelector:
        bad = [k for k, v in self.resources.items() if v <= 0 or k in ("CPU", "GPU", "memory")]
        if bad:
            raise ValueError(f"resources {bad}: custom resources need a positive amount; CPU and GPU are set by "
                             "fleetrl (learner.device decides the GPU)")
        return self


@dataclass(frozen=True, config=_STRICT)
class PlacementConfig:
    """Where each part of a run goes on a Ray cluster (one machine: everything matches the local node)."""

    learner: NodeSelector = Field(default_factory=NodeSelector)
    """The learner's node; the Reverb replay server and the weight store are pinned to the same node, so the
    learner samples over loopback. A GPU is required too when ``learner.device`` is ``cuda``, or ``auto`` and the
    cluster has one."""
    sim_actors: NodeSelector = Field(default_factory=NodeSelector)
    """Nodes that may run sim actors."""
    spread_sim_actors: bool = True
    """Spread sim actors over the matching nodes (Ray's SPREAD strategy) instead of packing them."""
    wait_for_nodes_s: float = Field(60.0, ge=0)
    """How long to wait for a node that matches ``learner`` (an autoscaler may still be starting it)."""


@dataclass(frozen=True, config=_STRICT)
class RecoveryConfig:
    """What the run does when one of its processes dies."""

    max_restarts: int = Field(10, ge=0)
    """Restarts allowed per component (each actor, the learner, the replay server) before the run fails."""
    probe_after_s: float = Field(3.0, gt=0)
    """A writer or sampler that has waited this long asks the replay server whether it still answers (a rate
    limiter that holds it back looks the same until then)."""


@dataclass(frozen=True, config=_STRICT)
class LoggingConfig:
    """Progress display and metric sinks."""

    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb stays offline unless the user asks for online."""
    wandb_project: str = "fleetrl"
    interval_s: float = Field(2.0, gt=0)
    """Seconds between metric rows (JSONL, wandb, terminal)."""
    live: bool = True
    """Live terminal table (off: one plain line per row)."""


@dataclass(frozen=True, config=_STRICT)
class TrainConfig:
    """A whole run."""

    name: str = "default"
    run_root: str = "runs"
    """Runs live in ``run_root/name-TIMESTAMP`` unless resumed."""
    total_env_steps: int = Field(25_000, ge=1)
    """Stop once this many env steps are stored in replay."""
    max_wall_s: float | None = Field(None, gt=0)
    """Stop after this many seconds of training, whatever the step count."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    robots: tuple[RobotConfig, ...] = ()
    """Robot actors (one process each, next to their robot's node)."""
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    offline: OfflineConfig = Field(default_factory=OfflineConfig)
    demos: DemosConfig = Field(default_factory=DemosConfig)
    teleop: TeleopConfig = Field(default_factory=TeleopConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _fits_together(self) -> TrainConfig:
        if self.replay.min_size > self.replay.capacity:
            raise ValueError(
                f"replay.min_size ({self.replay.min_size}) must be <= replay.capacity ({self.replay.capacity})"
            )
        if self.replay.min_size < self.learner.batch_size:
            raise ValueError(
                f"replay.min_size ({self.replay.min_size}) must be >= learner.batch_size ({self.learner.batch_size})"
            )
        names = [r.name for r in self.robots]
        if len(set(names)) != len(names):
            raise ValueError(f"robots: names must be unique, got {names}")
        if self.learner.normalize_obs and not self.offline.datasets:
            raise ValueError("learner.normalize_obs: the statistics come from offline.datasets; set some, or turn "
                             "normalize_obs off")
        if self.offline.datasets:
            offline, online = split_batch(self.learner.batch_size, self.offline.ratio)
            if online == 0 or offline == 0:
                raise ValueError(f"offline.ratio ({self.offline.ratio}) leaves {online} online and {offline} offline "
                                 f"rows of learner.batch_size {self.learner.batch_size}; each needs at least one "
                                 "(use no offline.datasets for online-only training)")
        if self.demos.datasets and self.demos.ratio == 0:
            raise ValueError("demos.datasets: seeds go to table demos, which needs demos.ratio > 0 (HIL-SERL: 0.5)")
        if self.demos.ratio > 0:
            rows = batch_rows(self)
            if min(rows.values()) < 1:
                raise ValueError(f"demos.ratio ({self.demos.ratio}) and offline.ratio leave the learner batch of "
                                 f"{self.learner.batch_size} split as {rows}; each table needs at least one row")
        return self


def batch_rows(cfg: TrainConfig) -> dict[str, int]:
    """Rows of every learner batch per replay table: ``offline`` (``offline.ratio`` of it, with offline datasets),
    ``demos`` (``demos.ratio``, when > 0) and ``online`` (the rest, which the update-to-data limiter counts)."""
    size = cfg.learner.batch_size
    rows: dict[str, int] = {}
    if cfg.offline.datasets:
        rows["offline"] = int(round(size * cfg.offline.ratio))
    if cfg.demos.ratio > 0:
        rows["demos"] = int(round(size * cfg.demos.ratio))
    rows["online"] = size - sum(rows.values())
    return rows


def split_batch(batch_size: int, ratio: float) -> tuple[int, int]:
    """``(offline, online)`` rows of a learner batch of ``batch_size`` with offline fraction ``ratio``."""
    offline = int(round(batch_size * ratio))
    return offline, batch_size - offline


def _section_fields(path: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at ``path`` (e.g. ``("actors",)``), or [] if it is not a section."""
    cls: Any = TrainConfig
    for part in path:
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        field_type = hints.get(str(part))
        sub = globals().get(field_type) if isinstance(field_type, str) else field_type
        if sub is None or not dataclasses.is_dataclass(sub):
            return []
        cls = sub
    return [f.name for f in dataclasses.fields(cls)]


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if p != "__root__") or "<config>"
        msg = e["msg"]
        if e["type"] == "unexpected_keyword_argument" or e["type"] == "extra_forbidden":
            known = _section_fields(tuple(e["loc"][:-1]))
            msg = "unknown key" + (f" (known keys here: {', '.join(known)})" if known else "")
        allowed = e.get("ctx", {}).get("expected")
        lines.append(f"{key}: {msg}" + (f" (allowed: {allowed})" if allowed and "expected" not in msg else ""))
    return "; ".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict; returns the dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. actors.num_sim=4")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
        _set_dotted(tree, key.strip(), value)
    return tree


def config_from_dict(tree: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data; errors name the dotted key."""
    if not isinstance(tree, dict):
        raise ConfigError(f"<config>: expected a mapping of sections, got {type(tree).__name__}")
    try:
        return TrainConfig(**tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
    except TypeError as err:  # unknown top-level keyword
        raise ConfigError(str(err)) from None


def robot_from_dict(tree: Any) -> RobotConfig:
    """Build and validate one ``robots[i]`` entry (``fleetrl attach``); errors name the key."""
    if not isinstance(tree, dict):
        raise ConfigError(f"robot: expected a mapping of RobotConfig fields, got {type(tree).__name__}")
    try:
        return RobotConfig(**tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
    except TypeError as err:  # an unknown field
        known = ", ".join(f.name for f in dataclasses.fields(RobotConfig))
        raise ConfigError(f"robot: {err} (known keys: {known})") from None


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (YAML; None = all defaults), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return config_from_dict(apply_overrides(tree, list(overrides or [])))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML dumps, checkpoints and logging)."""
    out = dataclasses.asdict(cfg)

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(out)

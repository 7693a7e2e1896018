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
class SACConfig:
    """SAC (RLPD-style) hyperparameters."""

    gamma: float = Field(0.99, gt=0, le=1)
    """Discount per env step."""
    tau: float = Field(0.005, gt=0, le=1)
    """Polyak rate of the target critics."""
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of actor and critics."""
    num_critics: int = Field(2, ge=1)
    """Critic ensemble size (REDQ/RLPD use 10)."""
    critic_subsample: int | None = Field(None, ge=1)
    """Ensemble members whose minimum forms the target (None = all; RLPD uses 2 of 10)."""
    critic_layer_norm: bool = False
    """LayerNorm after each critic hidden layer (RLPD)."""
    init_temperature: float = Field(1.0, gt=0)
    target_entropy: float | None = None
    """Entropy target; None means ``-action_dim``."""
    backup_entropy: bool = True
    """Subtract the entropy term inside the TD target."""

    @model_validator(mode="after")
    def _subsample_fits(self) -> SACConfig:
        if self.critic_subsample is not None and self.critic_subsample > self.num_critics:
            raise ValueError(f"critic_subsample ({self.critic_subsample}) must be <= num_critics ({self.num_critics})")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError("hidden_dims must all be >= 1")
        return self


@dataclass(frozen=True, config=_STRICT)
class LearnerConfig:
    """The learner process."""

    algorithm: Literal["sac"] = "sac"
    batch_size: int = Field(256, ge=1)
    sac: SACConfig = Field(default_factory=SACConfig)
    publish_every: int = Field(10, ge=1)
    """Publish weights to the actors every this many updates."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` takes CUDA when Ray gives the learner a GPU."""
    torch_threads: int = Field(1, ge=1)
    """Torch intra-op threads of the learner process."""
    prefetch_batches: int = Field(4, ge=1)
    """Batches the background sampler keeps ready."""
    seed: int = 0


@dataclass(frozen=True, config=_STRICT)
class CheckpointConfig:
    """When the learner and the replay tables are saved."""

    every_updates: int = Field(5000, ge=1)
    """Learner + Reverb checkpoint every this many updates (and always at shutdown)."""
    keep: int = Field(3, ge=1)
    """Learner checkpoints kept on disk (Reverb keeps only its newest)."""


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
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
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
        return self


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

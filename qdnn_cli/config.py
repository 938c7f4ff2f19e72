"""Compose and validate configs (Hydra Compose API), create run directories.

``conf/`` is found in a source checkout (repository root) or, for an installed wheel,
inside the package as ``qdnn_cli/conf``.
"""
from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import InputError
from .quant.modes import BitModeError, parse_mode
from .schema import register as register_schemas, with_legacy_defaults


class ConfigError(InputError):
    """A wrong experiment name, override key or value."""


def conf_dir() -> Path:
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "config.yaml").is_file():
        return source
    try:
        installed = Path(str(resources.files("qdnn_cli") / "conf"))
        if (installed / "config.yaml").is_file():
            return installed
    except (ModuleNotFoundError, TypeError):
        pass
    raise ConfigError("cannot find qdnn's conf/ folder (neither in the source tree nor in the installed package)")


def experiments() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def compose(experiment: str | None, overrides: list[str] | tuple = ()) -> DictConfig:
    """Compose ``config.yaml`` + ``experiment/<experiment>.yaml`` + overrides, then validate."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra's ``+key=value`` adds a key the config lacks; qdnn's configs are typed, so a
    # plus is read as a plain override: an unknown key is refused either way
    overrides = [o.lstrip("+") for o in overrides]
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value")
    if experiment:
        if experiment not in experiments():
            raise ConfigError(f"unknown experiment {experiment!r}: choose one of {', '.join(experiments())}")
        overrides = [f"experiment={experiment}"] + overrides
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__
        if str(e).startswith("Error merging override") and cause is not None:  # a value of the wrong type
            key = str(e).split()[-1].split("=", 1)[0]
            raise ConfigError(f"{key}: {str(cause).splitlines()[0]}") from None
        message = _one_line(str(e))
        if message.startswith("unknown override key"):
            key = message.split("'")[1]
            message = message.replace(f"{key!r}:", f"{key!r}{_did_you_mean(key, experiment)}:", 1)
        raise ConfigError(message) from None
    validate(cfg)
    settle_bn_kind(cfg, overrides)
    return cfg


def settle_bn_kind(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """``quant.bn``, when set, decides the BN kind, and ``quant.bit_specific_bn`` (its older
    spelling) is made to say the same, so a printed config never contradicts itself. Both
    typed and contradicting each other: refused."""
    bn = cfg.quant.get("bn")
    if bn is None:
        return
    implied = bn == "bit_specific"
    typed = [o.split("=", 1)[1] for o in overrides if o.startswith("quant.bit_specific_bn=")]
    if typed and typed[-1].strip().lower() in ("true", "false") and (typed[-1].strip().lower() == "true") != implied:
        raise ConfigError(f"quant.bn={bn} contradicts quant.bit_specific_bn={typed[-1]}: set one of them")
    cfg.quant.bit_specific_bn = implied


def _did_you_mean(key: str, experiment: str | None) -> str:
    """`` (did you mean 'trainer.epochs'?)`` for a misspelt key, from the keys the
    experiment's composed config has (nothing when none is close)."""
    import difflib

    try:
        base = compose(experiment, ["data.root=unset"]) if experiment else None
    except ConfigError:
        base = None
    if base is None:
        return ""
    tree = OmegaConf.to_container(base, resolve=False)
    keys = _keys(tree)
    close = [c for c in difflib.get_close_matches(key, keys + list(tree), n=2, cutoff=0.75) if c != key][:1]
    if not close:  # a key without its group (``epochs``), or a misspelt last part
        tails: dict[str, list[str]] = {}
        for k in keys:
            tails.setdefault(k.rsplit(".", 1)[-1], []).append(k)
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.8)
        close = [c for c in tails[near[0]] if c != key][:2] if near else []
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def _one_line(msg: str) -> str:
    lines = [line.strip() for line in msg.strip().splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key", "object_type", "Set the environment", "Traceback"))]
    text = " ".join(keep[:2]) if keep else "invalid configuration"
    import re

    m = re.search(r"Could not override '([^']+)'", msg)
    if m:  # Hydra's wording for a key the config does not have
        return f"unknown override key {m.group(1)!r}: `qdnn config EXPERIMENT` prints every key"
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", msg)
    if m:  # a config group option that does not exist, e.g. model=resnet1000
        group, option = m.groups()
        choices = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        return f"{group}={option!r} is unknown: choose one of {', '.join(choices)}"
    return text


TRAINING_KINDS = ("quantizable", "dedicated")
AMP_MODES = ("auto", "none", "bf16", "fp16")


def allowed_names() -> dict[str, tuple]:
    """Every config key whose value names something, with the names allowed — read from
    the registries, so a new model, quantizer, optimizer, schedule or data set is
    accepted as soon as it is registered."""
    from .data import DATA_SOURCES
    from .engine.compile import COMPILE_SCOPES
    from .engine.device import DEVICES
    from .engine.loggers import LOGGERS
    from .engine.losses import REDUCTIONS, TARGETS
    from .engine.optim import INTERVALS, OPTIMIZERS, SCHEDULES
    from .engine.step import MODE_SAMPLING
    from .models import MODELS
    from .quant.layers import BN_KINDS
    from .quant.quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, WEIGHT_SCALES

    return {
        "logger": tuple(LOGGERS), "model.name": tuple(MODELS), "quant.weight": tuple(WEIGHT_QUANTIZERS), "quant.act": tuple(ACT_QUANTIZERS),
        "optim.name": tuple(OPTIMIZERS), "sched.name": tuple(SCHEDULES), "sched.interval": INTERVALS, "data.name": tuple(DATA_SOURCES),
        "loss.target": TARGETS, "loss.reduction": REDUCTIONS, "quant.bn": BN_KINDS, "quant.weight_scale": WEIGHT_SCALES, "trainer.kind": TRAINING_KINDS, "trainer.device": DEVICES,
        "trainer.amp": AMP_MODES, "trainer.mode_sampling": MODE_SAMPLING, "trainer.compile_scope": COMPILE_SCOPES,
    }


# names that may be null: quant.bn unset means quant.bit_specific_bn decides
OPTIONAL_NAMES = ("quant.bn",)


def _is_mode(value) -> bool:
    try:
        parse_mode(value)
        return True
    except BitModeError:
        return False


def validate(cfg: DictConfig) -> None:
    """Catch wrong values before any work starts; messages name the key. Types and key
    names are already checked by the schema (``schema.py``) while composing."""
    from .engine.compile import COMPILE_MODES

    for key, allowed in allowed_names().items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in OPTIONAL_NAMES:
            continue
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(allowed)}")
    bits = list(cfg.quant.bits)
    if not bits:
        raise ConfigError("quant.bits is empty: give at least one bit mode, e.g. quant.bits=[2,3,4,8,32]")
    try:
        bits = [parse_mode(b) for b in bits]
    except BitModeError:
        bad = next(b for b in bits if not _is_mode(b))
        raise ConfigError(f"quant.bits contains {bad!r}: each bit mode must be 1-8, 32 (full precision) "
                          "or wXaY (e.g. w2a4)") from None
    if len(set(bits)) != len(bits):
        raise ConfigError(f"quant.bits has duplicates: {bits}")
    t = cfg.trainer
    if t.kind == "dedicated" and len(bits) != 1:
        raise ConfigError(f"trainer.kind=dedicated trains one bit mode, but quant.bits={bits}")
    if t.kind == "quantizable" and cfg.loss.consistency and cfg.loss.target == "fp" and 32 not in bits and len(bits) > 1:
        raise ConfigError(f"loss.target=fp needs full precision (32) in quant.bits={bits}; add 32 or use loss.target=next")
    for key in ("epochs", "batch_size", "eval_batch_size", "sandwich_k", "mixed_k", "log_every", "eval_every"):
        if t[key] < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {t[key]!r}")
    for key in ("stop_after", "max_steps_per_epoch", "num_threads"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer or null, got {t[key]!r}")
    if t.checkpoint_every_minutes is not None and t.checkpoint_every_minutes < 0:
        raise ConfigError(f"trainer.checkpoint_every_minutes must be >= 0 (0: off) or null, got {t.checkpoint_every_minutes}")
    if t.compile not in (False, True) + COMPILE_MODES:
        raise ConfigError(f"trainer.compile={t.compile!r} is not allowed: choose false, true or one of {', '.join(COMPILE_MODES)}")
    f = cfg.data.get("train_fraction", 1.0)
    if not 0 < f <= 1:
        raise ConfigError(f"data.train_fraction must be in (0, 1], got {f!r}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be a positive number, got {cfg.optim.lr!r}")
    s = cfg.sched
    if s.warmup_epochs < 0 or s.warmup_steps < 0 or not 0 <= s.pct_start < 1:
        raise ConfigError("sched.warmup_epochs and sched.warmup_steps must be >= 0 and sched.pct_start in [0, 1)")
    if s.warmup_steps and s.interval != "step":
        raise ConfigError("sched.warmup_steps needs sched.interval=step (or use sched.warmup_epochs)")
    if cfg.loss.top_weight <= 0:
        raise ConfigError(f"loss.top_weight must be > 0, got {cfg.loss.top_weight!r}")
    if cfg.loss.warmup_epochs < 0 or cfg.loss.fp_weight < 0:
        raise ConfigError("loss.warmup_epochs and loss.fp_weight must be >= 0")
    if t.mode_sampling == "mixed" and t.compile:
        raise ConfigError("trainer.mode_sampling=mixed draws new per-layer configurations every step: "
                          "it runs eager (trainer.compile=false)")
    if t.mode_sampling == "mixed" and (t.kind != "quantizable" or len(bits) < 2):
        raise ConfigError("trainer.mode_sampling=mixed needs a quantizable run with several bit modes")
    if cfg.quant.get("bn") == "bit_specific" and not cfg.quant.bit_specific_bn:
        raise ConfigError("quant.bn=bit_specific contradicts quant.bit_specific_bn=false: set one of them")
    if t.mode_batch and t.sync_bn:
        raise ConfigError("trainer.mode_batch normalises all modes in one BN call, which SyncBatchNorm cannot: "
                          "use trainer.sync_bn=false or trainer.mode_batch=false")
    if t.fp_warmup_epochs < 0:
        raise ConfigError(f"trainer.fp_warmup_epochs must be >= 0, got {t.fp_warmup_epochs!r}")
    if t.fp_warmup_epochs and t.kind != "quantizable":
        raise ConfigError("trainer.fp_warmup_epochs applies to quantizable runs (a dedicated run has one mode)")
    if t.fp_warmup_epochs and 32 not in bits:
        raise ConfigError(f"trainer.fp_warmup_epochs trains full precision first: add 32 to quant.bits={bits}")
    if t.fp_warmup_epochs and t.fp_warmup_epochs >= t.epochs:
        raise ConfigError(f"trainer.fp_warmup_epochs={t.fp_warmup_epochs} leaves no joint epoch of "
                          f"trainer.epochs={t.epochs}")
    if t.fp_warmup_epochs and t.compile and t.compile_scope == "step":
        raise ConfigError("trainer.fp_warmup_epochs changes the step's modes: use trainer.compile_scope=mode with it")
    if cfg.loss.warmup_epochs and t.compile and t.compile_scope == "step":
        raise ConfigError("loss.warmup_epochs changes the loss every epoch: use trainer.compile_scope=mode with it")
    if cfg.quant.weight_scale != "none" and cfg.quant.weight not in ("dorefa", "pact"):
        raise ConfigError(f"quant.weight_scale={cfg.quant.weight_scale} applies to DoReFa weights only: with "
                          f"quant.weight={cfg.quant.weight} add quant.weight_scale=none (quant=lsq does)")
    if cfg.loss.temperature <= 0:
        raise ConfigError(f"loss.temperature must be > 0, got {cfg.loss.temperature!r}")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(f"data.root is required for data={cfg.data.name}: data.root=/path/to/tree")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise ConfigError(_one_line(str(e))) from None


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``key=value`` overrides onto a saved run config (``qdnn eval``): only keys the run
    has, values parsed as YAML, then the same validation as ``qdnn train``."""
    import yaml

    cfg = with_legacy_defaults(cfg)  # a run saved by an older qdnn lacks keys added since
    OmegaConf.set_struct(cfg, True)
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value")
        key, text = o.split("=", 1)
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise ConfigError(f"unknown override key {key!r}: this run's config.yaml has no such key")
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(text), merge=False)
        except Exception as e:  # noqa: BLE001 - any OmegaConf error is a bad override
            raise ConfigError(f"override {o!r}: {_one_line(str(e))}") from None
    validate(cfg)
    return cfg


def make_run_dir(cfg: DictConfig, group: str | Path | None = None, leaf: str | None = None) -> tuple[Path, bool]:
    """``out_dir`` if given, else ``<group>/<leaf>`` or ``runs/<name>/<timestamp>``; also
    whether this call created it (a run that fails before training removes such a folder)."""
    if cfg.get("out_dir"):
        run_dir = Path(cfg.out_dir)
    elif group is not None:
        run_dir = Path(group) / (leaf or "run")
    else:
        return _new_timestamped_dir(Path("runs") / cfg.name), True
    fresh = not run_dir.exists()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes
        return run_dir, False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    return run_dir, fresh


def _new_timestamped_dir(base: Path) -> Path:
    """``base/<YYYYmmdd-HHMMSS>``, or ``...-2``, ``-3``: a run started in the same second as
    another gets its own directory (created atomically, so two processes cannot share one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 names it; the others never write
        return base / stamp
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run directory under {base}: {e.strerror}") from None
    for n in range(1, 1000):
        run_dir = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    raise ConfigError(f"cannot create a new run directory under {base}: 999 runs started this second")


def load_run_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a qdnn run directory (no config.yaml)")
    return OmegaConf.load(path)

"""Typed configs: one dataclass per config group, registered in Hydra's ConfigStore.

Two sets of defaults, on purpose: these dataclasses' defaults are the *legacy* ones — a
key added after runs were saved defaults here to the behaviour those runs had
(``quant.weight_scale`` none, ``loss.top_weight`` 1), so a saved run resumes and is
compared as it trained (:func:`with_legacy_defaults`); today's defaults for new runs are
in ``conf/`` (``conf/quant/dorefa.yaml`` sets mean_abs, ``conf/loss`` sets 4).

Each YAML under ``conf/`` fills one of these schemas (``conf/config.yaml`` starts from
``base_config``; every ``conf/data/*.yaml`` from its family's ``base_*``), so a misspelt
key or a value of the wrong type is refused while composing. Which *names* are allowed
(models, quantizers, optimizers, schedules, data sets) is not listed here: validation
reads the registries (``config.validate``), so adding one is one registry entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class QuantConfig:
    # bit modes: ints (w = a bits; 32 = full precision) or "wXaY" strings (qdnn_cli/quant/modes.py)
    bits: List[Any] = field(default_factory=lambda: [2, 3, 4, 8, 32])
    weight: str = "dorefa"
    act: str = "dorefa"
    bit_specific_bn: bool = True
    bn: Optional[str] = None    # bit_specific | shared | private_stats; null: bit_specific_bn decides (its older spelling)
    quantize_first_last: bool = False
    quantize_shortcut: bool = False
    weight_scale: str = "none"  # schema defaults of added keys = the older behaviour; conf/quant/dorefa.yaml sets mean_abs
    weight_max_grad: bool = False


@dataclass
class LossConfig:
    consistency: bool = True
    target: str = "fp"
    weight: float = 1.0
    ce_weight: float = 1.0
    temperature: float = 1.0
    reduction: str = "sum"
    warmup_epochs: float = 0.0
    fp_weight: float = 0.0
    top_weight: float = 1.0     # schema defaults of added keys = the older behaviour; conf/ sets 4


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-4
    scale_lr_by_batch: bool = False


@dataclass
class SchedConfig:
    name: str = "cosine"
    interval: str = "epoch"
    warmup_epochs: float = 1
    warmup_steps: int = 0
    pct_start: float = 0.15
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    kind: str = "quantizable"
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 500
    device: str = "auto"
    amp: str = "auto"  # resolved per machine when a run starts (engine.device.resolve_amp)
    channels_last: bool = True
    compile: Any = False          # false | true | a torch.compile mode name
    compile_scope: str = "mode"
    mode_batch: bool = False      # all bit modes of a step in one forward/backward (qdnn_cli/quant/slots.py)
    mode_sampling: str = "all"
    sandwich_k: int = 1
    mixed_k: int = 2
    fp_warmup_epochs: int = 0     # the first N epochs train the top (full-precision) mode alone
    num_threads: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    log_every: int = 20
    eval_every: int = 1
    stop_after: Optional[int] = None
    checkpoint_every_minutes: Optional[float] = None  # null: 30 on streamed data, off (0) in memory
    progress: bool = True
    sync_bn: bool = False


@dataclass
class ModelConfig:
    name: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)
    min_image_size: int = 1
    torchvision_weights: Optional[str] = None
    init_from: Optional[str] = None     # a run directory or checkpoint whose weights start this run
    init_sha256: Optional[str] = None   # written by qdnn: the hash of init_from's checkpoint at the start
    init_passes: Optional[int] = None   # written by qdnn: the passes per image behind init_from's weights


# -- data: one schema per family of data set -------------------------------------------
@dataclass
class CifarData:
    name: str = "cifar100"
    root: Optional[str] = "data"
    download: bool = True
    train_fraction: float = 1.0
    subset_seed: Optional[int] = None  # which training subset; null: the run's seed
    crop_padding: int = 4
    flip: bool = True


@dataclass
class DigitsData:
    name: str = "digits"
    root: Optional[str] = None
    train_fraction: float = 1.0
    subset_seed: Optional[int] = None  # which training subset; null: the run's seed
    crop_padding: int = 1
    flip: bool = False


@dataclass
class SyntheticData:
    name: str = "synthetic"
    root: Optional[str] = None
    num_classes: int = 10
    train_size: int = 512
    val_size: int = 256
    image_size: int = 16
    in_channels: int = 3
    train_fraction: float = 1.0
    subset_seed: Optional[int] = None  # which training subset; null: the run's seed
    crop_padding: int = 2
    flip: bool = True


@dataclass
class FolderData:
    name: str = "folder"
    root: str = MISSING
    train_split: str = "train"
    val_split: str = "val"
    in_channels: int = 3
    train_fraction: float = 1.0
    subset_seed: Optional[int] = None  # which training subset; null: the run's seed
    crop_padding: int = 4
    flip: bool = True
    max_in_memory_size: int = 64
    image_size: int = 224
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    workers: int = 4


@dataclass
class Config:
    name: str = "custom"
    seed: int = 0
    out_dir: Optional[str] = None
    logger: str = "csv"
    data: Any = None              # typed by its family's schema (conf/data/*.yaml)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


DATA_SCHEMAS = {"base_cifar": CifarData, "base_digits": DigitsData, "base_synthetic": SyntheticData,
                "base_folder": FolderData}


def with_legacy_defaults(saved) -> DictConfig:
    """A saved run's config completed with the legacy defaults (these dataclasses') for
    keys added after it was saved: the behaviour it trained with."""
    defaults = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    saved = saved if isinstance(saved, dict) else OmegaConf.to_container(saved, resolve=True)
    return OmegaConf.merge(OmegaConf.create(defaults), saved)


def register() -> None:
    """Make the schemas known to Hydra (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, node in DATA_SCHEMAS.items():
        cs.store(group="data", name=name, node=node)

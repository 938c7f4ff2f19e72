"""``qdnn export``: a trained run's modes as ONNX models with integer kernels, one
switchable package, a parity check against qdnn's own evaluation, and sizes.

Everything is written into a fresh folder beside the target and moved into place only
when every mode has passed its parity check: a failed export leaves nothing behind.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..quant import BitConfig, mode_label, model_modes, sort_modes
from ..quant.mixed import apply_bits, check_config
from ..startup import stop_signals_blocked, stop_signals_raise


class ExportError(InputError):
    """An export that cannot be made or that failed its parity check."""


def require_onnx() -> None:
    """The optional extra, imported only when exporting."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'qdnn[export]'")


@dataclass
class ExportOptions:
    modes: list | None = None          # None: the modes the run trained
    config: Path | None = None         # a per-layer bit configuration, exported beside the modes
    images: int = 0                    # validation images for the parity check (0: all)
    calibrate_bn: int = 0              # training batches to re-estimate untrained modes' BN
    max_disagreement: float = 0.03     # share of images whose prediction may differ (rounding-boundary flips)
    # median over images of max |Δ logit| / the image's logit range, against a float64
    # reference that rounds what the export rounds (simulated_qdq): 1e-7 on a trained CIFAR-100
    # ResNet-20 in every form; one output channel's scale doubled or codes negated: 4e-3 to
    # 8e-3 on the tiny net
    max_logit_error: float = 1e-3
    overrides: tuple = ()
    force: bool = False
    form: str = "integer"              # integer (ConvInteger) or qdq (QuantizeLinear/DequantizeLinear)
    residual: str = "float"            # qdq: residual sums and their inputs float, or through 8 bits (int8)
    range_batches: int = 4             # qdq with residual int8: training batches that set those int8 scales


def file_label(setting) -> str:
    """``fp``, ``4bit``, ``w2a4``: a mode's name in file names and tables."""
    label = mode_label(setting)
    return "fp" if label == "FP" else label.replace("-bit", "bit")


def export_checkpoint(ckpt: Path, out: Path, options: ExportOptions, say=print) -> dict:
    """Export ``ckpt``'s modes (and configuration) to ``out``; returns the summary that
    ``export.json`` holds."""
    require_onnx()
    import onnx
    import onnxruntime as ort

    from . import runtimes
    from .graph import FORMS, NoQDQForm
    if options.form not in FORMS:
        raise ExportError(f"--format {options.form!r}: choose {' or '.join(FORMS)}")
    if options.residual not in ("int8", "float"):
        raise ExportError(f"--residual {options.residual!r}: choose int8 or float")

    from ..data import build_data
    from ..engine.evaluation import calibrate_bn
    from ..engine.rundir import write_csv
    from ..loaded_run import load_checkpoint_model
    from .graph import GraphBuilder
    from .lower import lower_model, output_ranges, simulated_qdq
    from .package import PACKAGE_NAME, write_package

    out = Path(out)
    check_destination(out, Path(ckpt), options.force)
    check_not_training(Path(ckpt), options.force, say)
    bit_cfg = BitConfig.load(options.config) if options.config is not None else None
    run = load_checkpoint_model(ckpt, set(options.modes or []), list(options.overrides), "cpu", bit_cfg)
    model, cfg, trained = run.model, run.cfg, run.trained
    modes = sort_modes(set(options.modes or trained), descending=True)
    untrained = [m for m in model_modes(model) if m not in trained]
    if untrained and options.calibrate_bn <= 0:
        raise ExportError(f"bit modes {untrained} were never trained in this model (trained: {trained}); "
                          "pass --calibrate-bn N to re-estimate their BN statistics from N training batches")
    if bit_cfg is not None:
        check_config(model, bit_cfg)
    t = cfg.trainer
    data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), torch.device("cpu"), int(cfg.seed))
    if data.num_classes != int(run.checkpoint["num_classes"]):
        raise ExportError(f"data has {data.num_classes} classes but the checkpoint was trained on "
                          f"{run.checkpoint['num_classes']}")
    for m in untrained:  # only modes the run never trained: a trained mode is exported as trained
        calibrate_bn(model, data.train, m, options.calibrate_bn)
    settings: list = list(modes) + ([bit_cfg] if bit_cfg is not None else [])
    images, labels = _validation_slice(data.val, options.images, data.num_val)
    model.eval()

    with stop_signals_raise():  # a stop signal removes the half-written export (finally below)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename: follow the umask as every output does
        try:
            rows, models, packed = [], {}, {}
            for setting in settings:
                label = "config" if isinstance(setting, BitConfig) else file_label(setting)
                if label == "config" and options.calibrate_bn > 0:
                    # last, after every uniform mode is exported: the configuration's statistics are
                    # re-estimated into the per-mode BNs its layers use, trained modes' among them
                    calibrate_bn(model, data.train, bit_cfg, options.calibrate_bn)
                apply_bits(model, setting)
                graph = GraphBuilder(f"qdnn-{label}", options.form)
                ranges = None
                if options.form == "qdq" and options.residual == "int8":
                    ranges = output_ranges(model, [x.float() for x, _ in itertools.islice(data.train, options.range_batches)])
                try:
                    logits_name, lowering = lower_model(model, graph, "images", ranges)
                except NoQDQForm as e:
                    raise ExportError(f"mode {label} has no QDQ form: {e}; --format integer exports it, or leave the mode "
                                      "out with --modes") from None
                doc = (f"qdnn export of {ckpt} in {'configuration ' + options.config.name if label == 'config' else 'mode ' + label}; "
                       "input: images normalised as in training, NCHW float32")
                onnx_model = graph.model("images", tuple(images.shape[1:]), logits_name, data.num_classes, doc)
                path = work / f"{label}.onnx"
                onnx.save(onnx_model, path)
                # the reference computes what the export computes, in float64: the runtime's integer
                # sums are exact, and a float32 model rounds where a BN subtracts a mean close to
                # its input, enough to move quantization levels in most images of a trained model
                # (97-98 % identical predictions at 4 bits, against 100 % in float64). With the
                # QDQ form's roundings simulated (int32 biases, 8-bit residuals); the plain float32
                # model's top-1, as trained, is kept beside it
                plain = _predict(model, images)
                with simulated_qdq(lowering):
                    ours = _predict(model.double(), images.double())
                model.float()  # float32 -> float64 -> float32 is lossless
                session = ort.InferenceSession(str(path), runtimes.ort_options(2), providers=["CPUExecutionProvider"])
                theirs = np.concatenate([session.run(None, {"images": images[i:i + 256].numpy()})[0]
                                         for i in range(0, len(images), 256)])
                row = _parity_row(label, ours, theirs, labels.numpy(), lowering, path)
                row["top1_qdnn_unrounded"] = round(100 * float((plain.argmax(1) == labels.numpy()).mean()), 4)
                wrong = parity_failure(row, len(labels), options)
                if wrong:
                    raise ExportError(f"mode {label}: the ONNX model does not compute what qdnn computes: {wrong} "
                                      f"(ONNX Runtime top-1 {row['top1_onnx']:.2f} %, qdnn {row['top1_qdnn']:.2f} %, "
                                      f"{len(labels)} images)")
                for other in [r for r in runtimes.RUNTIMES if r != "onnxruntime" and runtimes.installed(r)]:
                    run_other = runtimes.load(other, path, 2)
                    logits = np.concatenate([run_other(images[i:i + 256].numpy()) for i in range(0, len(images), 256)])
                    extra = _parity_row(label, ours, logits, labels.numpy(), lowering, path)
                    # ONNX Runtime's check above decides; another runtime's figures are reported, and a
                    # runtime that computes the file differently is said (one line), not hidden
                    wrong = parity_failure(extra, len(labels), options)
                    if wrong:
                        say(f"warning: {label} in {other} differs from qdnn: {wrong}")
                    row.update({f"{other}_{k}": extra[k] for k in ("top1_onnx", "argmax_agreement", "median_logit_error")})
                    row[f"{other}_parity"] = "failed" if wrong else "passed"
                say(f"{label}: top-1 {row['top1_onnx']:.2f} % in ONNX Runtime, {row['top1_qdnn']:.2f} % in qdnn, "
                    f"{100 * row['argmax_agreement']:.2f} % identical predictions, {row['onnx_bytes']:,} bytes")
                rows.append(row)
                models[label] = onnx_model
                packed[label] = graph.packed
            package = write_package(work / PACKAGE_NAME, models, packed)
            fp_bytes = _fp_bytes(model)
            for row in rows:
                size = package["modes"][row["mode"]]
                row.update(packed_weight_bytes=size.integer_weights, float_bytes=size.float_bytes,
                           packed_total_bytes=size.total, integer_codes=size.integer_count,
                           fp32_model_bytes=fp_bytes)
            write_csv(work / "export.csv", rows)
            summary = {
                "checkpoint": str(ckpt), "epoch": run.checkpoint.get("epoch"), "model": run.checkpoint["model_name"],
                "trained_modes": [str(m) for m in trained], "calibrated_modes": [str(m) for m in untrained],
                "calibrated_config": bool(bit_cfg is not None and options.calibrate_bn > 0),
                "input_shape": list(images.shape[1:]), "normalisation": _normalisation(data.val),
                "format": options.form, "residual": options.residual if options.form == "qdq" else None, "parity_images": int(len(labels)),
                "parity_limits": {"max_disagreement": options.max_disagreement, "max_logit_error": options.max_logit_error},
                "package": {"file": PACKAGE_NAME, "bytes": package["bytes"],
                            "blob_bytes": package["blob_bytes"],
                            "per_mode_total_bytes": sum(s.total for s in package["modes"].values())},
                "fp32_model_bytes": fp_bytes, "modes": rows,
                "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            if bit_cfg is not None:
                shutil.copy(options.config, work / "config.yaml")
            (work / "export.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            with stop_signals_blocked():  # the swap never stops halfway
                if out.exists():
                    shutil.rmtree(out)
                work.rename(out)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return summary


def _holds_a_run(folder: Path) -> Path | None:
    """A qdnn run directory at or under ``folder`` (None if there is none)."""
    for marker in ("config.yaml", "checkpoint.pt", "status.json", "metrics.csv"):
        if (folder / marker).exists():
            return folder
    for marker in ("checkpoint.pt", "status.json"):
        found = next(folder.rglob(marker), None)
        if found is not None:
            return found.parent
    return None


def check_destination(out: Path, ckpt: Path, force: bool) -> None:
    """``--out`` may be new, empty, or (with ``--force``) an earlier export, which is
    replaced. Nothing else is ever deleted: not the source run, not any folder that holds a
    run or lies above one."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    resolved, source = out.resolve(), ckpt.resolve().parent
    if resolved == source or resolved in source.parents:
        raise ExportError(f"--out {out} holds the run being exported ({source}): give a new folder, "
                          f"e.g. --out {source / 'export'}")
    run = _holds_a_run(out)
    if run is not None:
        raise ExportError(f"--out {out} holds a qdnn run ({run}): export into a new folder; --force replaces only "
                          "an earlier export")
    if not (out / "export.json").is_file():
        raise ExportError(f"{out} exists and is not a qdnn export (no export.json): choose another --out; "
                          "--force replaces only an earlier export")
    if not force:
        raise ExportError(f"{out} holds an earlier export: choose another --out or pass --force to replace it")


def check_not_training(ckpt: Path, force: bool, say) -> None:
    """A run still training holds its directory's lock: its checkpoint is a moving target."""
    from ..engine.checkpoint import RunLock

    holder = RunLock(ckpt.parent).holder() if (ckpt.parent / ".lock").exists() else None
    if holder is None:
        return
    message = f"{ckpt.parent} is still training ({holder}): {ckpt.name} is the epoch it last saved"
    if not force:
        raise ExportError(f"{message}; wait for the run to finish, or pass --force to export that checkpoint")
    say(f"warning: {message}; exported as it is now (--force)")


def _validation_slice(loader, limit: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All validation images, or ``limit`` of them spread evenly over the split (a folder
    split comes class by class: its first images would be a few classes only)."""
    every = max(1, total // limit) if limit else 1
    xs, ys, seen = [], [], 0
    for x, y in loader:
        pick = torch.arange(-seen % every, len(y), every)
        seen += len(y)
        xs.append(x.float()[pick].contiguous())
        ys.append(y[pick])
    if not xs or sum(len(y) for y in ys) == 0:
        raise ExportError("the validation split is empty: the parity check needs images")
    images, labels = torch.cat(xs), torch.cat(ys)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def _predict(model, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(images[i:i + 256]) for i in range(0, len(images), 256)]).float().numpy()


def parity_failure(row: dict, images: int, options: ExportOptions) -> str | None:
    """Why an export is wrong, or None. Judged by what a wrong export does, not by top-1:
    ONNX Runtime's integer sums are exact and PyTorch's float convolutions are not, so a
    correct export flips the odd prediction whose logits sit on a rounding boundary (in
    both directions: top-1 moves by a coin toss on a large set), while a wrong scale or a
    flipped code changes every image's logits. So: the median image's largest logit
    difference, relative to its logit range, must stay small, and so must the share of
    changed predictions (at least one image allowed on a small set)."""
    limit = options.max_logit_error
    if row["median_logit_error"] > limit:
        return f"the median image's logits differ by {row['median_logit_error']:.2e} of their range (limit {limit:g})"
    changed = round((1 - row["argmax_agreement"]) * images)
    if changed > max(1, options.max_disagreement * images):
        return f"{changed} of {images} predictions differ (limit {100 * options.max_disagreement:g} %)"
    return None


def _parity_row(label: str, ours: np.ndarray, theirs: np.ndarray, labels: np.ndarray, lowering, path: Path) -> dict:
    agree = ours.argmax(1) == theirs.argmax(1)
    spread = np.maximum(ours.max(1) - ours.min(1), 1e-12)
    truth_ours, truth_theirs = ours.argmax(1) == labels, theirs.argmax(1) == labels
    return {
        "mode": label,
        "top1_qdnn": round(100 * float((ours.argmax(1) == labels).mean()), 4),
        "top1_onnx": round(100 * float((theirs.argmax(1) == labels).mean()), 4),
        "argmax_agreement": round(float(agree.mean()), 6),
        "max_logit_diff": float(np.abs(ours - theirs).max()),
        "median_logit_error": float(np.median(np.abs(ours - theirs).max(1) / spread)),
        # McNemar's discordant pairs: images only qdnn gets right, images only ONNX Runtime does
        "only_qdnn_right": int((truth_ours & ~truth_theirs).sum()),
        "only_onnx_right": int((truth_theirs & ~truth_ours).sum()),
        "integer_layers": lowering.int_layers,
        "float_layers": lowering.float_layers,
        "onnx_bytes": path.stat().st_size,
    }


def _fp_bytes(model) -> int:
    """Bytes of the model's parameters a plain float32 network of this architecture stores
    (one BN, no quantizer parameters): what the FP export is measured against."""
    total = 0
    for name, p in model.named_parameters():
        if ".weight_quant." in name or ".act_quant." in name:
            continue
        if ".bn." in name and not name.split(".bn.")[1].startswith(str(model_modes(model)[-1]) + "."):
            continue  # one BN's worth, not one per mode
        total += p.numel() * 4
    return total


def _normalisation(loader) -> dict | None:
    mean, inv_std = getattr(loader, "mean", None), getattr(loader, "inv_std", None)
    if mean is None or inv_std is None:
        return None
    std = 1.0 / inv_std
    return {"pixel_scale": "uint8 / 255", "mean": [round(float(v) / 255, 6) for v in mean.flatten()],
            "std": [round(float(v) / 255, 6) for v in std.flatten()]}


__all__ = ["ExportOptions", "ExportError", "export_checkpoint", "require_onnx"]

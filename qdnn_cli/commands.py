"""What each command does, given parsed arguments: train one run, run a grid of runs,
reproduce a table, evaluate a checkpoint. The CLI parses and calls these; they compose
configs and hand them to the engine, and print to the shared consoles.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from rich.console import Console

from .words import count

# Under torchrun only rank 0 talks; errors still reach stderr from every rank.
console = Console(highlight=False, quiet=int(os.environ.get("RANK", "0")) != 0)
err_console = Console(stderr=True, highlight=False)


# ----------------------------------------------------------------------------- printing
def print_config(cfg) -> None:
    from omegaconf import OmegaConf

    console.rule("config")
    console.print(OmegaConf.to_yaml(cfg, resolve=True).rstrip(), markup=False)
    console.rule()


def print_results(results: dict, title: str, run_dir: Path | None = None) -> None:
    from rich.table import Table

    from .quant import mode_label, sort_modes

    table = Table(title=title)
    for col in ("bit mode", "top-1 %", "top-5 %", "loss"):
        table.add_column(col, justify="right")
    for m in sort_modes(results, descending=True):
        r = results[m]
        table.add_row(mode_label(m), f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.4f}")
    console.print(table)
    if run_dir is not None:
        console.print(f"run directory: {run_dir}")


# ----------------------------------------------------------------------------- one run
def latest_run(name: str) -> Path | None:
    base = Path("runs") / name
    runs = sorted(p for p in base.glob("*") if (p / "checkpoint.pt").exists()) if base.is_dir() else []
    return runs[-1] if runs else None


def train_one(experiment: str | None, overrides: list[str], quiet_config: bool = False,
              group: Path | None = None, leaf: str | None = None, resume_latest: bool = False,
              extend_epochs: bool = False) -> tuple[Path, dict]:
    """Compose, make the run directory, train. The config is printed once the data and
    model are built, so an input error is one line, not a config listing and a line."""
    from .engine.interrupt import early_signals

    with early_signals():  # a SIGTERM from here on stops the run resumably, however early
        return _train_one(experiment, overrides, quiet_config, group, leaf, resume_latest, extend_epochs)


def _train_one(experiment, overrides, quiet_config, group, leaf, resume_latest, extend_epochs) -> tuple[Path, dict]:
    from .config import compose, make_run_dir
    from .engine import run_training

    cfg = compose(experiment, overrides)
    if resume_latest and not cfg.get("out_dir"):
        latest = latest_run(cfg.name)
        if latest is None:
            raise FileNotFoundError(f"--resume: no run of {cfg.name} with a checkpoint under runs/{cfg.name}/")
        cfg.out_dir = str(latest)
    run_dir, fresh = make_run_dir(cfg, group, leaf)
    on_ready = None if quiet_config else (lambda: print_config(cfg))
    console.print(f"run directory: {run_dir}")
    results = run_training(cfg, run_dir, overrides, console=console, on_ready=on_ready, fresh=fresh,
                           extend_epochs=extend_epochs)
    if results:
        print_results(results, f"{cfg.name}: final validation accuracy per bit mode", run_dir)
    return run_dir, results


# ----------------------------------------------------------------------------- grids
def parse_bits(text: str, flag: str = "--bits") -> list:
    from .quant import parse_mode

    bits = []
    for b in (b for b in text.replace(" ", "").split(",") if b):
        try:
            bits.append(parse_mode(b))
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {b!r} is not a bit mode; give a comma-separated list of bit "
                             "modes, each 1-8, 32 or wXaY (e.g. w2a4)") from None
    if not bits:
        raise ValueError(f"{flag} is empty")
    return bits


def grid_path(name: str) -> Path:
    from .config import conf_dir

    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = conf_dir() / "grid" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "grid").glob("*.yaml"))
        raise FileNotFoundError(f"no grid {name!r}: give a YAML file or one of {', '.join(known)}")
    return path


def load_grid(name: str, bits: list = (), _seen: tuple = ()) -> dict[str, list[str]]:
    """Variant name -> overrides from ``conf/grid/<name>.yaml`` (or a YAML path):
    ``include`` (other grids first), ``variants`` and ``per_bit`` (one variant per bit
    mode in ``bits``, ``{bits}`` filled in)."""
    path = grid_path(name)
    if path in _seen:
        raise ValueError(f"grid {name!r} includes itself")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ValueError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    if not isinstance(spec, dict) or set(spec) - {"include", "variants", "per_bit"}:
        raise ValueError(f"{path}: a grid has the keys include, variants and per_bit only")
    variants: dict[str, list[str]] = {}
    for other in _grid_list(spec.get("include"), path, "include"):
        variants.update(load_grid(other, bits, _seen + (path,)))
    for key in ("variants", "per_bit"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ValueError(f"{path}: {key} maps a variant name to its list of overrides")
    for leaf, extra in (spec.get("variants") or {}).items():
        variants[str(leaf)] = _grid_list(extra, path, f"variant {leaf}")
    for template, extra in (spec.get("per_bit") or {}).items():
        for b in bits:
            variants[str(template).format(bits=b)] = [o.format(bits=b) for o in _grid_list(extra, path, template)]
    return variants


def _grid_list(value, path: Path, what: str) -> list[str]:
    """A grid entry's overrides: a list, or one override written as a plain string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
        raise ValueError(f"{path}: {what} must be a list of key=value overrides, got {value!r}")
    return [str(v) for v in value]


def group_dir(experiment: str, overrides: list[str], kind: str) -> Path:
    from .config import compose

    out = next((o.split("=", 1)[1] for o in overrides if o.startswith("out_dir=")), None)
    if out:
        return Path(out)
    name = compose(experiment, [o for o in overrides if not o.startswith("out_dir=")]).name
    return Path("runs") / name / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_group(experiment: str, variants: dict[str, list[str]], group: Path, overrides: list[str],
              skip_finished: bool = True, launcher=None) -> list[Path]:
    """Train each variant into ``group/<leaf>``; finished runs are skipped, interrupted ones resume.

    Every config is composed and validated before the first run starts, so a typo fails
    at once instead of hours in. ``launcher`` (:class:`launch.LaunchOptions`) runs them
    one after another here (default), several at once, or as SLURM jobs.
    """
    from .config import compose
    from .launch import run_packed, run_parallel, run_submitit
    from .report.collect import read_run

    base = [o for o in overrides if not o.startswith("out_dir=")]
    plans = check_group(experiment, variants, group, base, launcher.name if launcher is not None else "local")
    todo = []
    for i, (leaf, run_overrides) in enumerate(plans, 1):
        rec = read_run(group / leaf) if (group / leaf / "config.yaml").exists() else None
        if skip_finished and rec is not None and rec.finished:
            console.print(f"[{i}/{len(plans)}] {leaf}: finished already, skipped ({group / leaf})")
        else:
            todo.append((leaf, run_overrides))
    name = launcher.name if launcher is not None else "local"
    if name == "parallel":
        run_parallel(experiment, todo, group, launcher.jobs, console)
    elif name == "packed":
        run_packed(experiment, todo, group, launcher.jobs, console,
                   lambda leaf, run_dir, results: print_results(results, f"{leaf}: final validation accuracy "
                                                                         "per bit mode", run_dir))
    elif name == "slurm":
        run_submitit(experiment, todo, group, launcher, console, train_one)
    else:
        run_local(experiment, todo, group)
    console.print(f"group directory: {group}")
    return [group / leaf for leaf, _ in plans]


def run_local(experiment: str, todo: list[tuple[str, list[str]]], group: Path) -> None:
    """One run after another here. A run that fails is reported and the others still
    train; the command then fails naming it (a signal still stops the whole group)."""
    from .engine.interrupt import RunInterrupted
    from .launch import LaunchError

    failed = []
    for i, (leaf, run_overrides) in enumerate(todo, 1):
        console.rule(f"[{i}/{len(todo)}] {leaf}")
        try:
            train_one(experiment, run_overrides, quiet_config=True)
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one failed run: say why, train the others
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            err_console.print(f"{leaf}: failed: {why}")
            failed.append(f"{leaf} ({why}; see {group / leaf / 'status.json'})")
    if failed:
        raise LaunchError(f"{len(failed)} of {count(len(todo), 'run')} failed: " + "; ".join(failed))


def check_group(experiment: str, variants: dict[str, list[str]], group: Path, base: list[str],
                launcher: str) -> list[tuple[str, list[str]]]:
    """Compose and check every run of a group before any is created: a bad one is one line
    naming the run, and nothing is written. Returns (leaf, overrides) per run. A run that
    finished already is only composed (it will be skipped: its data need not be here)."""
    from .config import ConfigError, compose
    from .engine import check_runnable
    from .report.collect import read_run

    plans, checked_data = [], set()
    for leaf, extra in variants.items():
        run_overrides = base + extra + [f"out_dir={group / leaf}"]
        try:
            cfg = compose(experiment, run_overrides)
            done = (group / leaf / "config.yaml").exists() and getattr(read_run(group / leaf), "finished", False)
            if not done:
                check_runnable(cfg, checked_data)
            if launcher == "packed":
                from .engine.pack import check_pack_config

                check_pack_config(cfg, leaf)
        except Exception as e:
            from .errors import is_input_error

            if not is_input_error(e) or len(variants) == 1:
                raise
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(text if text.startswith(f"{leaf}:") else f"run {leaf}: {text}") from None
        plans.append((leaf, run_overrides))
    return plans


def run_ablation(experiment: str, overrides: list[str], only: str | None, grid: str, launcher=None) -> list[Path]:
    variants = load_grid(grid)
    if only is not None:
        if only not in variants:
            raise ValueError(f"grid {grid!r} has no variant {only!r} (it has {', '.join(variants)})")
        variants = {only: variants[only]}
    return run_group(experiment, variants, group_dir(experiment, overrides, "ablate"), overrides, launcher=launcher)


def run_bit_sweep(experiment: str, overrides: list[str], bits: list, launcher=None) -> list[Path]:
    return run_group(experiment, load_grid("sweep_bits", bits), group_dir(experiment, overrides, "sweep"), overrides,
                     launcher=launcher)


def split_sweep(value: str) -> list[str]:
    """``a,b,[2,32]`` -> ``["a", "b", "[2,32]"]``: commas outside brackets separate values."""
    out, depth, cur = [], 0, ""
    for ch in value:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _leaf_value(value: str) -> str:
    """A swept value as part of a folder name Hydra can take back as ``out_dir``:
    ``[2,32]`` -> ``2+32``."""
    for a, b in (("[", ""), ("]", ""), (",", "+"), ("/", "_"), (" ", ""), ("=", "-"), ("'", ""), ('"', "")):
        value = value.replace(a, b)
    return value


def run_multirun(experiment: str, overrides: list[str], launcher=None) -> list[Path]:
    """Hydra's sweep syntax: ``key=v1,v2`` overrides expand into their cartesian product,
    one run each, named by its swept values (``optim.lr-0.05_quant.bits-2+32``)."""
    import itertools

    fixed, swept = [], []
    for o in overrides:
        key, _, value = o.partition("=")
        values = split_sweep(value) if "=" in o and not key.startswith("out_dir") else [value]
        (swept if len(values) > 1 else fixed).append((key, values) if len(values) > 1 else o)
    if not swept:
        raise ValueError("multirun: sweep at least one key, e.g. optim.lr=0.05,0.1 (values separated by commas)")
    variants = {}
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in swept]):
        leaf = "_".join(f"{k}-{_leaf_value(v)}" for k, v in combo)
        variants[leaf] = [f"{k}={v}" for k, v in combo]
    return run_group(experiment, variants, group_dir(experiment, fixed, "multirun"), fixed, launcher=launcher)


def run_reproduction(experiment: str, overrides: list[str], seeds: int, runs_dir: Path | None,
              report_dir: Path | None, grid: str = "reproduce", launcher=None) -> None:
    """Every variant of ``grid`` per seed, then the report (markdown, CSV, plot)."""
    from .config import compose
    from .report import build_report

    overrides = [o for o in overrides if not o.startswith(("seed=", "out_dir="))]
    cfg = compose(experiment, overrides)
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    group = runs_dir or Path("runs") / cfg.name / "reproduce"
    variants = load_grid(grid, list(cfg.quant.bits))
    # one queue, variant by variant and seed by seed within it: a parallel launcher keeps
    # every slot busy across seeds, and a table cut short holds whole variants
    plans = {f"seed{seed}/{leaf}": extra + [f"seed={seed}"] for leaf, extra in variants.items()
             for seed in range(seeds)}
    run_group(experiment, plans, group, overrides, launcher=launcher)
    # the experiment's own table only for its own grid: a side grid (equal_compute, bn, ...)
    # reports beside its runs rather than over experiments/<name>/results.*
    rdir = report_dir or (Path("experiments") / cfg.name if grid == "reproduce" else group)
    ref = rdir / "reference.csv"
    text = build_report([group], "markdown", rdir / "results.md", rdir / "results.png",
                        str(ref) if ref.is_file() else None)
    build_report([group], "csv", rdir / "results.csv", None, None)
    console.print(text, markup=False, soft_wrap=True)
    console.print(f"written: {rdir / 'results.md'}, {rdir / 'results.csv'}, {rdir / 'results.png'}")


# ----------------------------------------------------------------------------- eval
def resolve_checkpoint(target: Path, which: str) -> Path:
    if which not in ("last", "best"):
        raise ValueError(f"--checkpoint {which!r}: choose last or best")
    if target.is_dir():
        ck = target / ("best.pt" if which == "best" else "checkpoint.pt")
        if not ck.exists():
            raise FileNotFoundError(f"{target} has no {ck.name}: is it a qdnn run directory?")
        return ck
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist")
    return target


def evaluate_run(target: Path, overrides: list[str], bits: str | None, calibrate_bn: int, which: str,
             device: str, config: Path | None = None, recalibrate_trained: bool = False, split: str = "val") -> Path:
    """Evaluate a checkpoint in any modes (and a per-layer bit configuration); writes
    ``eval-<ckpt>-<time>.csv`` beside it."""
    from rich.table import Table

    from .loaded_run import evaluate_checkpoint
    from .engine.rundir import write_csv
    from .quant import BitConfig, mode_label

    ck = resolve_checkpoint(target, which)
    bit_cfg = BitConfig.load(config) if config is not None else None
    rows, meta = evaluate_checkpoint(ck, parse_bits(bits) if bits else None, calibrate_bn, overrides, device,
                                     bit_cfg, f"config {config.name}" if config is not None else "config",
                                     recalibrate_trained, split)
    which_split = "" if split == "val" else f"{split}-"
    out = ck.parent / f"eval-{ck.stem}-{which_split}{time.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(out, rows)
    images = "validation images" if split == "val" else "training images, un-augmented"
    table = Table(title=f"{ck} (epoch {meta['epoch']}, trained modes {meta['trained']}; {images})")
    for col in ("bits", "top-1 %", "top-5 %", "loss", "size MB", "GBOPs", "BN"):
        table.add_column(col, justify="right")
    for r in rows:
        bn = f"calibrated ({r['calibration_batches']} batches)" if r["calibrated"] else "trained"
        label = mode_label(r["mode"])
        table.add_row(label, f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.4f}", f"{r['size_mb']:.3f}",
                      f"{r['gbops']:.3f}", bn)
    console.print(table)
    console.print(f"written: {out}")
    return out


# ----------------------------------------------------------------------------- export
def export_run(target: Path, overrides: list[str], bits: str | None, config: Path | None, out: Path | None,
               images: int, calibrate_bn: int, which: str, force: bool, bench: bool, threads: int,
               form: str = "integer", residual: str = "float") -> Path:
    """``qdnn export``: every mode as an ONNX model with integer kernels, parity-checked;
    ``--bench`` times them too."""
    from rich.table import Table

    from .export import ExportOptions, export_checkpoint, require_onnx

    require_onnx()  # before anything is loaded
    if images < 0:
        raise ValueError(f"--images {images}: give a number of validation images >= 0 (0: all)")
    if calibrate_bn < 0:
        raise ValueError(f"--calibrate-bn {calibrate_bn}: give a number of training batches >= 0")
    ck = resolve_checkpoint(target, which)
    out = out or ck.parent / "export"
    options = ExportOptions(parse_bits(bits, "--modes") if bits else None, config, images, calibrate_bn,
                            overrides=tuple(overrides), force=force, form=form,
                            residual=residual)
    summary = export_checkpoint(ck, out, options, say=console.print)
    rows = summary["modes"]
    if bench:
        from .export.latency import bench_export

        rows = bench_export(out, threads, say=console.print)
    table = Table(title=f"{out} ({summary['parity_images']} validation images)")
    columns = ["mode", "top-1 % ONNX", "top-1 % qdnn", "same argmax %", "integer layers", "ONNX bytes",
               "packed bytes"] + (["ms batch 1", "ms batch 32"] if bench else [])
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [r["mode"], f"{r['top1_onnx']:.2f}", f"{r['top1_qdnn']:.2f}", f"{100 * r['argmax_agreement']:.2f}",
                 f"{r['integer_layers']}/{r['integer_layers'] + r['float_layers']}", f"{r['onnx_bytes']:,}",
                 f"{r['packed_total_bytes']:,}"]
        if bench:
            cells += [f"{r['latency_b1_ms']:.3f}", f"{r['latency_b32_ms']:.2f}"]
        table.add_row(*cells)
    console.print(table)
    package = summary["package"]
    console.print(f"switchable package: {out / package['file']} ({package['bytes']:,} bytes on disk for "
                  f"{count(len(rows), 'mode')}; float32 model {summary['fp32_model_bytes']:,} bytes)")
    return out


def bench_export_dir(folder: Path, threads: int, repeats: int, runtime: str = "onnxruntime") -> None:
    from .export.latency import bench_export

    bench_export(folder, threads, repeats, say=console.print, runtime=runtime)
    console.print(f"written: {folder / 'export.csv'}")


# ----------------------------------------------------------------------------- search
def run_search(target: Path, overrides: list[str], budget_bops: str | None, budget_size_mb: str | None, candidates: int,
           seed: int, calibrate_bn: int, search_images: int, device: str, out: Path | None, rerank: int = 8,
           strategy: str = "sensitivity", metric: str = "kl") -> dict:
    """``qdnn search``: per-layer configurations under a budget; prints the validation table."""
    from rich.table import Table

    from .engine.progress import make_progress
    from .search import SearchOptions, search_mixed_precision

    if (budget_bops is None) == (budget_size_mb is None):
        raise ValueError("give exactly one budget: --budget-bops X or --budget-size-mb Y")
    kind, budget = ("bops", budget_bops) if budget_bops is not None else ("size_mb", budget_size_mb)
    ck = resolve_checkpoint(target, "last")
    with make_progress(console, True, lines_off_terminal=True) as progress:
        options = SearchOptions(kind, budget, candidates, seed, calibrate_bn, search_images, rerank, strategy, metric,
                                device, out, tuple(overrides))
        summary = search_mixed_precision(ck, options, progress)
    measured = summary["sensitivity_evaluations"]
    console.print(f"searched {summary['evaluated']} configurations"
                  + (f" after {measured} single-layer measurements" if measured else "")
                  + f" in {summary['seconds']:.0f} s on {summary['search_slice']}")
    if summary["best"]["origin"].startswith("uniform"):
        console.print(f"no mixed configuration fits this budget better: the best is the {summary['best']['origin']} mode")
    table = Table(title="validation split (never searched on)")
    for col in ("setting", "BN", "top-1 %", "top-5 %", "KL to FP", "size MB", "GBOPs"):
        table.add_column(col, justify="right")
    for r in summary["val"]:
        table.add_row(r["setting"], r["bn"], f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['kl']:.4f}",
                      f"{r['size_mb']:.3f}", f"{r['gbops']:.3f}")
    console.print(table)
    v = summary["versus_uniform_on_val"]
    if v:
        console.print(f"searched vs uniform {v['uniform']} (BN {v['bn']}) on the same validation images: "
                      f"{v['delta_top1']:+.2f} points ({v['only_searched']} images only the searched configuration "
                      f"gets right, {v['only_uniform']} only the uniform mode; McNemar p = {v['p_value']:.3g})")
    console.print(f"written: {summary['out_dir']}/ (search.csv, pareto.csv, pareto.png, best.yaml, val.csv)")
    return summary


# ----------------------------------------------------------------------------- status
def _name_under(run: Path, paths: list[Path]) -> str:
    """A run's name relative to the folder it was found under (the folder's own name when
    the run is that folder)."""
    for p in paths:
        base = Path(p).resolve()
        if run == base:
            return base.name
        if base in run.parents:
            return str(run.relative_to(base))
    return str(run)


def show_status(paths: list[Path]) -> list[dict]:
    """Every run under ``paths``: state, epoch/epochs, last val top-1 per mode, job id."""
    import json

    from rich.table import Table

    from .quant import mode_label, sort_modes
    from .report.collect import find_runs

    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no qdnn runs (folders with config.yaml) under {', '.join(map(str, paths))}")
    rows = []
    for r in runs:
        job = r.path / "job.json"
        job_id = json.loads(job.read_text()).get("job_id", "") if job.is_file() else ""
        top1 = "  ".join(f"{mode_label(m)} {r.top1[m]:.2f}" for m in sort_modes(r.top1, descending=True))
        rows.append({"run": _name_under(r.path, paths), "state": r.state, "epoch": f"{r.epoch}/{r.epochs}", "top1": top1,
                     "job": job_id})
    table = Table(title=count(len(rows), "run"))
    for col in ("run", "state", "epoch", "last val top-1 %", "job"):
        table.add_column(col, overflow="fold")  # a long name wraps, never loses its end
    for row in rows:
        table.add_row(row["run"], row["state"], row["epoch"], row["top1"], row["job"])
    console.print(table)
    return rows

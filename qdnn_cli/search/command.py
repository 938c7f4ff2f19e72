"""``qdnn search`` as one function: load the run, search on the held-out slice, write the files, then evaluate on the validation split."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..quant import BitConfig, BitModeError, sort_modes
from ..quant.mixed import quantized_layers
from ..quant.modes import act_bits, weight_bits
from .evolution import STRATEGIES, rerank_finalists, search_configs
from .outputs import write_outputs
from .scoring import METRICS, Scores, _val, paired_comparison, reference_logprobs, score_against
from .sensitivity import allocate, measure_sensitivity, sensitivity_trials
from .space import BUDGET_KINDS, Candidate, Space, _cost, _label, check_budget, parse_budget


@dataclass(frozen=True)
class SearchOptions:
    """Everything ``qdnn search`` takes besides the checkpoint (its flags)."""
    kind: str                       # the budget's kind: bops or size_mb
    budget: str                     # a number (K/M/G suffixes) or a mode, e.g. 3-bit
    candidates: int = 60            # configurations evaluated after the sensitivity table
    seed: int = 0
    calibrate: int = 10             # training batches to re-estimate BN per candidate
    search_images: int = 2000       # held-out training-split images scored on
    rerank: int = 8                 # finalists re-scored on a second slice (0: off)
    strategy: str = "sensitivity"   # sensitivity or evolution
    metric: str = "kl"              # kl or top1
    device: str = "auto"
    out_dir: Path | None = None     # default: beside the checkpoint
    overrides: tuple = ()           # key=value onto the run's saved config


def search_mixed_precision(ckpt: Path, options: SearchOptions, progress=None) -> dict:
    """The whole command: load, search on the held-out slice (re-rank the ``rerank`` best
    on a second one), write files, then evaluate the best configuration and the uniform
    modes on the validation split. Returns what ``summary.json`` holds, and ``out_dir``."""
    o = options
    kind, budget_text, candidates, seed, calibrate = o.kind, o.budget, o.candidates, o.seed, o.calibrate
    search_images, device_name, out_dir, overrides = o.search_images, o.device, o.out_dir, o.overrides
    rerank, strategy, metric = o.rerank, o.strategy, o.metric
    from ..data import build_data, build_holdout
    from ..engine.evaluation import bn_state, calibrate_bn, load_bn_state
    from ..engine.rundir import write_csv
    from ..loaded_run import load_checkpoint_model, run_costs

    if kind not in BUDGET_KINDS:
        raise ValueError(f"budget kind {kind!r}: choose bops or size_mb")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}: choose {' or '.join(STRATEGIES)}")
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose {' or '.join(METRICS)}")
    if candidates < 1 or calibrate < 1 or search_images < 1 or rerank < 0:
        raise ValueError("--candidates, --calibrate-bn and --search-images must be positive, --rerank >= 0")
    run = load_checkpoint_model(ckpt, set(), list(overrides), device_name)
    model, cfg, trained = run.model, run.cfg, run.trained
    if len(trained) < 2:
        raise BitModeError(f"{ckpt} trained one bit mode ({trained}); a search needs a quantizable model")
    cost_fn = lambda c: run_costs(run, c)  # noqa: E731
    key = "bops" if kind == "bops" else "size_mb"
    budget = parse_budget(budget_text, kind, lambda b: run_costs(run, b)[key])
    space = Space(list(quantized_layers(model)), weight_bits(trained), act_bits(trained), cost_fn, kind, budget)
    check_budget(space)
    t = cfg.trainer
    calib, slice_, rerank_slice, described = build_holdout(cfg.data, int(cfg.seed), int(t.batch_size),
                                                           int(t.eval_batch_size), run.device, search_images,
                                                           search_images if rerank else 0)
    base = bn_state(model)
    teacher = sort_modes(trained)[-1]  # the most precise trained mode: full precision in a qdnn run
    references: dict[int, list] = {}

    def score(config, loader=slice_, keep_hits=False) -> Scores:
        if id(loader) not in references:
            references[id(loader)] = reference_logprobs(model, loader, teacher)
        calibrate_bn(model, calib, config, calibrate)
        r = score_against(model, loader, config, references[id(loader)], keep_hits)
        load_bn_state(model, base)
        return r

    started = time.perf_counter()
    reference = space.best_uniform(trained)
    n_sensitivity = sensitivity_trials(space, reference) if strategy == "sensitivity" else 0
    task = progress.add_task("search", total=n_sensitivity + candidates + len(trained), info="") if progress else None
    n_finalists = 0
    best_seen = [float("-inf")]

    def on_result(c: Candidate) -> None:
        if _cost(space, c) <= space.budget and not c.origin.startswith("uniform"):
            best_seen[0] = max(best_seen[0], c.fitness(metric))
        if progress:
            shown = f"{best_seen[0]:.2f} %" if metric == "top1" else f"KL {-best_seen[0]:.4f}"
            progress.update(task, advance=1, info=f"best in budget {shown}")

    sensitivity, start = None, []
    if strategy == "sensitivity":
        if progress:
            progress.update(task, description="sensitivity", info=f"each layer's settings against {_label(reference)}")

        def damage_of(choice: dict) -> float:
            return score(space.config(choice)).kl

        sensitivity = measure_sensitivity(space, damage_of, reference,
                                          (lambda r: progress.update(task, advance=1)) if progress else None)
        start = [(allocate(space, sensitivity, reference), "sensitivity")]
        if progress:
            progress.update(task, description="search", info="refining the allocation")
    cands = search_configs(space, score, candidates, seed, trained, on_result, metric, start)
    if rerank_slice is not None:
        if progress:
            progress.update(task, description="re-rank", info=f"{rerank} best on a second slice")
        n_finalists = len(rerank_finalists(cands, space, lambda c: score(c, rerank_slice), rerank, metric))
    out_dir = out_dir or ckpt.parent / f"search-{kind}-{budget_text}-{time.strftime('%Y%m%d-%H%M%S')}"
    best = write_outputs(out_dir, cands, space, f"{cfg.name}, {kind} <= {budget_text}: top-1 on "
                         f"{described.split(' ')[0]} held-out training images", metric, sensitivity)
    # the number to report: the validation split, never searched on
    data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), run.device, int(cfg.seed))
    val_ref = references[id(data.val)] = reference_logprobs(model, data.val, teacher)
    searched = score(best.config, data.val, keep_hits=True)
    val = [{"setting": f"searched ({kind} <= {budget_text})", "config": "best.yaml", "bn": f"calibrated {calibrate}",
            **_val(searched), "size_mb": best.size_mb, "gbops": best.bops / 1e9}]
    # the searched configuration against the costliest uniform mode within the budget, image by image
    rival = space.best_uniform_mode(trained)
    versus = {}
    for b in sort_modes(trained, descending=True):
        c = run_costs(run, b)
        val.append({"setting": f"uniform {b}", "config": "", "bn": "trained",
                    **_val(score_against(model, data.val, b, val_ref)), "size_mb": c["size_mb"], "gbops": c["bops"] / 1e9})
        recal = score(BitConfig.uniform(b), data.val, keep_hits=b == rival)
        val.append({"setting": f"uniform {b}", "config": "", "bn": f"calibrated {calibrate}",
                    **_val(recal), "size_mb": c["size_mb"], "gbops": c["bops"] / 1e9})
        if b == rival:
            versus = {"uniform": b, "bn": f"calibrated {calibrate}", **paired_comparison(searched.hits, recal.hits)}
    write_csv(out_dir / "val.csv", [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in val])
    summary = {"checkpoint": str(ckpt), "budget_kind": kind, "budget": budget_text, "budget_value": budget,
               "strategy": strategy, "metric": metric, "candidates": candidates, "seed": seed,
               "calibration_batches": calibrate, "search_slice": described, "reranked": n_finalists,
               "sensitivity_evaluations": len(sensitivity or []), "versus_uniform_on_val": versus,
               "evaluated": len(cands), "seconds": round(time.perf_counter() - started, 1),
               "best": {"config": best.config.to_dict(), "origin": best.origin, "search_top1": best.top1,
                        "search_kl": best.kl,
                        "rerank_top1": None if best.rerank_top1 != best.rerank_top1 else best.rerank_top1,
                        "gbops": best.bops / 1e9, "size_mb": best.size_mb}, "val": val}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["out_dir"] = str(out_dir)
    return summary

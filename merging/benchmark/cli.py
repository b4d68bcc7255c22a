"""``python -m <domain> {prepare, finetune, run, scale, plot, claims, variants, adopt}``: the command line every
domain shares, behind scripts/<domain>.sh; a domain's ``__main__`` calls ``main`` with its pool loader and default
pool."""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from merging import distributed
from merging.benchmark.parallel import check_jobs, parse_job
from merging.cli import positive_int
from merging.config import parse_value
from merging.errors import MergeError, report
from merging.io.atomic import interrupt_on_sigterm
from merging.logs import configure as configure_logging
from merging.logs import quiet_model_loads
from merging.registry import known_methods

from .pool import PoolConfig
from .request import check_local


def start_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                  overridable: tuple[str, ...]) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, the rest) of a domain's command line, whose commands in ``overridable`` take ``--name value``
    overrides (any other leftover is a usage error); then a run's setup: SIGTERM stops it as Ctrl-C does, progress
    logs go to stderr, and model loads draw no bar each."""
    args, extra = parser.parse_known_args(argv)
    if args.command not in overridable and extra:
        parser.error(f"unexpected arguments {extra}")
    interrupt_on_sigterm()
    configure_logging()
    quiet_model_loads()
    return args, extra


def parse_overrides(extra: list[str]) -> dict[str, object]:
    """``--density 0.2 --scaling 0.7`` -> {"density": 0.2, "scaling": 0.7} (values parsed as YAML scalars)."""
    if len(extra) % 2 or not all(key.startswith("--") for key in extra[::2]):
        raise MergeError(f"method parameters must come as --name value pairs, got {extra}")
    return {key[2:].replace("-", "_"): parse_value(value, key) for key, value in zip(extra[::2], extra[1::2])}


def finetune_jobs(args: argparse.Namespace, pool: PoolConfig) -> list[tuple[str, int]]:
    """(task, seed) pairs to fine-tune: a worker's --only share, else --tasks × --seeds (default: the pool's)."""
    if args.only:
        return [parse_job(text) for text in args.only]
    return [(t, s) for s in args.seeds or pool.finetune.seeds for t in args.tasks or pool.tasks]


def validate_request(args: argparse.Namespace, pool: PoolConfig, overrides: dict[str, object]) -> None:
    """Refuse a bad request before any download, data preparation or fine-tuning, naming the bad value: a local
    base or checkpoint folder of the pool that does not exist; fine-tuning --tasks outside the pool or negative
    --seeds; an unknown method or a parameter its schema rejects (``experiment.check_method``); --pool-seeds
    that are not the pool's fine-tuning seeds; scaling --targets outside the pool, an --extra that is neither a
    number ≥ 0 nor 'all', or a claim without checkpoints to draw from; claims --targets outside the pool.
    (--workers is a positive integer by its argparse type.) An --experiment that is not one plain folder name
    (letters, digits, '.', '_', '-') is refused, so that no row is written outside outs/."""
    name = getattr(args, "experiment", None)
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
        raise MergeError(f"--experiment {name!r}: expected one folder name under outs/ (letters, digits, '.', '_', "
                         "'-'; no '/')")
    if args.command in ("finetune", "run", "scale"):
        check_local(pool.base, "base")
        for task, ref in pool.checkpoints.items():
            check_local(ref, f"checkpoint of '{task}'")
    if args.command == "finetune":
        check_jobs(finetune_jobs(args, pool), pool.tasks, pool.name, "--only" if args.only else "--tasks/--seeds")
    if args.command in ("run", "scale"):
        from .experiment import check_grid_indices, check_method

        check_method(pool, args.method, overrides)
        if args.grid_points is not None:
            check_grid_indices(pool.domain.name, args.method, overrides, args.grid_points)
        stray = [s for s in args.pool_seeds or [] if s not in pool.finetune.seeds]
        if stray:
            raise MergeError(f"--pool-seeds {stray} are not fine-tuning seeds of pool '{pool.name}' "
                             f"{pool.finetune.seeds}; add them to finetune.seeds in {args.pool}")
    if args.command in ("scale", "claims", "variants"):
        from .scaling import target_pool

        target_pool(pool, args.targets)
    if args.command == "scale":
        from .scaling import extra_candidates, extra_count

        if args.claim == "relevance" and args.method in known_methods("routed"):
            raise MergeError(f"--claim relevance adds the targets' other seeds, but '{args.method}' routes an input "
                             "to its task's one checkpoint; its scaling claims are irrelevance and relevance_tasks")

        args.extra = extra_count(pool, args.targets, args.claim, args.extra)
        extra_candidates(pool, args.targets, args.claim, args.extra, pool.finetune.seeds[0])


def main(domain: str, load_pool: Callable[[str], PoolConfig], default_pool: str, argv: list[str] | None = None
         ) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {domain}", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="download and split the offline data sets")
    prepare.add_argument("--pool", default=default_pool)
    tune = commands.add_parser("finetune", help="fine-tune the pool's missing task checkpoints")
    tune.add_argument("--pool", default=default_pool)
    tune.add_argument("--seeds", type=int, nargs="*", help="fine-tuning seeds (default: the pool's finetune.seeds)")
    tune.add_argument("--tasks", nargs="*", help="a subset of the pool's tasks")
    tune.add_argument("--workers", type=positive_int, default=1,
                      help="parallel fine-tuning processes (e.g. the core count)")
    tune.add_argument("--only", nargs="*", metavar="TASK:SEED", help=argparse.SUPPRESS)  # one worker's share
    from .experiment import parameters_help

    methods = {"epilog": parameters_help(domain), "formatter_class": argparse.RawDescriptionHelpFormatter}
    run = commands.add_parser("run", help="evaluate one method and append its row to outs/<experiment>", **methods)
    run.add_argument("--pool", default=default_pool)
    run.add_argument("--method", required=True)
    run.add_argument("--experiment", help="outs/ folder name (default: the pool's name)")
    run.add_argument("--pool-seeds", type=int, nargs="*",
                     help="fine-tuning seeds to evaluate, one row each (default: the pool's finetune.seeds)")
    run.add_argument("--seed", type=int, default=0, help="merge seed (DARE masks)")
    scale = commands.add_parser("scale", help="one point of a scaling claim (extra checkpoints beside the targets)",
                                **methods)
    scale.add_argument("--pool", default=default_pool)
    scale.add_argument("--claim", choices=["irrelevance", "relevance", "relevance_tasks"], required=True,
                       help="irrelevance: + other tasks' checkpoints; relevance: + the targets' other seeds; "
                            "relevance_tasks (the paper's): + other tasks' checkpoints, scored on every task")
    scale.add_argument("--method", required=True)
    scale.add_argument("--targets", nargs="+", required=True, help="target tasks (a subset of the pool's)")
    scale.add_argument("--extra", required=True, help="how many extra checkpoints join the targets' (a number, or "
                       "'all': every other task once, the paper's main setting)")
    scale.add_argument("--pool-seeds", type=int, nargs="*", help="fine-tuning seeds of the targets' checkpoints")
    for command in (run, scale):
        command.add_argument("--grid-points", type=int, nargs="+", metavar="I",
                             help="merge and store only these points (0-based) of a data-driven method's "
                                  "validation grid, writing no row; a later run without it reads them back")
    draw = commands.add_parser("plot", help="PNG of a scaling claim's rows (score or peak RSS against extra)")
    draw.add_argument("--pool", default=default_pool)
    draw.add_argument("--claim", choices=["irrelevance", "relevance", "relevance_tasks"], required=True)
    draw.add_argument("--y", default="normalized", choices=["normalized", "peak_rss_gb"])
    claims = commands.add_parser("claims", help="judge the FW-Merging paper's claims (configs/claims.yaml) on the "
                                 "scaling rows: outs/<pool>_claims.md and one plot per claim")
    claims.add_argument("--pool", default=default_pool)
    claims.add_argument("--targets", nargs="+", required=True, help="the scaling rows' target tasks")
    variants = commands.add_parser("variants", help="judge the Frank-Wolfe variants (configs/fw_variants.yaml) "
                                   "on the all-task and scaling rows: outs/<pool>_fw_variants.md")
    variants.add_argument("--pool", default=default_pool)
    variants.add_argument("--targets", nargs="+", required=True, help="the scaling rows' target tasks")
    for command in (scale, draw, claims, variants):
        command.add_argument("--experiment", help="the outs/ name its rows and tables go under, as run's "
                             "(default: the pool's name): outs/<experiment>_<claim>/, outs/<experiment>_claims.md …")
    adopt = commands.add_parser("adopt", help="give the pool's rows made before the finetuned_digest column the "
                                "digest of the fine-tunes that re-made rows show they were scored against")
    adopt.add_argument("--pool", default=default_pool)
    args, extra = start_command(parser, argv, overridable=("run", "scale"))
    try:
        pool = load_pool(args.pool)
        experiment = getattr(args, "experiment", None) or pool.name
        overrides = parse_overrides(extra) if args.command in ("run", "scale") else {}
        validate_request(args, pool, overrides)
        if args.command == "prepare":
            pool.domain.prepare(pool)
        elif args.command == "finetune":

            from .store import finetune, finetune_many

            if args.only:
                for task, seed in finetune_jobs(args, pool):
                    print(finetune(pool, task, seed))
            else:
                finetune_many(args.pool, pool, finetune_jobs(args, pool), args.workers)
        elif args.command == "run" and args.grid_points is not None:
            from .experiment import store_experiment_points

            for record in store_experiment_points(pool, args.method, overrides, args.grid_points, args.pool_seeds,
                                                  args.seed):
                print(json.dumps(record))
        elif args.command == "run":
            from .experiment import run_experiment

            for row in run_experiment(pool, args.method, experiment, overrides,
                                      args.pool_seeds, args.seed):
                print(json.dumps(row))
        elif args.command == "scale":
            from .experiment import run_experiment, store_experiment_points
            from .scaling import extra_candidates, target_pool

            targets = target_pool(pool, args.targets)
            every_task = args.claim == "relevance_tasks"  # scored on every task; the merge's targets grow
            for pool_seed in args.pool_seeds or pool.finetune.seeds[:1]:
                others = extra_candidates(pool, args.targets, args.claim, args.extra, pool_seed)
                if args.grid_points is not None:
                    for record in store_experiment_points(pool if every_task else targets, args.method, overrides,
                                                          args.grid_points, [pool_seed], extra=others,
                                                          own=list(args.targets) if every_task else None):
                        print(json.dumps(record))
                    continue
                for row in run_experiment(pool if every_task else targets, args.method, f"{experiment}_{args.claim}",
                                          overrides, [pool_seed], extra=others,
                                          columns={"claim": args.claim, "extra": args.extra,
                                                   "targets": " ".join(args.targets)},
                                          own=list(args.targets) if every_task else None):
                    print(json.dumps(row))
        elif args.command == "claims":
            from .claims import write_claims

            print(write_claims(pool, args.pool, args.targets, experiment=experiment))
        elif args.command == "variants":
            from .variants import write_variants

            print(write_variants(pool, args.pool, args.targets, experiment=experiment))
        elif args.command == "adopt":
            from .adopt import adopt_pool

            adopted, left = adopt_pool(pool)
            for name, row in adopted:
                print(f"{name}: pool seed {row.get('pool_seed', '')} {row.get('method', '')} {row.get('overrides', '')}"
                      f" extra {row.get('extra', '') or '-'} ({row.get('date', '')}) -> {row['finetuned_digest']}")
            print("\n".join([*left, f"{len(adopted)} rows adopted"]))
        else:
            from .scaling import plot

            folder = Path("outs") / f"{experiment}_{args.claim}"
            print(plot(folder / "results.csv", folder / f"{args.claim}_{args.y}.png", args.y))
    except (MergeError, OSError, KeyboardInterrupt) as err:
        message, status = report(err)
        print(message, file=sys.stderr)
        return status
    distributed.finish()  # under `accelerate launch`: every process leaves the group together
    return 0

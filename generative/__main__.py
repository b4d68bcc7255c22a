"""``python -m generative {prepare, finetune, evaluate, finetuned, merge}`` on a pool (configs/generative/*.yaml):
build the 16-task suite; train the pool's checkpoints (LoRA adapters or full fine-tunes; cached, resumable);
score a model (or a model with an adapter) through lm-eval; score each checkpoint on its own task (the
normalised score's 100); merge the pool with a method whose hyper-parameters are chosen on validation. Rows go
to ``outs/<pool name>/results.csv`` (+ results.md).

    python -m generative prepare
    python -m generative finetune --tasks add_2d --seeds 0
    python -m generative evaluate --label base
    python -m generative finetuned
    python -m generative merge ties
    python -m generative merge frank_wolfe --space product
    python -m generative merge from --pool configs/generative/smollm2_3_full.yaml --drop-rate 0.9

Method parameters (merge) and training settings (finetune) are ``--name value`` pairs, as in the other domains'
command lines. Results go to stdout as JSON, progress to stderr; a bad input ends with one ``error:`` line and
exit status 2 (130 when interrupted).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from merging import distributed
from merging.benchmark.cli import parse_overrides
from merging.benchmark.parallel import check_jobs, parse_job
from merging.benchmark.request import check_local
from merging.cli import positive_int
from merging.errors import MergeError, report
from merging.io.atomic import interrupt_on_sigterm
from merging.io.checkpoint import resolve_model_ref
from merging.logs import configure as configure_logging
from merging.logs import quiet_model_loads

from . import data
from .finetune import train_many
from .pool import CONFIGS, GenerativePool, load_pool
from .run import check_merge, evaluate_model, finetuned_scores, normalized, record, run_method


def finetune_jobs(args: argparse.Namespace, pool: GenerativePool) -> list[tuple[str, int]]:
    """(task, seed) pairs to train: a worker's --only share, else the (selected) tasks × --seeds."""
    if args.only is not None:
        return [parse_job(text) for text in args.only]
    return [(task, seed) for task in args.tasks or pool.tasks for seed in args.seeds]


def validate_request(args: argparse.Namespace, pool: GenerativePool, overrides: dict[str, object]) -> None:
    """Refuse a bad request before any download, data preparation, training or scoring, naming the bad value:
    --tasks outside the pool; a local model folder that does not exist (the pool's base and given checkpoints,
    --model, --adapter); negative fine-tuning --seeds or training settings the pool's kind rejects; for
    ``merge``, a method or parameter that ``run.check_merge`` refuses. (--workers, --limit, --batch-size and
    --limit-validation are positive integers by their argparse type; the pool YAML is checked by load_pool.)"""
    unknown = sorted(set(args.tasks or []) - set(pool.tasks))
    if unknown:
        raise MergeError(f"--tasks {unknown} are not tasks of pool {args.pool} ({', '.join(pool.tasks)})")
    if args.command == "evaluate":
        check_local(args.model or pool.base, "--model" if args.model else "base")
        if args.adapter is not None:
            check_local(str(args.adapter), "--adapter")
    elif args.command != "prepare":
        check_local(pool.base, "base")
        for label, ref in pool.checkpoints.items():
            check_local(ref, f"checkpoint '{label}'")
    if args.command == "finetune":
        source = "--only" if args.only is not None else "--tasks/--seeds"
        check_jobs(finetune_jobs(args, pool), pool.tasks, pool.name, source)
        pool.model_copy(update={"training": {**pool.training, **overrides}}).training_config()
    elif args.command == "merge":
        check_merge(pool, args.method, overrides)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pool", type=Path, default=CONFIGS / "smollm2_16_lora.yaml", help="the pool YAML")
    common.add_argument("--tasks", nargs="*", help="a subset of the pool's tasks (default: all)")
    common.add_argument("--outs", type=Path, default=Path("outs"))
    common.add_argument("--limit", type=positive_int,
                        help="score the first N test (or --split) examples of each task")
    parser = argparse.ArgumentParser(prog="python -m generative", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the task splits from the BIG-bench sdist", parents=[common])
    tune = commands.add_parser("finetune", help="train the pool's checkpoints that are not in the cache yet",
                               parents=[common])
    tune.add_argument("--seeds", type=int, nargs="*", default=[0])
    tune.add_argument("--workers", type=positive_int, default=1,
                      help="parallel fine-tuning processes, one thread each on a machine with as many cores")
    tune.add_argument("--only", nargs="*", metavar="TASK:SEED", help=argparse.SUPPRESS)  # one worker's share
    run = commands.add_parser("evaluate", help="score a model on the suite through lm-eval", parents=[common])
    run.add_argument("--model", help="a model folder, hub id, package: or .gguf reference (default: the base)")
    run.add_argument("--adapter", type=Path, help="a peft LoRA adapter of --model, merged in before scoring")
    run.add_argument("--label", default="base", help="the row's name in results.csv")
    run.add_argument("--split", default="test", choices=["test", "validation"])
    run.add_argument("--batch-size", type=positive_int, default=8)
    reference = commands.add_parser("finetuned", help="score each task's checkpoint on its own task",
                                    parents=[common])
    reference.add_argument("--seed", type=int, default=0)
    reference.add_argument("--split", default="test", choices=["test", "validation"])
    merge = commands.add_parser("merge", help="merge the pool (grid on validation), score on test",
                                parents=[common])
    merge.add_argument("method", help="task_arithmetic, ties, dare_ties, from, from_lora, frank_wolfe, …")
    merge.add_argument("--seed", type=int, default=0, help="the checkpoints' fine-tuning seed")
    merge.add_argument("--limit-validation", type=positive_int, default=25,
                       help="validation examples per task for the hyper-parameter search")
    tune.epilog = "--name value pairs override the pool's training settings (e.g. --epochs 2 --lr 0.01)"
    merge.epilog = "--name value pairs fix parameters of configs/generative/methods/<method>.yaml (e.g. --lambda 0.5)"
    args, extra = parser.parse_known_args(argv)
    if args.command not in ("finetune", "merge") and extra:
        parser.error(f"unexpected arguments {extra}")
    interrupt_on_sigterm()
    configure_logging()
    quiet_model_loads()
    try:
        overrides = parse_overrides(extra)
        pool = load_pool(args.pool)
        validate_request(args, pool, overrides)
        pool.tasks = args.tasks or pool.tasks
        if args.command == "prepare":
            data.prepare(pool.tasks)
        elif args.command == "finetune":
            pool.training.update(overrides)
            jobs = finetune_jobs(args, pool)
            settings = [token for k, v in overrides.items() for token in (f"--{k.replace('_', '-')}", json.dumps(v))]
            command = ["-m", "generative", "finetune", "--pool", str(args.pool), *settings, "--only"]
            for folder in train_many(resolve_model_ref(pool.base),
                                     data.local_tasks("train", list(dict.fromkeys(t for t, _ in jobs))), jobs,
                                     pool.folder, pool.training_config(), args.workers, command):
                print(folder)
        elif args.command == "evaluate":
            scores = evaluate_model(pool, args.model or pool.base, args.label, args.split, pool.tasks, args.outs,
                                    args.limit, args.batch_size, args.adapter)
            print(json.dumps({name: round(100 * value, 2) for name, value in scores.items()}))
        elif args.command == "finetuned":
            started = time.perf_counter()
            scores = finetuned_scores(pool, args.split, args.seed, args.limit, args.outs)
            record(args.outs, pool, "finetuned", scores, started, normalized=normalized(scores, scores),
                   split=args.split, limit=args.limit or "", seed=args.seed)
            print(json.dumps({name: round(100 * value, 2) for name, value in scores.items()}))
        else:
            result = run_method(pool, args.method, overrides, args.seed, args.outs, args.limit, args.limit_validation)
            print(json.dumps({"out": str(result)} if isinstance(result, Path) else result, default=str))
    except (MergeError, OSError, KeyboardInterrupt) as error:
        message, status = report(error)
        print(message, file=sys.stderr)
        return status
    distributed.finish()  # under `accelerate launch`: every process leaves the group together
    return 0


if __name__ == "__main__":
    sys.exit(main())

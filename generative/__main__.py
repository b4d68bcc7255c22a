"""``python -m generative {prepare, finetune, run, evaluate}`` on a pool (configs/generative/*.yaml): build the
16-task suite; train the pool's checkpoints (LoRA adapters or full fine-tunes; cached, resumable); run a method
or a reference as the other domains do (``run --method``: one row per fine-tuning seed in
``outs/<experiment>/results.csv``, with the columns every domain's rows have; a merge's hyper-parameters are
chosen on validation); score any model (or a model with an adapter) through lm-eval.

    python -m generative prepare
    python -m generative finetune --tasks add_2d --seeds 0
    python -m generative run --method finetuned            # each checkpoint on its own task: the 100
    python -m generative run --method pretrained
    python -m generative run --method ties
    python -m generative run --method frank_wolfe --space product
    python -m generative run --method from --pool configs/generative/smollm2_3_full.yaml --drop-rate 0.9
    python -m generative evaluate --model path/to/model --label mine

Method parameters (run) and training settings (finetune) are ``--name value`` pairs, as in the other domains'
command lines. Results go to stdout as JSON, progress to stderr; a bad input ends with one ``error:`` line and
exit status 2 (130 when interrupted).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from merging import distributed
from merging.benchmark.cli import parse_overrides, start_command
from merging.benchmark.experiment import parameters_help
from merging.benchmark.parallel import check_jobs, parse_job
from merging.benchmark.request import check_local
from merging.cli import positive_int
from merging.errors import MergeError, report
from merging.io.checkpoint import resolve_model_ref

from . import data
from .finetune import train_many
from .merge import adapter_methods
from .pool import CONFIGS, GenerativePool, load_pool
from .run import DOMAIN, REFERENCES, check_method, evaluate_model, run_method

LORA_OPTIONS = ("LoRA pools merge with every method above (full fine-tunes: the per-tensor ones) and take --rank "
                "(the merged adapter's; default the adapters' largest r), --space product|factors (FW: ΔW re-factored, "
                "or A and B merged apart as the official code), --proxy-examples and --proxy-batch-size (FW's proxy)")


def finetune_jobs(args: argparse.Namespace, pool: GenerativePool) -> list[tuple[str, int]]:
    """(task, seed) pairs to train: a worker's --only share, else the (selected) tasks × --seeds."""
    if args.only is not None:
        return [parse_job(text) for text in args.only]
    return [(task, seed) for task in args.tasks or pool.tasks for seed in args.seeds]


def validate_request(args: argparse.Namespace, pool: GenerativePool, overrides: dict[str, object]) -> None:
    """Refuse a bad request before any download, data preparation, training or scoring, naming the bad value:
    --tasks outside the pool; a local model folder that does not exist (the pool's base and given checkpoints,
    --model, --adapter); negative fine-tuning --seeds or training settings the pool's kind rejects; for
    ``run``, a method or parameter that ``run.check_method`` refuses. (--workers, --limit, --batch-size and
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
    elif args.command == "run":
        check_method(pool, args.method, overrides)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pool", type=Path, default=CONFIGS / "smollm2_12_lora_v2.yaml", help="the pool YAML")
    common.add_argument("--tasks", nargs="*", help="a subset of the pool's tasks (default: all)")
    common.add_argument("--outs", type=Path, default=Path("outs"))
    common.add_argument("--limit", type=positive_int,
                        help="score the first N test (or --split) examples of each task")
    parser = argparse.ArgumentParser(prog="python -m generative", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the task splits (generated, or read from their archive)", parents=[common])
    tune = commands.add_parser("finetune", help="train the pool's checkpoints that are not in the cache yet",
                               parents=[common])
    tune.add_argument("--seeds", type=int, nargs="*", default=[0])
    tune.add_argument("--workers", type=positive_int, default=1,
                      help="parallel fine-tuning processes, one thread each on a machine with as many cores")
    tune.add_argument("--only", nargs="*", metavar="TASK:SEED", help=argparse.SUPPRESS)  # one worker's share
    evaluate = commands.add_parser("evaluate", help="score any model on the suite through lm-eval",
                                   parents=[common])
    evaluate.add_argument("--model", help="a model folder, hub id, package: or .gguf reference (default: the base)")
    evaluate.add_argument("--adapter", type=Path, help="a peft LoRA adapter of --model, merged in before scoring")
    evaluate.add_argument("--label", default="base", help="the row's name (method column) in results.csv")
    evaluate.add_argument("--split", default="test", choices=["test", "validation"])
    evaluate.add_argument("--batch-size", type=positive_int, default=8)
    run = commands.add_parser("run", help="run a method (grid on validation, scored on test) or a reference; "
                              "one row per fine-tuning seed", parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=parameters_help(DOMAIN, REFERENCES, adapter_methods(), LORA_OPTIONS))
    run.add_argument("--method", required=True, help="a reference (pretrained, finetuned) or a merge method")
    run.add_argument("--experiment", help="outs/ folder name (default: the pool's name)")
    run.add_argument("--pool-seeds", type=int, nargs="*", default=[0],
                     help="fine-tuning seeds of the checkpoints, one row each (default: 0)")
    run.add_argument("--seed", type=int, default=0, help="merge seed (DARE masks)")
    run.add_argument("--limit-validation", type=positive_int, default=25,
                     help="validation examples per task for the hyper-parameter search")
    tune.epilog = "--name value pairs override the pool's training settings (e.g. --epochs 2 --lr 0.01)"
    args, extra = start_command(parser, argv, overridable=("finetune", "run"))
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
        else:
            for pool_seed in args.pool_seeds:
                result = run_method(pool, args.method, overrides, pool_seed, args.outs,
                                    args.experiment or pool.name, args.limit, args.limit_validation, args.seed)
                print(json.dumps({"out": str(result)} if isinstance(result, Path) else result, default=str))
    except (MergeError, OSError, KeyboardInterrupt) as error:
        message, status = report(error)
        print(message, file=sys.stderr)
        return status
    distributed.finish()  # under `accelerate launch`: every process leaves the group together
    return 0


if __name__ == "__main__":
    sys.exit(main())

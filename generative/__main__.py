"""``python -m generative {prepare, finetune, evaluate, finetuned, merge}``: build the 16-task suite; train one
LoRA adapter per task and seed (cached, resumable); score a model (or a model with an adapter) through lm-eval;
score each adapter on its own task (the normalised score's 100); merge the adapters with a method whose
hyper-parameters are chosen on validation. Rows go to ``outs/<experiment>/results.csv`` (+ results.md).

    python -m generative prepare
    python -m generative finetune --tasks add_2d --seeds 0
    python -m generative evaluate --label base
    python -m generative finetuned
    python -m generative merge ties
    python -m generative merge frank_wolfe --set space=product
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from merging.checkpoint import resolve_model_ref
from merging.errors import MergeError

from . import data
from .finetune import LoraTraining, train_adapter
from .run import BASE, adapter_dir, evaluate_model, finetuned_scores, normalized, record, run_method


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=BASE, help="the base: a model folder, hub id, package: or .gguf ref")
    common.add_argument("--tasks", nargs="*", help="a subset of configs/generative/tasks.yaml (default: all)")
    common.add_argument("--experiment", default="smollm2_16tasks")
    common.add_argument("--outs", type=Path, default=Path("outs"))
    common.add_argument("--limit", type=int, help="score the first N test (or --split) examples of each task")
    parser = argparse.ArgumentParser(prog="python -m generative", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the task splits from the BIG-bench sdist", parents=[common])
    tune = commands.add_parser("finetune", help="train the LoRA adapters that are not in the cache yet",
                               parents=[common])
    tune.add_argument("--seeds", type=int, nargs="*", default=[0])
    tune.add_argument("--epochs", type=float, default=LoraTraining().epochs)
    tune.add_argument("--lr", type=float, default=LoraTraining().lr)
    run = commands.add_parser("evaluate", help="score a model on the suite through lm-eval", parents=[common])
    run.add_argument("--adapter", type=Path, help="a peft LoRA adapter of --model, merged in before scoring")
    run.add_argument("--label", default="base", help="the row's name in results.csv")
    run.add_argument("--split", default="test", choices=["test", "validation"])
    run.add_argument("--batch-size", type=int, default=8)
    reference = commands.add_parser("finetuned", help="score each task's adapter on its own task",
                                    parents=[common])
    reference.add_argument("--seed", type=int, default=0)
    merge = commands.add_parser("merge", help="merge the adapters (grid on validation), score on test",
                                parents=[common])
    merge.add_argument("method", help="task_arithmetic, ties, dare_ties, from_lora, frank_wolfe, …")
    merge.add_argument("--seed", type=int, default=0, help="the adapters' fine-tuning seed")
    merge.add_argument("--set", dest="overrides", type=_setting, action="append", default=[],
                       help="KEY=VALUE fixing a parameter of configs/generative/methods/<method>.yaml")
    merge.add_argument("--limit-validation", type=int, default=25,
                       help="validation examples per task for the hyper-parameter search")
    args = parser.parse_args(argv)
    tasks = args.tasks or list(data.entries())
    try:
        if args.command == "prepare":
            data.prepare()
        elif args.command == "finetune":
            base = resolve_model_ref(args.model)
            for task in data.local_tasks("train", tasks):
                for seed in args.seeds:
                    training = LoraTraining(epochs=args.epochs, lr=args.lr)
                    print(train_adapter(base, task, adapter_dir(task.name, seed), training, seed=seed))
        elif args.command == "evaluate":
            scores = evaluate_model(args.model, args.label, args.split, tasks, args.experiment, args.outs,
                                    args.limit, args.batch_size, args.adapter)
            print({name: round(100 * value, 2) for name, value in scores.items()})
        elif args.command == "finetuned":
            import time

            started = time.perf_counter()
            scores = finetuned_scores("test", tasks, args.seed, args.limit, args.outs, args.experiment, args.model)
            record(args.outs, args.experiment, "finetuned", scores, started, normalized=normalized(scores, scores),
                   split="test", limit=args.limit or "", seed=args.seed)
            print({name: round(100 * value, 2) for name, value in scores.items()})
        else:
            row = run_method(args.method, dict(args.overrides), tasks, args.seed, args.experiment, args.outs,
                             args.limit, args.limit_validation, args.model)
            print({k: row[k] for k in ("model", "normalized", "average")})
    except MergeError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()

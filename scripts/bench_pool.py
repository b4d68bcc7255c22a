#!/usr/bin/env python3
"""Build the synthetic LLaMA-architecture checkpoint pool that scripts/bench_merge.sh merges.

    python3 scripts/bench_pool.py [--out DIR] [--num-models 8] [--force]

Writes DIR/base and DIR/ft1 .. DIR/ftN, each a Hugging Face folder (config.json, safetensors shards of at
most --shard-mb MB, model.safetensors.index.json) of a LlamaForCausalLM in bfloat16 (hidden 1024,
16 layers, intermediate 2816, vocab 32000, 16 heads, untied embeddings: 271M parameters, 542 MB):

    base       ~ N(0, 0.02) per tensor, norm weights = 1      (torch.Generator seeded with --base-seed)
    ft<i>      = base + N(0, 0.002) on every tensor           (torch.Generator seeded with i)

Tensors are generated directly, one shard's worth at a time (no model is instantiated), with the names
and shapes of LlamaForCausalLM, which are checked against the model built on the meta device.

Idempotent: a model folder whose marker file (.bench_pool.json, written last) records the same spec is
left alone; an incomplete or different one is rebuilt. DIR defaults to
${MERGING_CACHE:-~/.cache/merging}/bench_pool.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

MARKER = ".bench_pool.json"
INDEX = "model.safetensors.index.json"
FORMAT_VERSION = 2  # bump when the written files change


def default_out() -> Path:
    cache = os.environ.get("MERGING_CACHE") or os.path.join(Path.home(), ".cache", "merging")
    return Path(cache) / "bench_pool"


def llama_config(args: argparse.Namespace):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.intermediate,
        vocab_size=args.vocab, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        tie_word_embeddings=False, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]  # what save_pretrained records; mergekit requires it
    return config


def tensor_specs(args: argparse.Namespace) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every LlamaForCausalLM weight, in state_dict order (KV heads = attention heads)."""
    h, i, v = args.hidden, args.intermediate, args.vocab
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(args.layers):
        p = f"model.layers.{layer}."
        specs += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (h, h)),
                  (p + "self_attn.v_proj.weight", (h, h)), (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i)),
                  (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def check_against_meta(config, specs: list[tuple[str, tuple[int, ...]]]) -> None:
    """Fail unless ``specs`` are exactly LlamaForCausalLM(config)'s state_dict names and shapes."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    actual = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    if actual != specs:
        missing = sorted(set(specs) - set(actual))[:5]
        extra = sorted(set(actual) - set(specs))[:5]
        sys.exit(f"bench_pool: tensor specs differ from LlamaForCausalLM: ours only {missing}, "
                 f"transformers only {extra}")


def plan_shards(specs, shard_bytes: int, itemsize: int = 2) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group tensors in order into shards of at most ``shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = itemsize * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_spec(args: argparse.Namespace, index: int) -> dict:
    """What a finished model folder's marker records; a mismatch means rebuild."""
    return {"format_version": FORMAT_VERSION, "model": "base" if index == 0 else f"ft{index}",
            "seed": args.base_seed if index == 0 else index, "base_seed": args.base_seed, "base_std": args.base_std,
            "delta_std": args.delta_std, "hidden": args.hidden, "layers": args.layers,
            "intermediate": args.intermediate, "vocab": args.vocab, "heads": args.heads,
            "shard_bytes": args.shard_mb * 10**6, "dtype": "bfloat16"}


def is_complete(folder: Path, spec: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == spec
    except (OSError, ValueError):
        return False


def write_model(folder: Path, index: int, args, config, specs, base_dir: Path | None) -> None:
    """Write one model folder via a temporary sibling, renamed into place once complete."""
    spec = model_spec(args, index)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.to_json_file(tmp / "config.json")

    gen = torch.Generator().manual_seed(spec["seed"])
    shards = plan_shards(specs, spec["shard_bytes"])
    weight_map: dict[str, str] = {}
    total = 0
    base_index = json.loads((base_dir / INDEX).read_text())["weight_map"] if base_dir else None
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for name, shape in shard:
            if base_dir is None:
                if name.endswith("norm.weight"):
                    t = torch.ones(shape, dtype=torch.bfloat16)
                else:
                    t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(args.base_std)
                    t = t.to(torch.bfloat16)
            else:
                with safe_open(base_dir / base_index[name], framework="pt") as f:
                    base = f.get_tensor(name).to(torch.float32)
                noise = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(args.delta_std)
                t = base.add_(noise).to(torch.bfloat16)
                del base, noise
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(tensors, tmp / fname, metadata={"format": "pt"})
        del tensors
    (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                        indent=2) + "\n")
    (tmp / MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out(), help="pool folder (default: %(default)s)")
    parser.add_argument("--num-models", type=int, default=8, help="fine-tuned checkpoints (default: 8)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=16, help="attention heads = key/value heads")
    parser.add_argument("--base-std", type=float, default=0.02)
    parser.add_argument("--delta-std", type=float, default=0.002)
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--shard-mb", type=int, default=200, help="max shard size in MB (10^6 bytes)")
    parser.add_argument("--force", action="store_true", help="rebuild even complete model folders")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    out: Path = args.out.expanduser()
    names = ["base"] + [f"ft{i}" for i in range(1, args.num_models + 1)]
    todo = [i for i, n in enumerate(names) if args.force or not is_complete(out / n, model_spec(args, i))]
    if not todo:
        if not args.quiet:
            print(f"bench_pool: {out} is complete ({len(names)} models)")
        return 0

    config = llama_config(args)
    specs = tensor_specs(args)
    check_against_meta(config, specs)
    if 0 in todo:  # the fine-tuned ones derive from the base as written: rebuild them all with it
        todo = list(range(len(names)))
    params = sum(_numel(s) for _, s in specs)
    out.mkdir(parents=True, exist_ok=True)
    for i in todo:
        start = time.perf_counter()
        write_model(out / names[i], i, args, config, specs, None if i == 0 else out / "base")
        if not args.quiet:
            print(f"bench_pool: wrote {out / names[i]} ({params / 1e6:.1f}M params, "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""mergekit parity: the same mergekit YAML through mergekit and through our CLI, outputs compared.

    python3 scripts/parity_mergekit.py pool --out DIR            # tiny Llama and Mistral pools (fp32 and bf16)
    python3 scripts/parity_mergekit.py compare CONFIG MK OURS [--stable MK_STABLE]   # one JSON line
    .bench-venv/bin/python scripts/parity_mergekit.py stable-mergekit CFG OUT FLAGS…      # mergekit, stable sort
    python3 scripts/parity_mergekit.py report ROWS.jsonl         # the Markdown table of scripts/parity_mergekit.sh

``pool`` writes DIR/<family>_<dtype>/{base,ft1,ft2,ft3}: a LlamaForCausalLM or MistralForCausalLM (hidden 32, 4
layers, vocab 64, untied head) in float32 or bfloat16 with a word-level tokenizer; ft<i> = base + N(0, 0.01) on
every tensor (generator seeded with i), rounded to the pool's dtype; and a LoRA adapter of the base, lora/.

``stable-mergekit`` runs mergekit-yaml with ``torch.argsort(..., stable=True)``: mergekit's magnitude trim
(sparsify.magnitude) keeps the first k of an unstable argsort, so where magnitudes tie at the threshold (bf16
task vectors) which of them survive is torch's choice. With a stable sort the first ones in flat order survive,
our rule. A config whose first lines say ``# parity: stable-sort`` is judged against that run (``--stable``);
the row also counts the elements where stock mergekit differs. ``# parity: random`` (DARE, DELLA: the masks come
from each tool's own generator) compares everything but the values.

``compare`` reads both output folders: same tensor names, same dtypes, the same config.json (but for the writer's
transformers_version), the same files (ours may add its own
records, merge_config.yaml and merge_info.json) and chat template (a conversation rendered through both
tokenizers), the max absolute difference, and the largest difference in
units in the last place (ulp) of the output dtype at the tensor's largest magnitude. A pair matches when the
names and dtypes agree and no element differs by more than ``MAX_ULP`` of those ulp: what two correct
implementations that round in a different order give (mergekit computes in the config's dtype, we in float32
unless told, and round once).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

FAMILIES = ("llama", "mistral")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOISE = 0.01
MAX_ULP = 4  # float32 chains of a few operations rounded in another order (multislerp's closed form: 3)
OUR_RECORDS = {"merge_config.yaml", "merge_info.json"}
WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]


def tiny_model(family: str):
    import transformers

    kind = {"llama": "Llama", "mistral": "Mistral"}[family]
    config = getattr(transformers, f"{kind}Config")(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    return getattr(transformers, f"{kind}ForCausalLM")(config).eval()


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def build_pool(out: Path) -> None:
    for family in FAMILIES:
        for dtype_name, dtype in DTYPES.items():
            root = out / f"{family}_{dtype_name}"
            if (root / "lora" / "adapter_config.json").is_file():
                continue
            model = tiny_model(family).to(dtype)
            base = {k: v.clone() for k, v in model.state_dict().items()}
            for name in ("base", "ft1", "ft2", "ft3"):
                if name != "base":
                    generator = torch.Generator().manual_seed(int(name[-1]))
                    model.load_state_dict({k: (v.float() + NOISE * torch.randn(v.shape, generator=generator))
                                           .to(v.dtype) for k, v in base.items()})
                model.save_pretrained(root / name)
                save_tokenizer(root / name)
            save_adapter(family, dtype, root / "lora")
            print(f"pool: {root}", file=sys.stderr)


def save_adapter(family: str, dtype: torch.dtype, folder: Path) -> None:
    """A LoRA adapter of the base (r 4 on q_proj and v_proj, both factors random: a non-zero update)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(4)
    model = get_peft_model(tiny_model(family).to(dtype), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                    target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names = f.keys()
            found.update({k: f.get_tensor(k) for k in names})
    return found


def spacing(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ulp of ``dtype`` at |values|: 2^(⌊log2|x|⌋ − mantissa bits)."""
    mantissa = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10, torch.float64: 52}[dtype]
    tiny = torch.finfo(dtype).tiny
    return torch.exp2(torch.floor(torch.log2(values.abs().double().clamp(min=tiny))) - mantissa)


def chat_rendering(folder: Path) -> str | None:
    """A two-turn conversation through the output tokenizer's chat template (None: it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        return None
    return tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                         tokenize=False, add_generation_prompt=True)


def compare(config: str, mergekit_out: Path, ours_out: Path, random: bool = False) -> dict:
    mk, us = tensors(mergekit_out), tensors(ours_out)
    same_keys = set(mk) == set(us)
    same_dtypes = same_keys and all(mk[k].dtype == us[k].dtype for k in mk)
    shared = [k for k in mk if k in us and mk[k].shape == us[k].shape]
    diff, worst_ulp, differing = 0.0, 0.0, 0
    for k in shared:
        a, b = mk[k].double(), us[k].double()
        gap = (a - b).abs()
        diff = max(diff, float(gap.max()) if gap.numel() else 0.0)
        scale = torch.maximum(a.abs().max(), b.abs().max()) if a.numel() else torch.tensor(0.0)
        units = gap / spacing(scale, mk[k].dtype)  # in ulp of the tensor's largest magnitude
        worst_ulp = max(worst_ulp, float(units.max()) if units.numel() else 0.0)
        differing += int((units > MAX_ULP).sum())
    written = [json.loads((folder / "config.json").read_text()) for folder in (mergekit_out, ours_out)]
    for fields in written:
        fields.pop("transformers_version", None)  # the writer's version, not the model's
    same_config = written[0] == written[1]
    files_mk = {p.name for p in mergekit_out.iterdir() if p.suffix != ".safetensors" and "index" not in p.name}
    files_us = {p.name for p in ours_out.iterdir() if p.suffix != ".safetensors" and "index" not in p.name}
    missing, extra = sorted(files_mk - files_us), sorted(files_us - files_mk - OUR_RECORDS)
    same_chat = chat_rendering(mergekit_out) == chat_rendering(ours_out)
    match = same_dtypes and same_config and same_chat and (random or worst_ulp <= MAX_ULP)
    status = ("structure matches (random masks: values not compared)" if random else "match") if match else "DIFFERENT"
    return {"config": config, "status": status, "same_config": same_config, "same_chat": same_chat,
            "max_abs_diff": diff, "max_ulp": worst_ulp, "elements_over": differing, "same_keys": same_keys,
            "same_dtypes": same_dtypes, "missing_files": missing, "extra_files": extra,
            "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in us.values()})}


def stable_mergekit(argv: list[str]) -> None:
    """mergekit-yaml ARGV with every torch.argsort stable (run by the mergekit venv's interpreter)."""
    argsort = torch.argsort
    torch.argsort = lambda *a, **k: argsort(*a, **{**k, "stable": True})
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    sys.argv = ["mergekit-yaml", *argv]
    mergekit_yaml()


TITLE = """# mergekit parity
Rebuilt by `bash scripts/parity_mergekit.sh`: each config of configs/parity/ through mergekit 0.1.5 and our CLI on
tiny Llama and Mistral pools (float32, bfloat16). A match differs by at most {max_ulp} ulp of the output dtype at
each tensor's largest magnitude, with the same tensor names, dtypes and config.json.
"""


def report(rows: list[dict]) -> str:
    header = (f"| config | result | max abs diff | max ulp | elements > {MAX_ULP} ulp | same keys | same dtypes | "
              "same config.json | same files |")
    lines = [TITLE.format(max_ulp=MAX_ULP), header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "same_keys" in r:
            problems = [r["missing_files"] and f"ours lacks {', '.join(r['missing_files'])}",
                        r["extra_files"] and f"ours adds {', '.join(r['extra_files'])}",
                        not r["same_chat"] and "the chat templates render differently"]
            files = "; ".join(filter(None, problems)) or "yes"
            status = r["status"] + (f" with mergekit under a stable sort (stock mergekit: {r['stock_elements_over']} "
                                    "elements differ, where magnitudes tie)" if "stock_elements_over" in r else "")
            lines.append(f"| {r['config']} | {status} ({', '.join(r['dtypes'])}) | {r['max_abs_diff']:.3g} | "
                         f"{r['max_ulp']:.3g} | {r['elements_over']} | {'yes' if r['same_keys'] else 'no'} | "
                         f"{'yes' if r['same_dtypes'] else 'no'} | {'yes' if r['same_config'] else 'no'} | {files} |")
        else:
            lines.append(f"| {r['config']} | {r['status']}: {r.get('message', '')} | | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stable-mergekit"]:
        stable_mergekit(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pool").add_argument("--out", type=Path, required=True)
    one = sub.add_parser("compare")
    one.add_argument("config")
    one.add_argument("mergekit_out", type=Path)
    one.add_argument("ours_out", type=Path)
    one.add_argument("--stable", type=Path, help="mergekit's output under a stable sort: the reference")
    one.add_argument("--random", action="store_true", help="a random method: compare all but the values")
    sub.add_parser("report").add_argument("rows", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pool":
        build_pool(args.out)
    elif args.command == "compare":
        row = compare(args.config, args.stable or args.mergekit_out, args.ours_out, args.random)
        if args.stable:
            row["stock_elements_over"] = compare(args.config, args.mergekit_out, args.ours_out)["elements_over"]
        print(json.dumps(row))
    else:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        print(report(rows))
        return int(any(r["status"] == "DIFFERENT" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

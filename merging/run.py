"""A merge run: config -> checks -> plan -> streaming engine -> an output folder that appears only when
complete, holding the weights, the base's config and tokenizer, the resolved config and ``merge_info.json``
(method, paper, code version, timing)."""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from .chat_template import check_chat_template, resolve_chat_template, write_chat_template
from .config import DTYPES, MergeConfig, check_parameters, count_layers, describe_errors, layer_position, resolve_value
from .engine import Engine, InMemoryWriter, Sources, TensorPlan
from .errors import MergeError
from .io.atomic import atomic_directory, check_target
from .io.checkpoint import Checkpoint, open_checkpoint, resolve_model_ref, same_architecture
from .io.safetensors_io import ShardedSafetensorsWriter, TensorInfo
from .methods.base import Method
from .model_card import merge_card
from .registry import MethodSpec, get_method, known_methods
from .slices import plan_slices
from .tokenizer_source import check_tokenizer_source, copy_tokenizer

SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json",
              "chat_template.jinja", "preprocessor_config.json", "sentencepiece.bpe.model")


def run_stamp(started: float) -> dict[str, Any]:
    """The provenance columns of a results row: seconds since ``started`` (perf_counter), this process's peak
    RSS, the code version and the UTC date."""
    import resource
    from datetime import datetime, timezone

    return {"seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "git_sha": git_sha()[:7], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


@functools.cache
def git_sha() -> str:
    """The commit of the code this process runs, read once: a checkout during a long run does not relabel its
    rows (a benchmark run pins it before its first merge)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def check_config_parameters(cfg: MergeConfig, method_cls: type[Method]) -> None:
    """Before any checkpoint is opened (a hub model downloaded): every parameter key is one of the method's,
    and every value it can take (each gradient point, each filter rule's value) passes the method's schema."""
    check_parameters(cfg.method, cfg.parameters, (method_cls.Params, method_cls.ModelParams), per_tensor=True)
    for index, piece in enumerate(cfg.slices or []):
        try:
            check_parameters(cfg.method, {**cfg.parameters, **piece.parameters},
                             (method_cls.Params, method_cls.ModelParams), per_tensor=True)
        except MergeError as err:
            raise MergeError(f"slices[{index}]: {err}") from None
    sources = [source for piece in cfg.slices or [] for source in piece.sources]
    for entry in [*cfg.models, *sources]:
        try:
            check_parameters(cfg.method, entry.parameters, (method_cls.ModelParams,), per_tensor=True)
        except MergeError as err:
            raise MergeError(f"model '{entry.model}': {err} (per-model parameters)") from None


def build_method(cfg: MergeConfig, method_cls: type[Method], name: str, position: float) -> Method:
    """The method instance for tensor ``name``, with every parameter resolved for it and validated."""
    model_keys = set(method_cls.ModelParams.model_fields)
    method_keys = {f.alias or k for k, f in method_cls.Params.model_fields.items()}
    unknown = set(cfg.parameters) - method_keys - model_keys
    if unknown:
        raise MergeError(f"method '{cfg.method}' has no parameter(s) {sorted(unknown)}; method parameters: "
                         f"{sorted(method_keys)}, per-model: {sorted(model_keys)}")
    resolve = lambda values: {k: resolve_value(v, name, position, k) for k, v in values.items()}
    top = resolve(cfg.parameters)
    try:
        params = method_cls.Params(**{k: v for k, v in top.items() if k in method_keys})
        per_model = []
        for entry in cfg.models:
            bad = set(entry.parameters) - model_keys
            if bad:
                raise MergeError(f"model '{entry.model}': method '{cfg.method}' has no per-model parameter(s) "
                                 f"{sorted(bad)}; per-model parameters: {sorted(model_keys)}")
            defaults = {k: v for k, v in top.items() if k in model_keys and k not in method_keys}
            per_model.append(method_cls.ModelParams(**{**defaults, **resolve(entry.parameters)}))
    except ValidationError as err:
        raise MergeError(f"method '{cfg.method}', tensor '{name}': {describe_errors(err)}") from None
    method = method_cls(params, per_model)
    try:
        method.check()
    except MergeError as err:
        raise MergeError(f"method '{cfg.method}', tensor '{name}': {err}") from None
    return method


def check_model_count(method: str, method_cls: type[Method], count: int, where: str = "") -> None:
    if count < method_cls.min_models or (method_cls.max_models and count > method_cls.max_models):
        wanted = (f"exactly {method_cls.min_models}" if method_cls.min_models == method_cls.max_models
                  else f"at least {method_cls.min_models}")
        raise MergeError(f"{where}method '{method}' needs {wanted} models, got {count}")


def plan_merge(cfg: MergeConfig, base: Checkpoint, models: list[Checkpoint],
               device: torch.device | None = None) -> list[TensorPlan]:
    """Check the pool against the base and decide, per tensor, merge-or-copy and the output dtype."""
    method_cls = get_method(cfg.method, "per_tensor").method_class
    for model in models:
        if reason := same_architecture(base, model):
            raise MergeError(f"different architectures: {reason}")
    if cfg.slices:
        for index, piece in enumerate(cfg.slices):
            check_model_count(cfg.method, method_cls, len(piece.sources), f"slices[{index}]: ")
        opened = {cfg.base: base, **{entry.model: model for entry, model in zip(cfg.models, models)}}

        def method_for(config: MergeConfig, name: str, t: float) -> Method | None:
            return build_method(config, method_cls, name, t) if config.merges(name) else None

        plans = plan_slices(cfg, opened, device or torch.device("cpu"), method_cls.uses_base, method_for)
        check_model_scope(plans)
        return plans
    check_model_count(cfg.method, method_cls, len(models))
    num_layers = count_layers(list(base.infos))
    plans = []
    for name, info in base.infos.items():
        out_dtype = DTYPES[cfg.out_dtype] if cfg.out_dtype and info.dtype.is_floating_point else info.dtype
        if not (info.dtype.is_floating_point and cfg.merges(name)):
            plans.append(TensorPlan(TensorInfo(name, info.shape, out_dtype), out_dtype, None))
            continue
        for model in models:
            other = model.infos.get(name)
            if other is None:
                raise MergeError(f"{model.path}: tensor '{name}' (present in the base {base.path}) is missing")
            if other.shape != info.shape:
                raise MergeError(f"{model.describe(name)} has shape {list(other.shape)}, but the base "
                                 f"{base.path} has {list(info.shape)}")
        method = build_method(cfg, method_cls, name, layer_position(name, num_layers))
        plans.append(TensorPlan(TensorInfo(name, info.shape, out_dtype), out_dtype, method))
    for model in models:
        extra = [n for n in model.infos if n not in base.infos and cfg.merges(n)]
        if extra:
            raise MergeError(f"{model.path}: tensor(s) {extra[:5]} are not in the base {base.path}; "
                             "exclude them (exclude: [regex]) or use a matching base")
    if not any(p.method for p in plans):
        raise MergeError(f"no tensor of {base.path} matches include={cfg.include} exclude={cfg.exclude}")
    check_model_scope(plans)
    return plans


def check_model_scope(plans: list[TensorPlan]) -> None:
    methods = [p.method for p in plans if p.method is not None]
    if any(m.scope == "model" for m in methods):
        first = methods[0]
        if any(m.params != first.params or m.model_params != first.model_params for m in methods):
            raise MergeError("scope: model needs the same parameters for every tensor "
                             "(no per-layer gradients or filters)")


def check_output_apart(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is an input model's folder, lies inside one or contains one: replacing
    it (``--overwrite``) or writing into it would destroy that input. ``inputs``: reference -> local path."""
    out = out.resolve()
    for ref, path in inputs.items():
        folder = path.resolve()
        folder = folder if folder.is_dir() else folder.parent
        if out == folder or folder in out.parents or out in folder.parents:
            relation = "is" if out == folder else "is inside" if folder in out.parents else "contains"
            raise MergeError(f"output '{out}' {relation} the folder of input '{ref}' ({folder}); choose an "
                             "output folder apart from every input")


def input_paths(refs: list[str], checkpoints: list[Checkpoint]) -> dict[str, Path]:
    """Each input's local path as given (when it exists) and as opened (a hub id's cache folder, …), and the
    real place of every file in those folders (a Hugging Face cache snapshot links its files into blobs/)."""
    paths = {ref: Path(ref).expanduser() for ref in refs if Path(ref).expanduser().exists()}
    paths.update({str(c.path): c.path for c in checkpoints})
    files = {f"{ref} ({file.name})": file.resolve() for ref, path in paths.items() if path.is_dir()
             for file in path.iterdir() if file.is_symlink()}
    return {**paths, **files}


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")  # config.json's layer count, by family


def output_config(base: Checkpoint, cfg: MergeConfig) -> dict[str, Any]:
    """The base's config.json with the output dtype and, for slices, the output's layer count; a config whose
    layer count cannot be set is refused before any work."""
    config = dict(base.config or {})
    if config and cfg.out_dtype:
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = cfg.out_dtype
    layers = sum(piece.length for piece in cfg.slices) if cfg.slices else None
    if config and layers is not None:
        key = next((k for k in LAYER_COUNT_KEYS if k in config), None)
        if key is None or "layer_types" in config and len(config["layer_types"]) != layers:
            what = "no layer count (" + ", ".join(LAYER_COUNT_KEYS) + ")" if key is None else "per-layer 'layer_types'"
            raise MergeError(f"{base.path / 'config.json'} has {what}; slices that give {layers} layers cannot "
                             "write a matching config")
        config[key] = layers
    return config


def copy_side_files(base: Checkpoint, folder: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """config.json (``output_config``), generation config and tokenizer files from the base folder."""
    source = base.path if base.path.is_dir() else base.path.parent
    if config.get("auto_map") and not trust_remote_code:
        raise MergeError(f"{source / 'config.json'} declares custom code (auto_map); pass --trust-remote-code "
                         "to copy its Python files into the output (no code is run by the merge either way)")
    if config:
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    names = list(SIDE_FILES) + ([p.name for p in source.glob("*.py")] if config.get("auto_map") else [])
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)


def run_merge(cfg: MergeConfig, out: str | Path, *, overwrite: bool = False, trust_remote_code: bool = False,
              progress: bool = True, workers: int = 2, source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge per ``cfg`` into ``out``; returns the run summary also written to ``merge_info.json``."""
    if cfg.data is not None or cfg.method in known_methods("data_driven"):
        if cfg.data is None:
            raise MergeError(f"method '{cfg.method}' reads data ({get_method(cfg.method).data}): give each model "
                             f"its 'task' and the tasks' files in a 'data:' section (docs/data-driven.md), or run "
                             f"it on a benchmark pool: python -m discriminative|vision|generative run --method "
                             f"{cfg.method}")
        from .data_merge import run_data_merge

        return run_data_merge(cfg, out, overwrite=overwrite, progress=progress, source_yaml=source_yaml)
    spec = get_method(cfg.method, "per_tensor", "adapter")
    out = check_target(out, overwrite)
    if spec.kind == "adapter":
        return run_adapter_merge(spec, cfg, out, overwrite=overwrite, progress=progress)
    check_config_parameters(cfg, spec.method_class)
    if cfg.chat_template is not None:
        check_chat_template(cfg.chat_template)
    device = compute_device(cfg)
    started = time.perf_counter()
    with opened_inputs(cfg) as (base, models):
        check_output_apart(out, input_paths([cfg.base, *(e.model for e in cfg.models)], [base, *models]))
        plans = plan_merge(cfg, base, models, device)
        config = output_config(base, cfg)
        donor = tokenizer_donor(cfg, base, models)
        with atomic_directory(out, overwrite=overwrite) as folder:
            writer = ShardedSafetensorsWriter(folder, [p.info for p in plans], cfg.shard_bytes,
                                              metadata={"merge_method": cfg.method})
            try:
                sources = Sources(base, models, DTYPES[cfg.dtype], device)
                Engine(sources, writer, cfg.chunk_size, cfg.seed, workers, progress).run(plans)
                writer.finish()
            finally:
                writer.close()
            copy_side_files(base, folder, config, trust_remote_code)
            if donor is not None:
                copy_tokenizer(donor, folder)
            template = cfg.chat_template and resolve_chat_template(cfg.chat_template,
                                                                   [folder_of(c) for c in [base, *models]])
            if template:
                write_chat_template(folder, template)
            info = {"method": cfg.method, "paper": spec.paper, "git_sha": git_sha(),
                    "torch": torch.__version__, "device": str(device),
                    "tensors_merged": sum(p.method is not None for p in plans),
                    "tensors_copied": sum(p.method is None for p in plans),
                    "seconds": round(time.perf_counter() - started, 3)}
            config_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
            (folder / "merge_config.yaml").write_text(config_yaml)
            if source_yaml is not None and cfg.origin == "mergekit":
                shutil.copy2(source_yaml, folder / "mergekit_config.yml")
                config_yaml = Path(source_yaml).read_text()
            (folder / "README.md").write_text(merge_card(
                cfg.method, spec.paper, cfg.base, [(e.model, e.parameters) for e in cfg.models],
                loader_of(base.config), config_yaml, cfg.origin == "mergekit"))
            (folder / "merge_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def folder_of(checkpoint: Checkpoint) -> Path:
    return checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent


def tokenizer_donor(cfg: MergeConfig, base: Checkpoint, models: list[Checkpoint]) -> Path | None:
    """The folder whose tokenizer replaces the base's (``tokenizer_source`` a model), after checking that the
    source needs no embedding re-map; None: the base's tokenizer stays."""
    if cfg.tokenizer_source in (None, "base"):
        return None
    donor = None if cfg.tokenizer_source == "union" else resolve_model_ref(cfg.tokenizer_source)
    check_tokenizer_source(cfg.tokenizer_source, folder_of(base), [folder_of(m) for m in models], donor,
                           base.config)
    return donor


def loader_of(config: dict[str, Any] | None) -> str:
    """The transformers Auto class that loads a model of this config.json (its first architecture's kind)."""
    architecture = ((config or {}).get("architectures") or [""])[0]
    for suffix in ("ForCausalLM", "ForSequenceClassification", "ForImageClassification", "ForMaskedLM"):
        if architecture.endswith(suffix):
            return f"AutoModel{suffix}"
    return "AutoModel"


def compute_device(cfg: MergeConfig) -> torch.device:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"device '{cfg.device}' requested but torch.cuda.is_available() is False")
    return device


@contextlib.contextmanager
def opened_inputs(cfg: MergeConfig) -> Iterator[tuple[Checkpoint, list[Checkpoint]]]:
    """The base and the models of ``cfg``, open (headers read, each checked against the base), closed after."""
    base = open_checkpoint(cfg.base)
    models: list[Checkpoint] = []
    try:
        models.extend(open_checkpoint(entry.model, base=base, base_ref=cfg.base,
                                      allow_other_base=cfg.allow_adapter_base_mismatch) for entry in cfg.models)
        yield base, models
    finally:
        for ckpt in [base, *models]:
            ckpt.close()


def merge_tensors(cfg: MergeConfig, workers: int = 2) -> dict[str, torch.Tensor]:
    """The merge of ``cfg`` held in memory, every tensor of the output (merged or copied from the base) by name:
    the checks, plan and engine of ``run_merge`` without an output folder (a benchmark's grid points, whose body
    is scored at once). Per-tensor methods only."""
    spec = get_method(cfg.method, "per_tensor")
    check_config_parameters(cfg, spec.method_class)
    device = compute_device(cfg)
    with opened_inputs(cfg) as (base, models):
        plans = plan_merge(cfg, base, models, device)
        writer = InMemoryWriter([plan.info for plan in plans])
        Engine(Sources(base, models, DTYPES[cfg.dtype], device), writer, cfg.chunk_size, cfg.seed, workers,
               progress=False).run(plans)
        return writer.tensors()


ADAPTER_MERGE_KEYS = {"method", "base", "models", "parameters", "seed", "out_dtype", "allow_adapter_base_mismatch",
                      "origin"}  # what an adapter method's run uses of a MergeConfig


def run_adapter_merge(spec: MethodSpec, cfg: MergeConfig, out: str | Path, *, overwrite: bool,
                      progress: bool) -> dict[str, Any]:
    """LoRA adapters in, one LoRA adapter out (``models`` are adapter folders; no per-model parameters): a peft
    folder with ``merge_info.json`` (the method's summary), the first adapter's config as the template."""
    from .io.checkpoint import LoraCheckpoint, resolve_model_ref
    from .io.lora import read_lora_adapter, write_lora_adapter

    unused = sorted(cfg.model_fields_set - ADAPTER_MERGE_KEYS)
    if unused:
        raise MergeError(f"method '{cfg.method}' merges LoRA adapters and does not use {unused}; its config "
                         f"takes only {sorted(ADAPTER_MERGE_KEYS - {'origin'})}")
    with_params = [e.model for e in cfg.models if e.parameters]
    if with_params:
        raise MergeError(f"method '{cfg.method}' takes no per-model parameters (given for {with_params})")
    try:
        params = spec.Params(**cfg.parameters)
    except ValidationError as err:
        raise MergeError(f"method '{cfg.method}': {describe_errors(err)}") from None
    started = time.perf_counter()
    paths = [resolve_model_ref(e.model) for e in cfg.models]
    base = open_checkpoint(cfg.base)
    try:
        for path in paths:  # each adapter must fit the base it claims to adapt
            LoraCheckpoint(path, base, cfg.base, cfg.allow_adapter_base_mismatch)
        check_output_apart(Path(out), input_paths([cfg.base, *(e.model for e in cfg.models)], [base]) | {
            str(p): p for p in paths})
    finally:
        base.close()
    adapters = [read_lora_adapter(path) for path in paths]
    merged = spec.implementation(adapters, params, seed=cfg.seed, progress=progress)
    summary = {"method": cfg.method, "paper": spec.paper, "adapters": [str(p) for p in paths], **merged.summary,
               "git_sha": git_sha(), "torch": torch.__version__, "config": cfg.model_dump()}
    with atomic_directory(out, overwrite=overwrite) as folder:
        write_lora_adapter(folder, merged.factors, merged.rank, merged.alpha, adapters[0].config,
                           DTYPES[cfg.out_dtype or "float32"])
        summary["seconds"] = round(time.perf_counter() - started, 3)
        (folder / "merge_info.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

"""FW-Merging, the "soft" Frank-Wolfe variant (Chen et al., "FW-Merging: Scaling Model Merging with
Frank-Wolfe Optimization", ICCV 2025, arXiv 2503.12649; FW Soft): every iteration selects, per target task,
one distinct checkpoint by the cosine oracle of the hard variant (merging/methods/frank_wolfe.py), then
learns layer-wise AdaMerging coefficients (merging/methods/adamerging.py) that mix the selected checkpoints
into the current iterate. Domain-agnostic: any ``Objective`` (merging/objective.py), a streamed pool.

θ = the mergeable tensors (tensor l = "layer" l), T = ``objective.tasks`` = (t_1 … t_m), pool {θ_j}_{j∈J}.
θ_0 = θ_base (``init: base``, official). Iteration k = 0 … K−1 (``iterations`` = K):

  1. per-task gradients (that task's labelled proxy loss only, all at the same θ_k):
         g_t = ∇_θ f_t(θ_k),   f_t(θ) = (1/N_t) Σ_{x ∈ proxy_t} ℓ_t(θ; x)
  2. cosine oracle on the checkpoints' FULL weights (not task vectors), per layer:
         c_tjl = ⟨g_t,l, θ_j,l⟩ / (‖g_t,l‖·‖θ_j,l‖)        (0 where a norm is 0)
     or, with ``oracle: linear``, the textbook LMO (Jaggi 2013):  c_tjl = ⟨g_t,l, θ_j,l⟩, which ranks the
     checkpoints as ⟨g_t,l, θ_j,l − θ_k,l⟩ and ⟨g_t,l, τ_j,l⟩ do (the θ_k and θ_base terms do not depend on j);
     the cosine divides by ‖θ_j,l‖ ≈ ‖θ_base,l‖, whose small differences across j can outweigh ⟨g_t,l, τ_j,l⟩
     ``granularity: model`` (official default "task"):  score_tj = Σ_l c_tjl,  one checkpoint s_t per task
     ``granularity: layer``:                            score_tjl = c_tjl,    s_t,l chosen per layer
  3. distinct selections, greedily in task order:
         s_t = argmin_{j ∉ {s_t' : t' before t}} score_tj      (per layer l for ``layer``)
     ties go to the first candidate in pool order; when the pool has fewer candidates than T, only the first
     |J| tasks select (the official loop breaks once every checkpoint is taken).
  4. layer-wise AdaMerging around θ_k with the selected checkpoints' task vectors RELATIVE TO θ_k:
         θ(λ)_l = θ_k,l + Σ_t λ_t,l (θ_{s_t},l − θ_k,l)            λ ∈ R^{m×L}
         λ^(0) = 0.3 at k = 0 (``ada_init``), ``ada_coeff`` at k ≥ 1 (official default 1e-8)
         ``ada_steps`` Adam steps (lr ``ada_lr`` = 1e-3) on  H(λ) = Σ_t mean_x H(softmax(f_t(x; θ(λ)))),
         one unlabelled batch per task and step;   θ_{k+1} = θ(λ^(final)).
     There is no step-size schedule: the step is whatever AdaMerging learns (the 2/(k+2) schedule of the
     official code belongs to its non-AdaMerging ``merge_fn``, not offered here).

Options beyond the paper (a Frank-Wolfe method with feasible, descending iterates; the defaults are the official):
  ``ada_simplex: true``   λ_·,l projected onto {λ ≥ 0, Σ_t λ_t,l ≤ 1} from λ^(0) on and after every Adam step,
                          so θ_{k+1},l = (1 − Σ_t λ_t,l) θ_k,l + Σ_t λ_t,l θ_{s_t},l is a convex combination and
                          every iterate lies, layer by layer, in conv({θ_base} ∪ pool) (official: unclamped; on the
                          vision pool v2 λ reaches −0.9 … 1.0 and a layer's Σ_t λ_t,l −3.6 … 3.3);
  ``monotone: true``      θ_{k+1} = θ_k + β (θ(λ) − θ_k) with β the first of 1, ½, …, 2^−``backtracks`` for which
                          f(θ_{k+1}) ≤ f(θ_k), f the fixed proxy split's loss in eval mode; β = 0 if none: f never
                          rises (recorded: proxy_before, proxy_after, step_scale). β ∈ [0, 1] keeps a point of the
                          hull in the hull.
  ``init: merge``        θ_0 = M(θ_base, {θ_j}; π), a registered per-tensor merge M (``init_merge``, e.g. iso_c) of
                          the whole pool with parameters ``init_merge_params`` and, for the keys of
                          ``init_merge_search``, the grid point of least proxy loss:  π* = argmin_π f(M(·; π)),
                          f the fixed proxy split's loss (the data FW reads anyway; recorded as ``init``). With
                          ``ada_simplex`` the iterates then lie in conv({θ_0} ∪ vertices); only the start holds
                          the pool's n tensors of one layer at once (merge_in_memory), the iterations as before. A
                          grid over the parameter the merge is affine in (``Method.affine_in``, ISO-C's λ)
                          costs two merges, not one per point (``start_merges``).
  ``vertex_scale: c``     the picks enter the inner step as the vertices θ_base + c·τ_j (Jaggi's scaled atoms; the
                          FW hard ``scaled_vertices`` idea), so the hull conv({θ_base} ∪ {θ_base + c·τ_j}) holds
                          task arithmetic with Σ_t λ_t ≤ c; ``tasks`` sets c = m, the number of selecting tasks,
                          so that at k = 0 it holds every merge θ_base + Σ_t a_t τ_{s_t} with a ∈ [0, 1]^m, the
                          range of clamped AdaMerging. Needs ``oracle: linear`` (which ranks θ_base + c·τ_j as θ_j).

Options for the settings of the paper's figures (the authors' research branch, hmarkc/fusion_bench master;
``configs/methods/frank_wolfe_soft.yaml`` names them as presets with their source files); the defaults keep the
behaviour above:
  ``inner_loss: cross_entropy``  step 4 minimises the labelled loss on ``ada_batch_size`` training examples per
                                 task, drawn afresh every step (fw_soft.py there: ``entropy_loss = False``);
  ``proxy: fresh``               step 1 uses ``proxy_examples`` training examples per task drawn afresh at every
                                 iteration (``objective.sample``, seeded by ``seed``, k and the task) instead of
                                 the fixed proxy split;
  ``gradient_mode: train``       step 1 runs the task models in train mode (seeded dropout), as the official
                                 oracle does (BatchNorm normalising by batch statistics); they are back in
                                 eval mode afterwards with the running statistics they had (train-mode BatchNorm
                                 updates them in place; before 2026-12-06 that drift reached the inner loop).

Recorded per iteration: f(θ_k) = Σ_t f_t(θ_k) and its terms, ‖g_t‖, the selections and their scores, λ^(0),
the AdaMerging trace (``entropy``, the labelled loss when ``inner_loss`` is cross_entropy, named in
``inner_loss``; ``entropy_before`` at λ^(0), ``entropy_after`` at the final λ),
the final λ by tensor name, and the tasks AdaMerging skipped (regression: no predictive distribution).

Data-parallel under ``accelerate launch`` (merging/distributed.py): the per-task gradients g_t shard the proxy
batches (``proxy_objective``) and AdaMerging shards each entropy batch's rows; both all-reduce their sums.

Memory does not grow with the pool: the oracle streams the pool once per iteration, ONE candidate tensor at
a time (``stream_inner_products``, shared with the hard variant), against the m gradients held together;
only the m selected checkpoints are read whole, for the AdaMerging step, and dropped after it.

Official code read (FW Soft lives in the authors' FusionBench fork, as hmarkc/FW-Merging README.md says):
tanganke/fusion_bench fusion_bench/method/fw_merging/fw_soft.py (``FrankWolfeSoftAlgorithm``),
config/method/fw_merging/fw_soft.yaml (defaults: max_iters 10, ada_iters 500, ada_coeff 1e-8, granularity
task, merge_fn adamerging, ada_loss entropy_loss); hmarkc/fusion_bench fusion_bench/method/fw_merging/
fw_soft.py, fw_adamerging.py, config/method/fw_merging/adamerging.yaml, eval_scripts/fw4_adamerging.sh (sweeps
ada_coeff over {0.3, 0, 1e-8, 1e-4, 1e-2, 0.1}; runs with 1e-2 and 1e-8); tanganke/fusion_bench
fusion_bench/models/wrappers/layer_wise_fusion.py (``LayerWiseMergedModel``: task vectors are taken against
the model passed as "pretrained", here θ_k; ``clamp_weights=False``); hmarkc/FW-Merging discriminative/
merge.py (hard variant only).

λ is left unclamped, as in the official code (adamerging.py with ``clamp: false``). Deviations: (1) by default
g_t is the gradient of the task's mean loss over its whole proxy split in eval mode (official: cross-entropy
summed over ``dataset_size`` = 100 random single training examples, scaled by 1/(dataset_size·n_models), in train
mode; the cosine is scale-free; ``proxy: fresh`` and ``gradient_mode: train`` give the official sample and mode);
(2) the entropy batches are the objective's unlabelled batches, cycled in order (official: shuffled test loader,
batch 16; the benchmarks' test splits are shuffled when built, discriminative/data.py and vision/data.py, so the
cycle sees every class within a few batches; ``ada_entropy_batches: shuffled`` gives batches of
``ada_batch_size`` rows in a fresh order every pass, adamerging.py's pieces; on the vision pool v2 it moves the
irrelevance drop by 0.9 points, docs/results/vision.md) and H uses log-softmax (official
adds eps 1e-8 inside the log); (3) θ_0 is θ_base or a data-free merge (official ``init_weight`` may load saved
layer-wise λ) and there is no ``max_num_models``: the caller passes the pool; (4) the oracle streams the pool once per
iteration for all tasks (official: one pass per task, checkpoints in memory) and a zero norm gives cosine 0
(official: NaN); (5) candidate names "initial", "zero", "keep" are refused (pool check shared with the hard
variant).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .. import distributed
from ..errors import MergeError
from ..io.candidates import TensorSource, as_source
from ..objective import Objective, seed_of
from ..registry import get_method, register_data_driven
from ..tensor_ops import scaled_vertex
from .adamerging import AdaMergingHistory, AdaMergingParams, adamerging
from .base import DataDrivenInputs, DataDrivenResult, Method, Params, per_tensor_method, scale_names
from .frank_wolfe import (
    PAPER,
    OneTask,
    _check_pool,
    cosine_scores,
    frank_wolfe_log,
    merge_over,
    proxy_objective,
    stream_inner_products,
)

logger = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


class FrankWolfeSoftParams(Params):
    iterations: int = Field(10, ge=1)  # official max_iters
    granularity: Literal["model", "layer"] = "model"  # official "task" = one checkpoint for the whole model
    oracle: Literal["cosine", "linear"] = "cosine"  # official cosine on full weights, or ⟨g_t, θ_j⟩
    ada_steps: int = Field(500, ge=0)  # official ada_iters: Adam steps per AdaMerging phase
    ada_init: float = Field(0.3, ge=0.0, le=1.0)  # λ^(0) at the first iteration (official: hard-coded 0.3)
    ada_coeff: float = Field(1e-8, ge=0.0, le=1.0)  # λ^(0) at every later iteration (official ada_coeff)
    ada_lr: float = Field(1e-3, gt=0.0)  # Adam learning rate (official: hard-coded 1e-3)
    inner_loss: Literal["entropy", "cross_entropy"] = "entropy"  # AdaMerging's objective (see below)
    ada_batch_size: int = Field(16, gt=0)  # examples per task and step (cross_entropy; shuffled entropy batches)
    ada_entropy_batches: Literal["cycled", "shuffled"] = "cycled"  # adamerging.py's entropy_batches
    proxy: Literal["fixed", "fresh"] = "fixed"  # the oracle's data: the proxy split, or fresh train draws
    proxy_examples: int = Field(100, gt=0)  # examples per task and iteration (proxy: fresh)
    gradient_mode: Literal["eval", "train"] = "eval"  # task models' mode while g_t is computed (dropout …)
    ada_simplex: bool = False  # inner λ kept in {λ ≥ 0, Σ_t λ_t,l ≤ 1}: iterates stay in the pool's hull
    monotone: bool = False  # backtrack θ_{k+1} towards θ_k until the proxy objective does not rise
    backtracks: int = Field(4, ge=0)  # halvings of the step tried (monotone) before staying at θ_k
    vertex_scale: float | Literal["tasks"] = 1.0  # c: the inner step mixes vertices θ_base + c·τ_j ("tasks": c = m)
    init: Literal["base", "merge"] = "base"  # θ_0: θ_base (official), or init_merge of the whole pool
    init_merge: str | None = None  # init: merge's registered per-tensor method, e.g. iso_c
    init_merge_params: dict[str, Any] = Field(default_factory=dict)  # its fixed parameters
    init_merge_search: dict[str, list[Any]] = Field(default_factory=dict)  # its grid: θ_0 = the point of least f
    seed: int = 0  # fresh draws and train-mode dropout

    @model_validator(mode="after")
    def _check_vertices(self) -> FrankWolfeSoftParams:
        if isinstance(self.vertex_scale, float) and self.vertex_scale <= 0:
            raise ValueError(f"vertex_scale must be > 0 or 'tasks', got {self.vertex_scale}")
        if self.vertex_scale != 1.0 and self.oracle != "linear":
            raise ValueError("vertex_scale other than 1 needs oracle: linear (which ranks θ_base + c·τ_j as it "
                             "ranks θ_j; the cosine of a scaled vertex is not what the official oracle computes)")
        if (self.init == "merge") != (self.init_merge is not None):
            raise ValueError("init: merge needs init_merge (a registered per-tensor method, e.g. iso_c), and "
                             "init_merge is read by init: merge only")
        if (self.init_merge_params or self.init_merge_search) and self.init != "merge":
            raise ValueError("init_merge_params and init_merge_search are read by init: merge only")
        empty = [key for key, values in self.init_merge_search.items() if not values]
        if empty:
            raise ValueError(f"init_merge_search: {empty} list no values")
        for point in self.start_grid():  # every start's parameters, checked now
            self.start_method(point, 1)
        return self

    def start_grid(self) -> list[dict[str, Any]]:
        """The points of ``init_merge_search`` (one empty point when it is empty; none when init is base)."""
        if self.init != "merge":
            return []
        keys = list(self.init_merge_search)
        return [dict(zip(keys, values)) for values in itertools.product(*self.init_merge_search.values())]

    def start_method(self, point: dict[str, Any], n_models: int) -> Method:
        """``init_merge`` with ``init_merge_params`` and the grid ``point`` for ``n_models`` models."""
        return per_tensor_method(self.init_merge or "", {**self.init_merge_params, **point}, n_models,
                                 "init_merge_params")


@dataclass
class FrankWolfeSoftResult:
    theta: Tensors                 # the final merge θ_K, float32, by name
    history: list[dict[str, Any]]  # per iteration k: objective, selections, entropy before/after …
    final_objective: float         # f(θ_K) = Σ_t f_t(θ_K)
    params: FrankWolfeSoftParams
    init_log: dict[str, Any] | None = None  # init: merge's grid, each point's proxy loss, the point taken


@contextlib.contextmanager
def _gradient_mode(objective: Objective, task: str, mode: str, seed: tuple[Any, ...]) -> Iterator[None]:
    """The task model in train mode (dropout active, seeded; BatchNorm normalises by batch statistics) for
    ``train``, back in eval mode afterwards with its buffers as they were: train-mode BatchNorm also updates its
    running statistics in place, and the objective's later forward passes (the inner AdaMerging, the proxy
    loss) must keep the statistics the evaluation uses. Nothing changes for ``eval``."""
    if mode == "eval":
        yield
        return
    model = objective.model(task)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed))
        model.train()
        try:
            yield
        finally:
            model.eval()
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])


def greedy_distinct(score: torch.Tensor) -> list[int]:
    """Row by row, the column of the smallest score not taken by an earlier row (first one on ties).
    score: [m, J], m ≤ J -> m distinct column indices."""
    taken: list[int] = []
    for row in score:  # [J]
        masked = row.clone()
        masked[taken] = math.inf
        taken.append(int(masked.argmin()))
    return taken


def _select(p: FrankWolfeSoftParams, names: list[str], labels: list[str], cos: torch.Tensor
            ) -> tuple[list[Any], list[float]]:
    """Per selecting task: a candidate label (``model``) or {tensor name: label} (``layer``), and its score
    Σ_l c_tjl. cos: [m, J, L], the oracle's per-layer scores c_tjl (cosine or linear)."""
    if p.granularity == "model":
        score = cos.sum(-1)  # [m, J]
        picks = greedy_distinct(score)
        return [labels[j] for j in picks], [float(score[t, j]) for t, j in enumerate(picks)]
    per_layer = [greedy_distinct(cos[:, :, layer]) for layer in range(len(names))]  # L × [m]
    choices = [{n: labels[per_layer[layer][t]] for layer, n in enumerate(names)} for t in range(cos.shape[0])]
    scores = [sum(float(cos[t, per_layer[layer][t], layer]) for layer in range(len(names)))
              for t in range(cos.shape[0])]
    return choices, scores


def _adamerging_around(objective: Objective, theta: Tensors, selected: list[Tensors], init: float,
                       p: FrankWolfeSoftParams, seed: int) -> tuple[Tensors, AdaMergingHistory]:
    """θ(λ) = θ_k + Σ_t λ_t,l (θ_{s_t} − θ_k) learned by adamerging.py with θ_k as its "base" (its task
    vectors are then relative to θ_k, as the official LayerWiseMergedModel(pretrained_model=θ_k))."""
    params = AdaMergingParams(granularity="layer", init=init, lr=p.ada_lr, steps=p.ada_steps, clamp=False,
                              simplex=p.ada_simplex, loss=p.inner_loss, batch_size=p.ada_batch_size,
                              entropy_batches=p.ada_entropy_batches, seed=seed)
    return adamerging(objective, theta, selected, params)


def _vertices(names: list[str], picks: list[Any], pool: Mapping[str, TensorSource], base: TensorSource,
              scale: float) -> list[Tensors]:
    """The picks as the inner step's vertices θ_base + c·(θ_j − θ_base) (θ_j at c = 1), tensor by tensor: each
    pick's tensor read once, θ_base's once per tensor (only when c ≠ 1). A pick is a label (``model``
    granularity) or {tensor name: label} (``layer``)."""
    selected: list[Tensors] = [{} for _ in picks]
    for name in names:
        b = base.read(name).to(torch.float32) if scale != 1 else None
        for vertex, pick in zip(selected, picks):
            tensor = pool[pick if isinstance(pick, str) else pick[name]].read(name).to(torch.float32)
            vertex[name] = tensor if b is None else scaled_vertex(b, tensor, scale)
    return selected


def backtrack(objective: Objective, theta: Tensors, proposal: Tensors, reference: float, halvings: int
              ) -> tuple[Tensors, float, float]:
    """θ_k + β (θ(λ) − θ_k) for the first β in 1, ½, …, 2^−halvings with f(·) ≤ ``reference`` = f(θ_k) on the
    fixed proxy split, else θ_k itself (β = 0). Returns the point, β and its f."""
    for index in range(halvings + 1):
        beta = 0.5 ** index
        point = {n: theta[n] + beta * (proposal[n] - theta[n]) for n in theta}
        value = proxy_objective(objective, point, grad=False)[0]
        if value <= reference:
            return point, beta, value
    return theta, 0.0, reference


def start_merges(p: FrankWolfeSoftParams, names: list[str], base: TensorSource,
                 pool: Mapping[str, TensorSource]) -> Iterator[tuple[dict[str, Any], Tensors]]:
    """Each point π of ``init_merge_search`` with its merge θ(π). Where the grid varies the parameter s in which
    ``init_merge`` is affine (``Method.affine_in``, e.g. ISO-C's λ), each setting of the other keys shares two
    merges at the first two values a ≠ b of s, θ(s) = θ(a) + (s − a)/(b − a)·(θ(b) − θ(a)), exact for such a merge
    up to rounding: a grid of ten λ costs two passes over the pool (ISO-C: two SVDs per matrix), not ten.
    Resident: those two merges and the point yielded."""
    def merge(point: dict[str, Any]) -> Tensors:
        return merge_over(p.start_method(point, len(pool)), names, base, pool, p.seed)

    grid = p.init_merge_search
    s = next((key for key in scale_names(get_method(p.init_merge or "").method_class) if key in grid), None)
    values = list(dict.fromkeys(grid[s])) if s else []
    if len(values) < 2:
        yield from ((point, merge(point)) for point in p.start_grid())
        return
    others = {key: choices for key, choices in grid.items() if key != s}
    for rest in (dict(zip(others, combo)) for combo in itertools.product(*others.values())):
        (a, at_a), (b, at_b) = ((v, merge({**rest, s: v})) for v in values[:2])
        for n in names:
            at_b[n].sub_(at_a[n]).div_(b - a)  # θ(b) − θ(a) per unit of s
        for v in grid[s]:
            yield {**rest, s: v}, {n: at_a[n] + (v - a) * at_b[n] for n in names}


def initial_point(p: FrankWolfeSoftParams, objective: Objective, names: list[str], base: TensorSource,
                  pool: Mapping[str, TensorSource]) -> tuple[Tensors, dict[str, Any] | None]:
    """θ_0 and, for ``init: merge``, its record: every grid point with its proxy loss f and the one taken."""
    if p.init == "base":
        return {n: base.read(n).to(torch.float32) for n in names}, None
    best: tuple[float, Tensors, dict[str, Any]] | None = None
    tried = []
    for point, theta in start_merges(p, names, base, pool):
        value = proxy_objective(objective, theta, grad=False)[0]
        tried.append({**point, "proxy": value})
        logger.info("FW-soft start %s %s: f=%.6g", p.init_merge, point, value)
        if best is None or value < best[0]:
            best = (value, theta, point)
        del theta
    assert best is not None  # start_grid has at least one point
    return best[1], {"method": p.init_merge, "params": {**p.init_merge_params, **best[2]}, "proxy": best[0],
                     "tried": tried}


def frank_wolfe_soft_merge(objective: Objective, base: TensorSource | Mapping[str, torch.Tensor],
                           candidates: Mapping[str, TensorSource | Mapping[str, torch.Tensor]],
                           params: FrankWolfeSoftParams | Mapping[str, Any] | None = None, *,
                           progress: bool = False) -> FrankWolfeSoftResult:
    """Merge ``candidates`` (name -> source) by soft Frank-Wolfe on ``objective``: cosine selection of one
    distinct checkpoint per task, then layer-wise AdaMerging around the iterate (module docstring)."""
    p = params if isinstance(params, FrankWolfeSoftParams) else FrankWolfeSoftParams(**dict(params or {}))
    base_src = as_source(base, "base")
    names = list(base_src.names)
    pool = {label: as_source(src, f"candidate '{label}'") for label, src in candidates.items()}
    _check_pool(names, base_src, pool)
    tasks, labels = list(objective.tasks), list(pool)
    if not tasks:
        raise MergeError("the objective has no target tasks")
    m = min(len(tasks), len(labels))  # tasks that select (the official loop stops once every checkpoint is taken)
    theta, start = initial_point(p, objective, names, base_src, pool)  # θ_0
    scale = float(m if p.vertex_scale == "tasks" else p.vertex_scale)
    history: list[dict[str, Any]] = []
    step: dict[str, Any] = {}  # the last backtracking step (monotone): f(θ_k) is its proxy_after
    for k in range(p.iterations):
        values, grads = {}, []
        for index, task in enumerate(tasks):
            draw = (p.seed, "proxy", k, task) if p.proxy == "fresh" else None
            with _gradient_mode(objective, task, p.gradient_mode, (p.seed, "dropout", k, task)):
                values[task], grad = proxy_objective(OneTask(objective, task, draw, p.proxy_examples), theta,
                                                     grad=index < m)
            if grad is not None:
                grads.append(grad)
        grad_norms = [math.sqrt(sum(float(g.double().square().sum()) for g in grad.values())) for grad in grads]
        ip, norm, _ = stream_inner_products(names, grads, pool)  # [m, J, L], [J, L]
        g_norm = torch.tensor([[float(g[n].double().norm()) for n in names] for g in grads],
                              dtype=torch.float64)  # [m, L]
        del grads
        per_layer = cosine_scores(ip, norm, g_norm) if p.oracle == "cosine" else ip  # [m, J, L]
        picks, scores = _select(p, names, labels, per_layer)
        selected = _vertices(names, picks, pool, base_src, scale)  # m × {name: [*shape]}: the only resident ones
        init = p.ada_init if k == 0 else p.ada_coeff
        merged, ada = _adamerging_around(objective, theta, selected, init, p, seed_of((p.seed, "inner", k)))
        del selected
        if p.monotone:  # f on the fixed proxy in eval mode, whatever ``proxy`` and ``gradient_mode`` say
            reference = (step["proxy_after"] if step else start["proxy"] if start  # f(θ_0): the start measured it
                         else proxy_objective(objective, theta, grad=False)[0])
            merged, beta, after = backtrack(objective, theta, merged, reference, p.backtracks)
            step = {"proxy_before": reference, "proxy_after": after, "step_scale": beta}
        theta = {n: merged[n] for n in names}  # θ_{k+1}
        history.append({**step,
            "iteration": k, "objective": sum(values.values()), "task_objectives": values,
            "grad_norms": dict(zip(tasks, grad_norms)),
            "selections": {t: (picks[i] if i < m else None) for i, t in enumerate(tasks)},
            "scores": dict(zip(tasks, scores)), "ada_init": init, "inner_loss": ada.loss, "entropy": ada.entropy,
            "entropy_before": ada.entropy[0], "entropy_after": ada.entropy[-1],
            "lambdas": {n: ada.lambdas[:, i].tolist() for i, n in enumerate(ada.names)}, "skipped": ada.skipped})
        if progress and distributed.is_main():
            logger.info("FW-soft %d/%d: f=%.6g H %.4g->%.4g %s", k + 1, p.iterations, history[-1]["objective"],
                        ada.entropy[0], ada.entropy[-1], history[-1]["selections"])
    final = proxy_objective(objective, theta, grad=False)[0]
    return FrankWolfeSoftResult(theta=theta, history=history, final_objective=final, params=p, init_log=start)


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    result = frank_wolfe_soft_merge(inputs.objective, inputs.base, inputs.candidates, inputs.params,
                                    progress=inputs.progress)
    init = {"init": result.init_log} if result.init_log else {}
    return result.theta, {**frank_wolfe_log(result.history, result.final_objective), **init}


register_data_driven("frank_wolfe_soft", PAPER, FrankWolfeSoftParams, _merge,
                     data="proxy: labelled examples of every target task (oracle); inner AdaMerging: labelled "
                          "training batches (inner_loss cross_entropy) or unlabelled test inputs (entropy)")

"""FW-Merging, the "hard" Frank-Wolfe variant (Chen et al., "FW-Merging: Scaling Model Merging with
Frank-Wolfe Optimization", ICCV 2025, arXiv 2503.12649; hard FW with a layer- or task-wise LMO), over any
``Objective`` (merging/objective.py) and a pool of candidate checkpoints streamed tensor by tensor.

Problem. θ = the mergeable tensors (one tensor = one "layer" l), T = ``objective.tasks``:

    min_θ f(θ) = Σ_{t∈T} (1/N_t) Σ_{x ∈ proxy_t} ℓ_t(θ; x)     s.t.  θ ∈ conv(V)

V = the candidates' full weights θ_i (``vertices: full``, as the official code), the initial merge θ_0 when
``init_as_vertex`` (the official code appends it as "initial"), and with ``zero_vertex`` the zero vertex:
the all-zero tensor for ``full``, the base θ_base (the zero task vector, "do nothing") for ``task_vector``.
With ``vertices: task_vector`` the same checkpoints are scored through τ_i = θ_i − θ_base (the official
LoRA code, where checkpoints *are* task vectors), so conv(V) = θ_base + conv{0, c·τ_i, τ_0}, c = ``vertex_scale``
(default 1; c > 1 lets the hull hold task-arithmetic merges θ_base + λ Σ_i τ_i with n·λ ≤ c, while a step can
still move a layer only by a fraction of one scaled task vector; the initial merge θ_0 stays a vertex as it is).
LoRA adapters enter as tensor sources of merging/lora_merge.py: their factors A_i, B_i (the official code)
or their updates ΔW_i, with an all-zero base.

Iteration k = 0 … K−1 (``iterations`` = K):

    g = ∇f(θ_k)                                               backprop through ``objective.logits``
    score_il = ⟨g_l, u_il⟩ / (‖g_l‖·‖u_il‖)   (``oracle: cosine``, official; 0 when a norm is 0)
             = ⟨g_l, u_il⟩                    (``oracle: linear``, the textbook LMO)
               u_il = θ_il (full) or θ_il − θ_base,l (task_vector)
    LMO  i*_l = argmin_i score_il  per layer (``granularity: layer``)
         i*   = argmin_i Σ_l score_il for the whole model (``model``; the official sums layer cosines)
         the zero vertex (score 0) is taken instead unless min score < 0 (official rule); a layer whose
         gradient is exactly 0 is kept as it is ("keep")
    ``selection: per_task`` (FW soft's idea, one vertex per task, with this LMO): per task t the LMO above
         on ∇f_t alone gives s_t,l, and the step goes towards their mean: D_l = (1/m) Σ_t (s_t,l − θ_l) (MF
         per task, then averaged); a target's own checkpoint wins its task's oracle where a checkpoint good
         for the sum of the tasks (another task's) would win the joint one. Feasible with merge
         task_arithmetic and γ_max ≤ 1 (the mean of vertices is in conv(V)); not a descent direction by
         construction (the tasks' compromise can stall short of the minimiser), so it needs a line search,
         and where the search finds no γ > 0 that lowers f the
         iteration takes ∇f's own LMO step instead ("fallback" in the record): f never rises and the textbook
         steps take over once the per-task ones stall. The gaps below stay those of ∇f's LMO.
    stop before the step when the duality gap max_v ⟨g, θ_k − v⟩ ≤ ``stop_gap`` (off by default): for a
         convex f it bounds f(θ_k) − min_{conv(V)} f, the textbook stopping rule
    γ_k = λ · 2/(k+2) · η                                     (``lambda``, ``eta``; official λ=0.29, η=0.1)
          or argmin_{γ ∈ [0, γ_max]} f(θ_k + γ D_k) by a grid or golden section (``line_search``; γ = 0 is
          a candidate, so f never rises; halving from the smallest point when none improves and ⟨g, D_k⟩ < 0),
          or one γ_l ∈ [0, γ_max] per layer (``line_search: layerwise``, the AdaMerging idea inside FW):
          ``layerwise_steps`` Adam steps (lr ``layerwise_lr``) on f(θ_k + Σ_l γ_l D_k,l) from the golden
          section's common γ, ∂f/∂γ_l = ⟨∇_l f, D_k,l⟩, keeping the best point evaluated (γ = 0 and the common
          γ included, so f never rises and no step is worse than golden section's),
          or ``layerwise_secant``: one γ_l per layer from ONE more gradient, at golden section's common γ*: along
          each layer φ_l'(γ) is taken linear through a_l = ⟨∇_l f(θ_k), D_l⟩ and b_l = ⟨∇_l f(θ_k + γ*D), D_l⟩
          (a separable quadratic model of f), γ_l = −a_l γ*/(b_l − a_l) in [0, γ_max] where b_l > a_l and γ*
          elsewhere; taken only if f there is below f at γ* (exact per layer on a separable quadratic)
    θ_{k+1} = MF(θ_k, [s_k]; scale γ_k) = θ_k + γ_k D_k,    D_k = MF(θ_k, [s_k]; scale 1) − θ_k

Pairwise steps (``steps: pairwise``; Lacoste-Julien & Jaggi, "On the Global Linear Convergence of Frank-Wolfe
Optimization Variants", NeurIPS 2015), per layer: θ_k,l = Σ_j α_jl v_jl is kept as weights α_l on the simplex
over the vertices (θ_0 the "initial" vertex, α = 1 there), the away vertex a_l = argmax_{α_jl > 0} ⟨g_l, v_jl⟩
gives D_l = s_l − a_l, and layer l moves by γ_l = min(γ_k, α_{a_l,l}), so weight flows from the worst active
vertex to the best one and a vertex chosen by mistake can be dropped again (α → 0). It needs the linear oracle,
layer granularity, merge task_arithmetic and init_as_vertex; the away vertex's tensor is a second one resident.

MF is a registered per-tensor method with base θ_k and the single model s_k (``merge``): task_arithmetic
gives D = s − θ, the Frank-Wolfe step θ + γ(s − θ); ties gives D = trim_d(s − θ); dare_ties D = m⊙(s − θ)/(1−p)
(masks seeded by seed + k); from with one model D = s − θ. Every one is linear in its scale, hence D.
Recorded per iteration: f(θ_k), the gap ⟨g, θ_k − s_k⟩ = Σ_l ⟨g_l, θ_l − s_l⟩, the Frank-Wolfe duality gap
max_{v∈V} ⟨g, θ_k − v⟩ (≥ 0 whenever θ_k ∈ conv(V); bounds f(θ_k) − min f for convex f), the slope ⟨g, D_k⟩
(= −gap for task_arithmetic), γ_k, the choice per layer (a candidate's name, "initial", "zero" or "keep").

Init θ_0 (``init``): ``ta`` θ_base + λ Σ_i τ_i (the official TA config), ``merge`` MF of all candidates with
scale λ (the official code's init for any second merge, e.g. TIES) or, with ``init_merge``, that registered
per-tensor method with ``init_merge_params`` as given (a TIES start with its own λ while the steps stay
``merge``), ``base``, ``given`` (``init_tensors``), or
``adamerging``: layer-wise AdaMerging over every candidate on the same objective (merging/methods/adamerging.py,
unclamped λ, its other parameters from ``init_adamerging``), the start of the vision fork's README recipe
(hmarkc/fusion_bench@837742d README.md: ``init_weight`` = AdaMerging's merged weights, 3 iterations, η 0.01).

Memory does not grow with the pool: resident are θ_k, ∇f, D_k (built while ∇f is alive, for the slope),
θ_0 when it is a vertex, θ_k + γD_k during a line search, one base tensor and ONE candidate tensor; the
oracle streams u_il layer by layer and keeps only [vertices, layers] tables of inner products and norms;
the step re-reads each chosen tensor. Only ``init: merge`` holds the n candidates of one layer at once, and
``init: adamerging`` every candidate's task vectors (for the init only; AdaMerging's memory). ``selection:
per_task`` adds one task's gradient (up to three gradient-sized buffers while it is summed) and one task's
direction beside D_k; ``layerwise_secant`` a second gradient, at the common step: none grows with the pool.

Data-parallel under ``accelerate launch`` (merging/distributed.py): f and ∇f are sums over the proxy batches,
sharded across processes and all-reduced; every later step uses reduced values only, so every process holds
the same θ_k and takes the same decisions.

Deviations from the official code (hmarkc/FW-Merging, discriminative/merge.py ``frank_wolfe_merge``,
generative/merge.py): f is the per-task mean summed over tasks (official: sum of per-example losses, same
direction when tasks have equal proxy sizes; the cosine LMO is scale-free); MF runs per tensor (official
TIES trims over the flattened model; ``scope: model`` is refused); zero-gradient layers are kept; the zero
vertex is optional and also offered for ``granularity: model``; DARE masks change with k; ``oracle: linear``
and line search are additions (the cosine rule is not a true LMO and can stall short of the minimiser).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .. import distributed
from ..errors import MergeError
from ..io.candidates import InMemorySource, TensorSource, as_source
from ..objective import Batch, Objective, sample_batches
from ..registry import get_method, register_data_driven
from ..tensor_ops import scaled_vertex
from .adamerging import AdaMergingParams, adamerging
from .base import DataDrivenInputs, DataDrivenResult, Method, Params, merge_in_memory, per_tensor_method, \
    scale_names

logger = logging.getLogger(__name__)

PAPER = "https://arxiv.org/abs/2503.12649"

RESERVED = ("initial", "zero", "keep")
Tensors = dict[str, torch.Tensor]


class FrankWolfeParams(Params):
    iterations: int = Field(10, ge=1)
    scale: float = Field(0.29, alias="lambda", gt=0)
    step_size: float = Field(0.1, alias="eta", gt=0)
    granularity: Literal["layer", "model"] = "layer"
    vertices: Literal["full", "task_vector"] = "full"
    vertex_scale: float = Field(1.0, gt=0)  # c: task_vector vertices θ_base + c·τ_i
    oracle: Literal["cosine", "linear"] = "cosine"
    selection: Literal["joint", "per_task"] = "joint"  # one LMO on ∇f, or one per task on ∇f_t, averaged
    zero_vertex: bool = True
    init: Literal["ta", "merge", "base", "given", "adamerging"] = "ta"
    init_adamerging: dict[str, Any] = Field(default_factory=dict)  # AdaMergingParams of init: adamerging
    init_as_vertex: bool = True
    init_merge: str | None = None  # init: merge's own method, any registered per-tensor merge (e.g. ties, iso_c)
    init_merge_params: dict[str, Any] = Field(default_factory=dict)  # its parameters as given, scale included
    merge: Literal["task_arithmetic", "ties", "dare_ties", "from"] = "task_arithmetic"
    merge_params: dict[str, Any] = Field(default_factory=dict)
    line_search: Literal["none", "grid", "golden", "layerwise", "layerwise_secant"] = "none"
    line_search_points: int = Field(8, ge=2)
    layerwise_steps: int = Field(10, ge=1)
    layerwise_lr: float = Field(0.05, gt=0)
    gamma_max: float = Field(1.0, gt=0)
    stop_gap: float | None = Field(None, ge=0)  # stop once the duality gap is at most this (None: never)
    steps: Literal["frank_wolfe", "pairwise"] = "frank_wolfe"
    seed: int = 0

    @model_validator(mode="after")
    def _check_merge(self) -> FrankWolfeParams:
        merge_method(self, 1.0)
        if (self.init_merge is not None or self.init_merge_params) and self.init != "merge":
            raise ValueError("init_merge and init_merge_params are read by init: merge only")
        if self.init_merge_params and self.init_merge is None:
            raise ValueError("init_merge_params needs init_merge (the method they are for)")
        if self.init == "merge":
            initial_merge(self, 1)  # its parameters, checked now
        pairwise = (self.merge, self.oracle, self.granularity, self.init_as_vertex)
        if self.steps == "pairwise" and pairwise != ("task_arithmetic", "linear", "layer", True):
            raise ValueError("steps: pairwise moves weight between the vertices of each layer's hull: it needs "
                             "merge: task_arithmetic, oracle: linear, granularity: layer and init_as_vertex: true")
        if self.selection == "per_task" and (self.steps == "pairwise" or self.line_search == "none"):
            raise ValueError("selection: per_task averages one vertex per task, which is not a descent direction "
                             "by construction: it needs a line search (line_search: grid, golden, layerwise …) "
                             "and plain steps (steps: frank_wolfe)")
        if self.vertex_scale != 1 and self.vertices != "task_vector":
            raise ValueError("vertex_scale scales task vectors: it needs vertices: task_vector")
        if self.init_adamerging and self.init != "adamerging":
            raise ValueError("init_adamerging is read by init: adamerging only")
        if self.init == "adamerging":
            initial_adamerging(self)  # its parameters, checked now
        return self


def initial_adamerging(p: FrankWolfeParams) -> AdaMergingParams:
    """AdaMerging's parameters for ``init: adamerging``: layer-wise and unclamped (as the fork's
    LayerWiseMergedModel(clamp_weights=False)) unless ``init_adamerging`` says otherwise."""
    return AdaMergingParams(**{"granularity": "layer", "clamp": False, **p.init_adamerging})


def merge_method(p: FrankWolfeParams, scale: float, n_models: int = 1) -> Method:
    """The registered method ``p.merge`` with ``p.merge_params``, its scale set to ``scale``, for ``n_models``."""
    keys = scale_names(get_method(p.merge).method_class)  # each merge of ``merge`` is affine in its scale
    fixed = sorted(set(keys) & set(p.merge_params))
    if fixed:
        raise ValueError(f"merge_params must not set {fixed}: Frank-Wolfe sets the scale of '{p.merge}' "
                         "(γ_k in a step, λ in the init)")
    return per_tensor_method(p.merge, {**p.merge_params, keys[0]: scale}, n_models, "merge_params")


def initial_merge(p: FrankWolfeParams, n_models: int) -> Method:
    """``init: merge``'s method for ``n_models``: ``merge`` with scale λ, or ``init_merge`` with
    ``init_merge_params`` as given."""
    if p.init_merge is None:
        return merge_method(p, p.scale, n_models)
    return per_tensor_method(p.init_merge, p.init_merge_params, n_models, "init_merge_params")


@dataclass
class FrankWolfeResult:
    theta: Tensors            # the final merge θ_K, float32, by name
    history: list[dict[str, Any]]  # per iteration k: objective, gap, gap_max, gamma, choices, counts …
    final_objective: float    # f(θ_K)
    params: FrankWolfeParams
    init_log: dict[str, Any] | None = None  # init: adamerging's trace
    weights: dict[str, dict[str, float]] | None = None  # steps: pairwise: θ_K,l = Σ_j α_jl v_jl, {layer: {j: α}}


def proxy_objective(objective: Objective, theta: Mapping[str, torch.Tensor], *, grad: bool
                    ) -> tuple[float, Tensors | None]:
    """f(θ) = Σ_t (1/N_t) Σ_b n_b · loss_t(b) over the "proxy" batches (n_b = rows of the batch's logits,
    N_t = Σ_b n_b) and, with ``grad``, ∇f(θ) by name (zeros where θ does not reach the loss).

    Data-parallel (merging/distributed.py): each process sums n_b · loss_t(b), n_b and ∇(n_b · loss_t(b))
    over its share of the batches; the three sums are added across processes before the division by N_t."""
    if not objective.tasks:
        raise MergeError("the objective has no target tasks")
    leaves = {n: t.detach().requires_grad_(grad) for n, t in theta.items()}
    total = {n: torch.zeros_like(t) for n, t in leaves.items()} if grad else None
    value = 0.0
    with torch.set_grad_enabled(grad):
        for task in objective.tasks:
            task_sum, count, task_grad = 0.0, 0, {n: torch.zeros_like(t) for n, t in leaves.items()} if grad else {}
            for batch in distributed.shard(objective.batches(task, "proxy")):
                logits = objective.logits(task, leaves, batch)  # [b, ...]
                rows = logits.shape[0] if logits.dim() else 1
                loss = objective.loss(task, logits, batch)  # [] mean over the batch
                if grad:
                    parts = torch.autograd.grad(loss * rows, list(leaves.values()), allow_unused=True)
                    for (n, part) in zip(leaves, parts):
                        if part is not None:
                            task_grad[n] += part
                task_sum, count = task_sum + float(loss.detach()) * rows, count + rows
            (task_sum, count), task_grad = distributed.all_reduce_sum(((task_sum, count), task_grad))
            if count == 0:
                raise MergeError(f"task '{task}': the proxy split yielded no batches")
            value += task_sum / count
            for n, part in task_grad.items():
                total[n] += part / count
    if not math.isfinite(value):
        raise MergeError(f"the proxy objective is {value}; check the candidates and the proxy data")
    return value, total


class OneTask:
    """``objective`` restricted to one task, so ``proxy_objective`` gives f_t and ∇f_t; with ``draw`` (a seed)
    its proxy batches are ``examples`` fresh training examples drawn with that seed."""

    def __init__(self, objective: Objective, task: str, draw: tuple[Any, ...] | None = None,
                 examples: int = 100, batch_size: int = 32) -> None:
        self._objective, self.tasks = objective, [task]
        self._draw, self._examples, self._batch_size = draw, examples, batch_size

    def batches(self, task: str, split: str) -> Iterable[Batch]:
        if split == "proxy" and self._draw is not None:
            return sample_batches(self._objective, task, self._examples, self._batch_size, self._draw)
        return self._objective.batches(task, split)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))


def stream_inner_products(names: list[str], grads: list[Mapping[str, torch.Tensor]],
                          vertices: Mapping[str, TensorSource], base: TensorSource | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ip[g, j, l] = ⟨grads[g]_l, u_jl⟩, norm[j, l] = ‖u_jl‖ and base_ip[g, l] = ⟨grads[g]_l, θ_base,l⟩ (0
    without ``base``), u_jl = vertex j's tensor l, minus the base's when ``base`` is given (task vectors).
    One pass over the vertices for every gradient; ONE vertex tensor is resident at a time."""
    labels = list(vertices)
    ip = torch.zeros(len(grads), len(labels), len(names), dtype=torch.float64)  # [G, J, L]
    norm = torch.zeros(len(labels), len(names), dtype=torch.float64)  # [J, L]
    base_ip = torch.zeros(len(grads), len(names), dtype=torch.float64)  # [G, L]
    for l, name in enumerate(names):
        b = base.read(name).to(torch.float32) if base is not None else None  # [*shape]
        for g, grad in enumerate(grads):
            base_ip[g, l] = _dot(grad[name], b) if b is not None else 0.0
        for j, label in enumerate(labels):
            u = vertices[label].read(name).to(torch.float32)  # [*shape]
            if b is not None:
                u = u - b  # [*shape] task vector
            for g, grad in enumerate(grads):
                ip[g, j, l] = _dot(grad[name], u)
            norm[j, l] = float(u.double().norm())
            del u
        del b
    return ip, norm, base_ip


def cosine_scores(ip: torch.Tensor, norm: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
    """⟨g_l, u_jl⟩ / (‖g_l‖·‖u_jl‖), 0 where a norm is 0.  ip [..., J, L], norm [J, L], g_norm [..., L]."""
    denom = g_norm.unsqueeze(-2) * norm  # [..., J, L]
    return torch.where(denom > 0, ip / denom.clamp(min=1e-300), 0.0)


def _oracle(p: FrankWolfeParams, names: list[str], theta: Tensors, grad: Tensors, base: TensorSource,
            vertices: dict[str, TensorSource]) -> tuple[dict[str, str], float, float, dict[str, torch.Tensor]]:
    """The LMO: the vertex chosen per layer, the gap ⟨g, θ − s⟩, the duality gap max_v ⟨g, θ − v⟩ and
    ⟨g_l, v_jl⟩ by vertex label (the zero vertex's too, with ``zero_vertex``), [L] each.
    Streams one vertex tensor at a time; keeps [J, L] tables (J vertices, L layers)."""
    labels, tv = list(vertices), p.vertices == "task_vector"
    ip, norm, g_base = stream_inner_products(names, [grad], vertices, base if tv else None)
    ip, g_base = ip[0], g_base[0]  # [J, L] ⟨g_l, u_jl⟩, [L] ⟨g_l, θ_base,l⟩ (task_vector) or 0
    if tv and p.vertex_scale != 1:  # u_jl = c·τ_jl for the candidates; the initial merge stays as it is
        c = torch.tensor([1.0 if label == "initial" else p.vertex_scale for label in labels], dtype=torch.float64)
        ip, norm = ip * c.unsqueeze(1), norm * c.unsqueeze(1)  # [J, L]
    g_norm = torch.tensor([float(grad[n].double().norm()) for n in names], dtype=torch.float64)  # [L]
    g_theta = torch.tensor([_dot(grad[n], theta[n]) for n in names], dtype=torch.float64)  # [L]
    score = ip if p.oracle == "linear" else cosine_scores(ip, norm, g_norm)
    full_ip = ip + g_base.unsqueeze(0)  # [J, L] ⟨g_l, v_jl⟩ in weight space
    zero_ip = g_base  # [L] ⟨g_l, zero vertex⟩: 0 (full) or ⟨g_l, θ_base⟩ (task_vector)
    choice, s_ip = {}, torch.zeros(len(names), dtype=torch.float64)  # [L] ⟨g_l, s_l⟩
    if p.granularity == "layer":
        for l, name in enumerate(names):
            j = int(score[:, l].argmin())
            if g_norm[l] == 0:
                choice[name], s_ip[l] = "keep", g_theta[l]
            elif p.zero_vertex and score[j, l] >= 0:
                choice[name], s_ip[l] = "zero", zero_ip[l]
            else:
                choice[name], s_ip[l] = labels[j], full_ip[j, l]
        best = full_ip.min(0).values  # [L]
        best = torch.minimum(best, zero_ip) if p.zero_vertex else best
        gap_max = float((g_theta - best).sum())
    else:
        j = int(score.sum(1).argmin())
        pick = "zero" if p.zero_vertex and score[j].sum() >= 0 else labels[j]
        choice = dict.fromkeys(names, pick)
        s_ip = zero_ip if pick == "zero" else full_ip[j]
        best = float(full_ip.sum(1).min())
        best = min(best, float(zero_ip.sum())) if p.zero_vertex else best
        gap_max = float(g_theta.sum()) - best
    ips = {**{label: full_ip[j] for j, label in enumerate(labels)}, **({"zero": zero_ip} if p.zero_vertex else {})}
    return choice, float((g_theta - s_ip).sum()), gap_max, ips


def _vertex(p: FrankWolfeParams, label: str, name: str, base: TensorSource, vertices: dict[str, TensorSource],
            like: torch.Tensor) -> torch.Tensor:
    """Vertex ``label``'s tensor ``name`` in weight space: 0 or θ_base (zero vertex), θ_0 ("initial"), θ_i, or
    θ_base + c·τ_i (task_vector vertices, c = vertex_scale)."""
    if label == "zero":
        return base.read(name).to(torch.float32) if p.vertices == "task_vector" else torch.zeros_like(like)
    v = vertices[label].read(name).to(torch.float32)  # [*shape]
    if p.vertices == "task_vector" and p.vertex_scale != 1 and label != "initial":
        v = scaled_vertex(base.read(name).to(torch.float32), v, p.vertex_scale)  # θ_base + c·τ
    return v


def _directions(p: FrankWolfeParams, names: list[str], theta: Tensors, choice: dict[str, str],
                base: TensorSource, vertices: dict[str, TensorSource], grad: Tensors, k: int,
                away: dict[str, str] | None = None) -> tuple[Tensors, float]:
    """D_l = MF(θ_l, [s_l]; scale 1) − θ_l, or s_l − a_l with ``away`` (pairwise), reading each chosen tensor
    once, and the slope ⟨g, D⟩ = φ'(0)."""
    method, directions, slope = merge_method(p, 1.0), {}, 0.0
    for name in names:
        pick, t = choice[name], theta[name]  # t: [*shape]
        if pick == "keep" or (away is not None and away[name] == pick):
            directions[name] = torch.zeros_like(t)
            continue
        s = _vertex(p, pick, name, base, vertices, t)  # [*shape]
        directions[name] = (s - _vertex(p, away[name], name, base, vertices, t) if away is not None
                            else merge_in_memory(method, t, [s], name=name, seed=p.seed + k) - t)  # [*shape]
        slope += _dot(grad[name], directions[name])
        del s
    return directions, slope


def _per_layer(gamma: float, names: list[str], limits: dict[str, float] | None = None) -> dict[str, float]:
    """γ for every layer, min(γ, limits_l) when ``limits`` is given (pairwise steps)."""
    return {n: gamma if limits is None else min(gamma, limits[n]) for n in names}


def _moved(theta: Tensors, d: Tensors, gammas: Mapping[str, float]) -> Tensors:
    """θ_l + γ_l D_l for every layer l."""
    return {n: t + gammas[n] * d[n] for n, t in theta.items()}


def _line_search(objective: Objective, theta: Tensors, d: Tensors, p: FrankWolfeParams, f0: float,
                 slope: float, limits: dict[str, float] | None = None) -> float:
    """argmin of φ(γ) = f(θ + γD) (``_moved``) over γ = 0 and the points evaluated in (0, γ_max]: a uniform grid
    γ_max·j/m (``grid``) or golden section plus γ_max (``golden``), m = ``line_search_points``. When no
    point beats φ(0) but D descends (φ'(0) < 0), γ is halved from the smallest point tried, up to 30 times,
    so a coarse grid never stalls the iteration at γ = 0."""
    def phi(gamma: float) -> float:
        return proxy_objective(objective, _moved(theta, d, _per_layer(gamma, list(theta), limits)), grad=False)[0]

    seen, m = {0.0: f0}, p.line_search_points
    if p.line_search == "grid":
        for j in range(1, m + 1):
            seen[p.gamma_max * j / m] = phi(p.gamma_max * j / m)
    else:  # golden section on [0, γ_max]
        ratio = (math.sqrt(5) - 1) / 2
        seen[p.gamma_max] = phi(p.gamma_max)
        lo, hi = 0.0, p.gamma_max
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        seen[a], seen[b] = phi(a), phi(b)
        for _ in range(m - 3):
            if seen[a] <= seen[b]:
                hi, b = b, a
                a = hi - ratio * (hi - lo)
                seen[a] = phi(a)
            else:
                lo, a = a, b
                b = lo + ratio * (hi - lo)
                seen[b] = phi(b)
    gamma = min(g for g in seen if g > 0)  # the smallest point tried
    for _ in range(30 if slope < 0 and min(seen.values()) >= f0 else 0):
        gamma /= 2
        seen[gamma] = phi(gamma)
        if seen[gamma] < f0:
            break
    return min(seen, key=lambda g: (seen[g], g))


def _layerwise_steps(objective: Objective, theta: Tensors, d: Tensors, p: FrankWolfeParams, f0: float,
                     start: dict[str, float], limits: dict[str, float] | None) -> dict[str, float]:
    """One step size per layer, γ_l ∈ [0, min(γ_max, limits_l)]: ``layerwise_steps`` projected Adam steps on
    φ(γ) = f(θ + Σ_l γ_l D_l) from ``start``, with ∂φ/∂γ_l = ⟨∇_l f(θ + Σ γ D), D_l⟩; the best point evaluated
    (γ = 0, worth f0, included)."""
    names = list(theta)
    upper = torch.tensor([p.gamma_max if limits is None else min(p.gamma_max, limits[n]) for n in names],
                         dtype=torch.float64)  # [L]
    gamma = torch.minimum(torch.tensor([start[n] for n in names], dtype=torch.float64), upper)  # [L]
    gamma.requires_grad_(True)
    optimizer = torch.optim.Adam([gamma], lr=p.layerwise_lr)
    best_value, best = f0, dict.fromkeys(names, 0.0)
    for step in range(p.layerwise_steps + 1):  # the last point is evaluated, not stepped from
        gammas = dict(zip(names, gamma.detach().tolist()))
        value, grad = proxy_objective(objective, _moved(theta, d, gammas), grad=step < p.layerwise_steps)
        if value < best_value:
            best_value, best = value, gammas
        if grad is None:
            break
        gamma.grad = torch.tensor([_dot(grad[n], d[n]) for n in names], dtype=torch.float64)  # [L]
        del grad
        optimizer.step()
        with torch.no_grad():
            gamma.copy_(torch.minimum(gamma.clamp(min=0.0), upper))
    return best


def _secant_steps(objective: Objective, theta: Tensors, d: Tensors, p: FrankWolfeParams, start: dict[str, float],
                  limits: dict[str, float] | None, grad: Tensors) -> dict[str, float]:
    """One step size per layer from one gradient at the common step γ*_l = ``start`` (golden section's): the
    zero of the secant of φ_l'(γ) = ⟨∇_l f(θ + γD), D_l⟩ through γ = 0 (``grad``) and γ*_l, in [0, min(γ_max,
    limits_l)], where the slope rises (b_l > a_l: convex along D_l); γ*_l elsewhere. Kept only where f there is
    below f at the common step, which line search already put at or below f(θ)."""
    if max(start.values()) == 0:  # golden section found no descent: nothing to refine
        return start
    f_common, at_common = proxy_objective(objective, _moved(theta, d, start), grad=True)
    gammas = {}
    for name, common in start.items():
        upper = p.gamma_max if limits is None else min(p.gamma_max, limits[name])
        a, b = _dot(grad[name], d[name]), _dot(at_common[name], d[name])  # φ_l'(0), φ_l'(γ*_l)
        gammas[name] = min(max(-a * common / (b - a), 0.0), upper) if common > 0 and b > a else common
    del at_common
    return gammas if proxy_objective(objective, _moved(theta, d, gammas), grad=False)[0] < f_common else start


def _check_pool(names: list[str], base: TensorSource, pool: dict[str, TensorSource]) -> None:
    if not pool:
        raise MergeError("Frank-Wolfe merging needs at least one candidate")
    for label, src in pool.items():
        if label in RESERVED:
            raise MergeError(f"candidate name '{label}' is reserved ({', '.join(RESERVED)}); rename it")
        held = set(src.names)
        for name in names:
            if name not in held:
                raise MergeError(f"candidate '{label}' has no tensor '{name}' (the base has it)")
            if tuple(src.shape(name)) != tuple(base.shape(name)):
                raise MergeError(f"candidate '{label}': tensor '{name}' has shape {list(src.shape(name))}, "
                                 f"the base has {list(base.shape(name))}")


def _initial(p: FrankWolfeParams, objective: Objective, names: list[str], base: TensorSource,
             pool: dict[str, TensorSource], init_tensors: TensorSource | Mapping[str, torch.Tensor] | None
             ) -> tuple[Tensors, dict[str, Any] | None]:
    """θ_0 (module docstring), and for ``init: adamerging`` its trace (objective per step, final λ)."""
    if (init_tensors is None) == (p.init == "given"):
        raise MergeError("init_tensors is required by init: given, and only by it")
    if p.init == "given":
        given = as_source(init_tensors, "init_tensors")
        _check_pool(names, base, {"init_tensors": given})
        return {n: given.read(n).to(torch.float32) for n in names}, None
    if p.init == "adamerging":
        models = [{n: src.read(n).to(torch.float32) for n in names} for src in pool.values()]  # n × {name: [*shape]}
        theta, trace = adamerging(objective, {n: base.read(n).to(torch.float32) for n in names}, models,
                                  initial_adamerging(p))
        return theta, {"loss": trace.loss, "objective": trace.entropy, "skipped": trace.skipped,
                       "lambdas": {n: trace.lambdas[:, i].tolist() for i, n in enumerate(trace.names)}}
    if p.init == "merge":
        return merge_over(initial_merge(p, len(pool)), names, base, pool, p.seed), None
    theta = {}
    for name in names:
        b = base.read(name).to(torch.float32)  # [*shape]
        if p.init == "base":
            theta[name] = b
        else:  # ta: θ_base + λ Σ_i (θ_i − θ_base), one candidate tensor at a time
            total = torch.zeros_like(b)  # [*shape] Σ_i θ_i
            for src in pool.values():
                total.add_(src.read(name).to(torch.float32))
            theta[name] = b + p.scale * (total - len(pool) * b)
    return theta, None


def merge_over(method: Method, names: list[str], base: TensorSource, pool: Mapping[str, TensorSource],
               seed: int) -> Tensors:
    """``method`` (a per-tensor merge for ``len(pool)`` models) over every candidate of ``pool``, one tensor at a
    time: that tensor's n candidates are the only ones resident, read into one [n, *shape] block. -> {name:
    [*shape]} float32."""
    theta = {}
    for name in names:
        b = base.read(name).to(torch.float32)  # [*shape]
        models = torch.empty((len(pool), *b.shape))  # [n, *shape]
        for row, src in zip(models, pool.values()):
            row.copy_(src.read(name))
        theta[name] = merge_in_memory(method, b, models, name=name, seed=seed)
    return theta


def frank_wolfe_merge(objective: Objective, base: TensorSource | Mapping[str, torch.Tensor],
                      candidates: Mapping[str, TensorSource | Mapping[str, torch.Tensor]],
                      params: FrankWolfeParams | Mapping[str, Any] | None = None, *,
                      init_tensors: TensorSource | Mapping[str, torch.Tensor] | None = None,
                      progress: bool = False) -> FrankWolfeResult:
    """Merge ``candidates`` (name -> source) by hard Frank-Wolfe on ``objective``; the mergeable tensors
    are the base's ``names``. See the module docstring for the algorithm."""
    p = params if isinstance(params, FrankWolfeParams) else FrankWolfeParams(**dict(params or {}))
    base_src = as_source(base, "base")
    names = list(base_src.names)
    pool = {label: as_source(src, f"candidate '{label}'") for label, src in candidates.items()}
    _check_pool(names, base_src, pool)
    theta, init_log = _initial(p, objective, names, base_src, pool, init_tensors)
    vertices = {**pool, "initial": InMemorySource(dict(theta), "initial")} if p.init_as_vertex else pool
    weights = {n: {"initial": 1.0} for n in names} if p.steps == "pairwise" else None  # α_l: active vertices
    history: list[dict[str, Any]] = []
    for k in range(p.iterations):
        if p.selection == "per_task":
            value, grad, task_choices = _per_task_choices(p, objective, names, theta, base_src, vertices)
        else:
            (value, grad), task_choices = proxy_objective(objective, theta, grad=True), None
        grad_norm = math.sqrt(sum(float(g.double().square().sum()) for g in grad.values()))
        choice, gap, gap_max, ips = _oracle(p, names, theta, grad, base_src, vertices)  # ∇f's LMO: gaps, stop rule
        if p.stop_gap is not None and gap_max <= p.stop_gap:  # θ_k is certified: no step
            history.append({"iteration": k, "objective": value, "gap": gap, "gap_max": gap_max,
                            "grad_norm": grad_norm, "stopped": f"duality gap {gap_max:.4g} <= stop_gap"})
            if progress and distributed.is_main():
                logger.info("FW %d/%d: f=%.6g duality gap %.4g <= stop_gap: stopped", k + 1, p.iterations, value,
                            gap_max)
            break
        away = _away_vertices(weights, ips, names) if weights is not None else None
        limits = None if away is None else {  # α_{a_l,l} bounds γ_l; 0 where D_l = 0 (the search's range: moving layers)
            n: 0.0 if choice[n] in ("keep", away[n]) else weights[n][away[n]] for n in names}
        if task_choices is None:
            d, slope = _directions(p, names, theta, choice, base_src, vertices, grad, k, away)
        else:
            d, slope = _averaged_directions(p, names, theta, task_choices, base_src, vertices, grad, k)
        scheduled = p.scale * 2.0 / (k + 2) * p.step_size
        gammas, gamma = _step_sizes(objective, theta, d, p, value, slope, scheduled, limits, grad)
        fallback = (task_choices is not None and gamma == 0.0  # a joint step that differs from the stalled one
                    and any(c != choice for c in task_choices.values()))
        if fallback:  # the tasks' mean direction does not lower f here: ∇f's own LMO step (textbook FW) instead
            del d
            d, slope = _directions(p, names, theta, choice, base_src, vertices, grad, k)
            gammas, gamma = _step_sizes(objective, theta, d, p, value, slope, scheduled, limits, grad)
        del grad
        theta = _moved(theta, d, gammas)  # θ_{k+1} = θ_k + γ_k D_k (pairwise: min(γ_k, α_a); layerwise: γ_l)
        del d
        taken = [choice] if task_choices is None or fallback else list(task_choices.values())  # stepped towards
        counts = dict(Counter(label for c in taken for label in c.values()))  # per task: m choices per layer
        step = {"iteration": k, "objective": value, "gap": gap, "gap_max": gap_max, "gamma": gamma,
                "gamma_schedule": scheduled, "slope": slope, "grad_norm": grad_norm, "choices": choice,
                "counts": counts}
        if task_choices is not None:  # the tasks' own picks, also where they stalled and the joint step was taken
            step.update(task_choices=task_choices, fallback=fallback,
                        task_counts={t: dict(Counter(c.values())) for t, c in task_choices.items()})
        if p.line_search in ("layerwise", "layerwise_secant"):
            step["gamma_range"] = [min(gammas.values()), max(gammas.values())]
        if weights is not None:
            step.update(_shift_weights(weights, choice, away, gammas))
        history.append(step)
        if progress and distributed.is_main():
            logger.info("FW %d/%d: f=%.6g gap=%.4g γ=%.4g %s", k + 1, p.iterations, value, gap, gamma, counts)
    final = proxy_objective(objective, theta, grad=False)[0]
    return FrankWolfeResult(theta=theta, history=history, final_objective=final, params=p, init_log=init_log,
                            weights=weights)


def _add_into(total: Tensors | None, part: Tensors) -> Tensors:
    """total + part by name, in place in ``total`` (``part`` itself when there is no total yet)."""
    if total is None:
        return part
    for name, tensor in part.items():
        total[name].add_(tensor)
    return total


def _per_task_choices(p: FrankWolfeParams, objective: Objective, names: list[str], theta: Tensors,
                      base: TensorSource, vertices: dict[str, TensorSource]
                      ) -> tuple[float, Tensors, dict[str, dict[str, str]]]:
    """``selection: per_task``: f(θ) = Σ_t f_t(θ), ∇f = Σ_t ∇f_t, and per task t the LMO's vertex per layer on
    its own gradient ∇f_t (one pool pass per task; one task gradient resident beside the sum)."""
    value, total, choices = 0.0, None, {}
    for task in objective.tasks:
        task_value, task_grad = proxy_objective(OneTask(objective, task), theta, grad=True)
        choices[task] = _oracle(p, names, theta, task_grad, base, vertices)[0]
        value, total = value + task_value, _add_into(total, task_grad)
        del task_grad
    return value, total, choices


def _averaged_directions(p: FrankWolfeParams, names: list[str], theta: Tensors,
                         task_choices: dict[str, dict[str, str]], base: TensorSource,
                         vertices: dict[str, TensorSource], grad: Tensors, k: int) -> tuple[Tensors, float]:
    """``selection: per_task``: D = (1/m) Σ_t D_t, D_t = MF(θ, [s_t]) − θ towards task t's vertices, and the
    slope ⟨∇f, D⟩. θ + γD = (1 − γ)θ + γ·(1/m) Σ_t s_t (task_arithmetic) stays in conv(V) for γ ∈ [0, 1]."""
    total, slope = None, 0.0
    for choice in task_choices.values():
        d, task_slope = _directions(p, names, theta, choice, base, vertices, grad, k)
        slope, total = slope + task_slope, _add_into(total, d)
        del d
    m = len(task_choices)
    return {n: t.div_(m) for n, t in total.items()}, slope / m


def _away_vertices(weights: dict[str, dict[str, float]], ips: dict[str, torch.Tensor], names: list[str]
                   ) -> dict[str, str]:
    """a_l = argmax over layer l's active vertices (α_jl > 0) of ⟨g_l, v_jl⟩: the worst vertex in use."""
    return {n: max(weights[n], key=lambda j, l=l: float(ips[j][l])) for l, n in enumerate(names)}


def _step_sizes(objective: Objective, theta: Tensors, d: Tensors, p: FrankWolfeParams, value: float, slope: float,
                scheduled: float, limits: dict[str, float] | None, grad: Tensors) -> tuple[dict[str, float], float]:
    """γ_l per layer (pairwise: at most ``limits``) by the schedule, a line search or layer-wise steps, and the γ
    recorded (layerwise: their mean). ``grad`` = ∇f(θ) (for layerwise_secant's slopes at γ = 0)."""
    names = list(theta)
    if p.line_search == "none":
        return _per_layer(scheduled, names, limits), scheduled
    if limits is not None and max(limits.values()) == 0:  # no layer moves
        return dict.fromkeys(names, 0.0), 0.0
    search = p if limits is None else p.model_copy(update={"gamma_max": min(p.gamma_max, max(limits.values()))})
    gamma = _line_search(objective, theta, d, search, value, slope, limits)  # golden section for layerwise
    if p.line_search == "layerwise":  # refined per layer from the common step, which stays a candidate
        gammas = _layerwise_steps(objective, theta, d, p, value, _per_layer(gamma, names, limits), limits)
        return gammas, sum(gammas.values()) / len(gammas)
    if p.line_search == "layerwise_secant":
        gammas = _secant_steps(objective, theta, d, p, _per_layer(gamma, names, limits), limits, grad)
        return gammas, sum(gammas.values()) / len(gammas)
    return _per_layer(gamma, names, limits), gamma


def _shift_weights(weights: dict[str, dict[str, float]], choice: dict[str, str], away: dict[str, str],
                   gammas: dict[str, float]) -> dict[str, Any]:
    """α_{s_l,l} += γ_l, α_{a_l,l} −= γ_l (γ_l ≤ α_{a_l,l}), in place; a vertex whose weight reaches 0 leaves the
    active set. The step's record: away vertices per layer (counts) and the vertices dropped."""
    dropped = 0
    for name, pick in choice.items():
        a = away[name]
        if pick == "keep" or pick == a:
            continue
        moved = min(gammas[name], weights[name][a])
        weights[name][pick] = weights[name].get(pick, 0.0) + moved
        weights[name][a] -= moved
        if weights[name][a] <= 1e-12:
            del weights[name][a]
            dropped += 1
    return {"away": dict(Counter(away.values())), "dropped": dropped}


def frank_wolfe_log(history: list[dict[str, Any]], final_objective: float) -> dict[str, Any]:
    """A Frank-Wolfe variant's log for a result row: its history less the per-layer choices and scores, and its
    final objective."""
    steps = [{k: v for k, v in step.items() if k not in ("choices", "task_choices", "scores")} for step in history]
    return {"history": steps, "final_objective": final_objective}


def _merge(inputs: DataDrivenInputs) -> DataDrivenResult:
    result = frank_wolfe_merge(inputs.objective, inputs.base, inputs.candidates, inputs.params,
                               progress=inputs.progress)
    init = {"init": result.init_log} if result.init_log else {}  # init: adamerging's trace
    weights = {"weights": result.weights} if result.weights is not None else {}  # pairwise: α per layer at the end
    return result.theta, {**frank_wolfe_log(result.history, result.final_objective), **init, **weights}


register_data_driven("frank_wolfe", PAPER, FrankWolfeParams, _merge, lora=True,
                     data="proxy: labelled examples of every target task (gradients, optional line search)")

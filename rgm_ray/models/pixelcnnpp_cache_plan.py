"""When cached sampling computes each activation: ready steps, need steps and the step program.

The *ready step* of an activation is the first sampling step at which every pixel it depends on is
final: pixel ``p`` in raster order is sampled at step ``p`` and is final from step ``p + 1``; padding
is final from step 0; a position is ready when the latest position it reads is. The *need step* is
the first step at which something reads it (the sampler reads the output at pixel ``p`` at step
``p``). Any step in between works; each activation is computed exactly once, so sampling an image
costs one forward pass of arithmetic, and the output at pixel ``s`` exists at step ``s`` because the
network is causal.

Per-step Python overhead dominates at small batch, so positions are grouped: everything is computed
as late as possible, and a whole row of a node in one go when the entire row is ready by the first
step that needs any of it. That holds for the down-shifted ``u`` stream (a row depends only on rows
above) and not for the ``ul`` stream (each position waits for the pixel to its left), which runs
one position per step. The plan depends only on the config, so it is built once per config and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.pixelcnnpp_cache_graph import INPUT, Node, lower
from rgm_ray.models.pixelcnnpp_cache_tables import ready_through

_NEVER = torch.iinfo(torch.long).max  # need step of a position nothing reads


@dataclass(frozen=True)
class Invocation:
    """Evaluate ``node`` at ``positions`` [n]; ``gathers[t]`` [n * K_t] are term t's source positions."""

    node: int
    positions: Tensor
    gathers: tuple[Tensor, ...]


Program = tuple[tuple[Invocation, ...], ...]  # per step, the invocations to run in order


@dataclass(frozen=True)
class Plan:
    nodes: tuple[Node, ...]  # node INPUT first, the mixture parameters last, every node after its sources
    ready: tuple[Tensor, ...]  # per node [N]: ready step of each position
    computed: tuple[Tensor, ...]  # per node [N]: the step at which the sampler computes it
    steps: Program  # steps[s]: what to compute at step s, in forward order

    @property
    def output(self) -> int:
        return len(self.nodes) - 1


def ready_steps(nodes: tuple[Node, ...]) -> tuple[Tensor, ...]:
    """Ready step of every position of every node, in node order."""
    h, w = nodes[INPUT].size
    ready = [torch.arange(1, h * w + 1)]
    for node in nodes[1:]:
        per_term = [
            torch.stack([ready_through(t.table, ready[s]) for s in t.sources]).amax(dim=0) for t in node.terms
        ]
        if node.residual is not None:
            per_term.append(ready[node.residual])
        ready.append(torch.stack(per_term).amax(dim=0))
    return tuple(ready)


def compute_steps(nodes: tuple[Node, ...], ready: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The step at which each position is computed, readers first (reverse node order).

    As late as possible (its need step), which leaves the most slack to its sources; a whole row at
    once at the row's first need step when the entire row is ready by then. Positions nothing reads
    are computed when ready (only ``scheduled_activations`` uses them).
    """
    need = [torch.full_like(r, _NEVER) for r in ready]
    need[-1] = torch.arange(len(ready[-1]))  # the sampler reads the output at pixel p at step p
    computed: list[Tensor] = [ready[INPUT]] * len(nodes)  # the input is written, not computed
    for index in range(len(nodes) - 1, INPUT, -1):
        node = nodes[index]
        lo, hi = ready[index].view(node.size), need[index].view(node.size)
        late = torch.where(hi == _NEVER, lo, hi)
        rows_ready, rows_need = lo.amax(dim=1, keepdim=True), hi.amin(dim=1, keepdim=True)  # [h, 1]
        row_step = torch.where(rows_need == _NEVER, rows_ready, rows_need)
        computed[index] = torch.where(rows_ready <= rows_need, row_step, late).flatten()
        for term in node.terms:  # a source position is needed when the first position reading it is computed
            steps = computed[index].unsqueeze(1).expand_as(term.table).reshape(-1)
            for source in term.sources:
                padded = torch.cat([need[source], need[source].new_full((1,), _NEVER)])  # + zero slot
                need[source] = padded.scatter_reduce(0, term.table.reshape(-1), steps, "amin")[:-1]
        if node.residual is not None:
            need[node.residual] = torch.minimum(need[node.residual], computed[index])
    return tuple(computed)


def check_schedule(nodes: tuple[Node, ...], ready: tuple[Tensor, ...], computed: tuple[Tensor, ...]) -> None:
    """Raise AssertionError unless every position is computed once its inputs are final and no later
    than anything reading it, and the output at pixel s by step s."""
    pixels = len(ready[INPUT])
    if nodes[-1].size != nodes[INPUT].size or (computed[-1] > torch.arange(pixels)).any():
        raise AssertionError("the output at pixel s must depend only on pixels before s")
    for index, node in enumerate(nodes[1:], start=1):
        if (computed[index] < ready[index]).any():
            raise AssertionError(f"{node.name}: computed before its inputs are final")
        reads = [(s, t.table) for t in node.terms for s in t.sources]
        if node.residual is not None:
            reads.append((node.residual, torch.arange(len(ready[index])).unsqueeze(1)))
        for source, table in reads:
            source_steps = torch.cat([computed[source], computed[source].new_zeros(1)])[table]  # zero slot: 0
            if (source_steps.amax(dim=1) > computed[index]).any():
                raise AssertionError(f"{node.name}: reads {nodes[source].name} before it is computed")


def group_by_step(nodes: tuple[Node, ...], computed: tuple[Tensor, ...]) -> Program:
    """The step program: per step, one invocation per node with positions computed then."""
    num_steps = int(max(c.max() for c in computed[1:])) + 1
    steps: list[list[Invocation]] = [[] for _ in range(num_steps)]
    for index in range(INPUT + 1, len(nodes)):
        order = torch.argsort(computed[index], stable=True)  # positions ascending within a step
        counts = torch.bincount(computed[index], minlength=num_steps).tolist()
        positions = torch.split(order, counts)
        tables = [torch.split(t.table[order], counts) for t in nodes[index].terms]  # per step [n, K]
        for step, count in enumerate(counts):
            if count:
                gathers = tuple(table[step].reshape(-1) for table in tables)
                steps[step].append(Invocation(index, positions[step], gathers))
    return tuple(tuple(s) for s in steps)


def build_plan(config: PixelCNNppConfig, device: torch.device | str = "cpu") -> Plan:
    """The plan for ``config`` (structure only, no weights), its index tensors on ``device``.

    Cached per (config, device), because it is a function of the config and takes a second or two.
    """
    return _build_plan(config, torch.device(device))


@functools.lru_cache(maxsize=8)
def _build_plan(config: PixelCNNppConfig, device: torch.device) -> Plan:
    with torch.random.fork_rng(devices=[]):  # the throwaway model's init must not move the global RNG
        nodes = lower(PixelCNNpp(config))  # only its layer geometry is read
    ready = ready_steps(nodes)
    computed = compute_steps(nodes, ready)
    check_schedule(nodes, ready, computed)

    def on_device(call: Invocation) -> Invocation:
        return Invocation(call.node, call.positions.to(device), tuple(g.to(device) for g in call.gathers))

    steps = tuple(tuple(on_device(call) for call in step) for step in group_by_step(nodes, computed))
    return Plan(nodes, ready, computed, steps)

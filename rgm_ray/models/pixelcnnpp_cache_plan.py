"""When cached sampling computes each activation, where it keeps it, and the resulting step program.

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
one position per step.

Memory: an activation is dead once its last reader has run, so each node keeps only a ring of its
most recent rows (row ``i`` in ring row ``i mod R``, with ``R`` the fewest rows for which no row is
overwritten before its last read), as in Ramachandran et al. 2017. ``Invocation`` indices are slots
in those rings. The plan depends only on the config, so it is built once per config and cached.
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
    """Evaluate ``node`` at ``positions`` [n] (raster indices), reading and writing ring slots.

    ``writes`` [n] are the node's own slots; ``gathers[t][s]`` [n * K_t] the slots term t reads in
    its source s; ``residual`` [n] the slots of the gated residual's input.
    """

    node: int
    positions: Tensor
    writes: Tensor
    gathers: tuple[tuple[Tensor, ...], ...]
    residual: Tensor | None


Program = tuple[tuple[Invocation, ...], ...]  # per step, the invocations to run in order


@dataclass(frozen=True)
class Plan:
    nodes: tuple[Node, ...]  # node INPUT first, the mixture parameters last, every node after its sources
    ready: tuple[Tensor, ...]  # per node [N]: ready step of each position
    computed: tuple[Tensor, ...]  # per node [N]: the step at which the sampler computes it
    ring_rows: tuple[int, ...]  # per node: rows kept (its height without a ring)
    slots: tuple[Tensor, ...]  # per node [N]: slot of each position in its cache; the zero slot is last
    steps: Program  # steps[s]: what to compute at step s, in forward order

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def cache_slots(self, node: int) -> int:
        """Slots of a node's cache, including the all-zero slot that padding reads."""
        return self.ring_rows[node] * self.nodes[node].size[1] + 1


def _reads(nodes: tuple[Node, ...], index: int) -> list[tuple[int, Tensor]]:
    """(source, table [N, K]) for everything node ``index`` reads, the gated residual included."""
    node = nodes[index]
    reads = [(s, t.table) for t in node.terms for s in t.sources]
    if node.residual is not None:
        reads.append((node.residual, torch.arange(node.size[0] * node.size[1]).unsqueeze(1)))
    return reads


def _scatter_steps(target: Tensor, table: Tensor, steps: Tensor, reduce: str) -> Tensor:
    """Reduce the reader's ``steps`` [N_out] into ``target`` [N_src] at the positions ``table`` reads."""
    padded = torch.cat([target, target.new_zeros(1)])  # + the zero slot, dropped again
    spread = steps.unsqueeze(1).expand_as(table).reshape(-1)
    return padded.scatter_reduce(0, table.reshape(-1), spread, reduce)[:-1]


def ready_steps(nodes: tuple[Node, ...]) -> tuple[Tensor, ...]:
    """Ready step of every position of every node, in node order."""
    h, w = nodes[INPUT].size
    ready = [torch.arange(1, h * w + 1)]
    for index in range(INPUT + 1, len(nodes)):
        per_read = [ready_through(table, ready[source]) for source, table in _reads(nodes, index)]
        ready.append(torch.stack(per_read).amax(dim=0))
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
        size = nodes[index].size
        lo, hi = ready[index].view(size), need[index].view(size)
        late = torch.where(hi == _NEVER, lo, hi)
        rows_ready, rows_need = lo.amax(dim=1, keepdim=True), hi.amin(dim=1, keepdim=True)  # [h, 1]
        row_step = torch.where(rows_need == _NEVER, rows_ready, rows_need)
        computed[index] = torch.where(rows_ready <= rows_need, row_step, late).flatten()
        for source, table in _reads(nodes, index):
            need[source] = _scatter_steps(need[source], table, computed[index], "amin")
    return tuple(computed)


def check_schedule(nodes: tuple[Node, ...], ready: tuple[Tensor, ...], computed: tuple[Tensor, ...]) -> None:
    """Raise AssertionError unless every position is computed once its inputs are final and no later
    than anything reading it, and the output at pixel s by step s."""
    pixels = len(ready[INPUT])
    if nodes[-1].size != nodes[INPUT].size or (computed[-1] > torch.arange(pixels)).any():
        raise AssertionError("the output at pixel s must depend only on pixels before s")
    for index in range(INPUT + 1, len(nodes)):
        if (computed[index] < ready[index]).any():
            raise AssertionError(f"{nodes[index].name}: computed before its inputs are final")
        for source, table in _reads(nodes, index):
            source_steps = torch.cat([computed[source], computed[source].new_zeros(1)])[table]  # zero slot: 0
            if (source_steps.amax(dim=1) > computed[index]).any():
                raise AssertionError(f"{nodes[index].name}: reads {nodes[source].name} before it is computed")


def ring_rows(nodes: tuple[Node, ...], computed: tuple[Tensor, ...]) -> tuple[int, ...]:
    """Fewest rows each node's ring can hold: row i's slots are rewritten by row i + R, which must
    be computed after the last read of row i (within a step readers run after the node, so strictly
    after). The input canvas keeps every row: it is the returned image."""
    last_read = [torch.full_like(c, -1) for c in computed]
    last_read[-1] = torch.arange(len(computed[-1]))  # the sampler reads pixel p's parameters at step p
    for index in range(INPUT + 1, len(nodes)):
        for source, table in _reads(nodes, index):
            last_read[source] = _scatter_steps(last_read[source], table, computed[index], "amax")
    rows = [nodes[INPUT].size[0]]
    for index in range(INPUT + 1, len(nodes)):
        h = nodes[index].size[0]
        written, read = computed[index].view(nodes[index].size), last_read[index].view(nodes[index].size)
        rows.append(next((r for r in range(1, h) if (written[r:] > read[:-r]).all()), h))
    return tuple(rows)


def group_by_step(
    nodes: tuple[Node, ...], computed: tuple[Tensor, ...], slots: tuple[Tensor, ...], zero_slots: list[int]
) -> Program:
    """The step program: per step, one invocation per node with the positions computed then."""
    num_steps = int(max(c.max() for c in computed[1:])) + 1
    steps: list[list[Invocation]] = [[] for _ in range(num_steps)]
    padded = [torch.cat([s, s.new_tensor([z])]) for s, z in zip(slots, zero_slots)]  # table index N: padding
    for index in range(INPUT + 1, len(nodes)):
        node = nodes[index]
        order = torch.argsort(computed[index], stable=True)  # positions ascending within a step
        counts = torch.bincount(computed[index], minlength=num_steps).tolist()

        def per_step(indices: Tensor) -> tuple[Tensor, ...]:
            return torch.split(indices, counts)

        positions, writes = per_step(order), per_step(slots[index][order])
        gathers = [[per_step(padded[s][t.table[order]]) for s in t.sources] for t in node.terms]  # [n, K]
        residual = per_step(slots[node.residual][order]) if node.residual is not None else None
        for step, count in enumerate(counts):
            if count:
                reads = tuple(tuple(g[step].reshape(-1) for g in term) for term in gathers)
                res = residual[step] if residual is not None else None
                steps[step].append(Invocation(index, positions[step], writes[step], reads, res))
    return tuple(tuple(s) for s in steps)


def build_plan(config: PixelCNNppConfig, device: torch.device | str = "cpu", *, ring: bool = True) -> Plan:
    """The plan for ``config`` (structure only, no weights), its index tensors on ``device``.

    ``ring=False`` keeps every row of every activation (to inspect them all). Cached per arguments,
    because a plan is a function of the config and takes a second or two to build.
    """
    return _build_plan(config, torch.device(device), ring)


@functools.lru_cache(maxsize=8)
def _build_plan(config: PixelCNNppConfig, device: torch.device, ring: bool) -> Plan:
    with torch.random.fork_rng(devices=[]):  # the throwaway model's init must not move the global RNG
        nodes = lower(PixelCNNpp(config))  # only its layer geometry is read
    ready = ready_steps(nodes)
    computed = compute_steps(nodes, ready)
    check_schedule(nodes, ready, computed)
    rows = ring_rows(nodes, computed) if ring else tuple(n.size[0] for n in nodes)
    slots = tuple(
        ((torch.arange(n.size[0]) % r).unsqueeze(1) * n.size[1] + torch.arange(n.size[1])).flatten()
        for n, r in zip(nodes, rows)
    )
    zero_slots = [r * n.size[1] for n, r in zip(nodes, rows)]

    def on_device(call: Invocation) -> Invocation:
        move = lambda t: t.to(device)  # noqa: E731
        gathers = tuple(tuple(move(g) for g in term) for term in call.gathers)
        residual = move(call.residual) if call.residual is not None else None
        return Invocation(call.node, move(call.positions), move(call.writes), gathers, residual)

    program = group_by_step(nodes, computed, slots, zero_slots)
    steps = tuple(tuple(on_device(call) for call in step) for step in program)
    return Plan(nodes, ready, computed, rows, tuple(s.to(device) for s in slots), steps)

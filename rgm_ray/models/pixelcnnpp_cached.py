"""Fast exact PixelCNN++ sampling with activation caches (after Ramachandran et al. 2017).

The naive sampler runs the whole network once per pixel. Here every activation of every layer is
computed exactly once, after its inputs are final and before anything reads it
(``pixelcnnpp_cache_plan`` builds that schedule per config), and kept in a per-node cache, so
sampling an image costs about one forward pass plus per-step Python overhead. Noise is consumed
exactly as ``sample_naive`` consumes it (the same ``draw_sampling_noise`` tensors, the same
``sample_pixels``) and every activation is the full network's up to float rounding, so the images
are the naive sampler's.

On rounding: the naive sampler's convs and these matmuls sum in different orders, so logits agree
to ~1e-7 in float32, and a draw within that distance of a quantisation boundary can round the
other way (measured: 1 pixel in 2e3 to 6e4, after which that image's later pixels differ too).
The naive sampler differs from itself as often across batch sizes and thread counts, because
PyTorch picks its conv kernels by batch size and threads, so float32 sampling is reproducible for
a fixed batch size and thread count only. A float64 model samples in float64 with both samplers,
where they agree bit for bit.

Caches are slot-major ``[S + 1, B, C]``: a ring of the node's most recent rows (``S`` slots, see
``pixelcnnpp_cache_plan``) plus one all-zero slot that padding taps read, so gathering a patch of
``K`` taps at ``n`` positions is one row ``index_select`` (contiguous copies) and one transpose into
the ``[n * B, K * C]`` matrix the conv weight multiplies. A node read through ``concat_elu`` also
keeps ``concat_elu`` of itself (``[S + 1, B, 2 C]``, computed once per position rather than once
per tap that reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgm_ray.models import logistic_mixture as lm
from rgm_ray.models.pixelcnnpp import PixelCNNpp, eval_no_grad
from rgm_ray.models.pixelcnnpp_cache_graph import INPUT, Term
from rgm_ray.models.pixelcnnpp_cache_plan import Invocation, Plan, build_plan
from rgm_ray.models.pixelcnnpp_noise import check_noise
from rgm_ray.progress import progress as show  # its argument ``progress`` is a switch


@dataclass(frozen=True)
class _BoundTerm:
    sources: tuple[Tensor, ...]  # cache (views) gathered from, concatenated on channels
    taps: int  # K
    weight: Tensor | None  # [K * C_in, C_out], rows in gathered order
    bias: Tensor | None  # [C_out]


@dataclass(frozen=True)
class _BoundNode:
    raw: Tensor | None  # [slots, B, C] the activation, if something reads it as is
    activated: Tensor | None  # [slots, B, 2 C] concat_elu of it, if something reads that
    terms: tuple[_BoundTerm, ...]
    residual: Tensor | None  # raw cache of the gated residual's input


def conv_matrix(module: nn.Module) -> tuple[Tensor, Tensor]:
    """Effective (weight-normalised) weight of a conv as a [kh * kw * C_in, C_out] matrix, and its bias.

    Rows run over taps (a, b) in raster order, then input channels: the layout of a gathered patch.
    """
    weight = module.weight  # computes weight norm (once per call under ``parametrize.cached``)
    if isinstance(module, nn.ConvTranspose2d):
        matrix = weight.permute(2, 3, 0, 1)  # [C_in, C_out, kh, kw] -> [kh, kw, C_in, C_out]
    elif isinstance(module, nn.Conv2d):
        matrix = weight.permute(2, 3, 1, 0)  # [C_out, C_in, kh, kw] -> [kh, kw, C_in, C_out]
    else:
        raise TypeError(f"expected a Conv2d or ConvTranspose2d, got {type(module).__name__}")
    return matrix.reshape(-1, matrix.shape[-1]).contiguous(), module.bias.detach()


def _gathered_rows(channels: list[int], taps: int) -> Tensor:
    """Weight rows in the order of patches gathered from per-source concat_elu caches.

    The layer sees, per tap, ``concat_elu(cat(sources))`` = [x_1 .. x_m, -x_1 .. -x_m] (each through
    elu); the caches hold [x_s, -x_s] per source, so a gathered tap is [x_1, -x_1, .., x_m, -x_m].
    """
    total, rows = sum(channels), []
    for tap in range(taps):
        base, offset = 2 * total * tap, 0
        for c in channels:
            rows.append(torch.arange(base + offset, base + offset + c))
            rows.append(torch.arange(base + total + offset, base + total + offset + c))
            offset += c
    return torch.cat(rows)


CacheShape = tuple[int, int]  # (slots, channels); times the batch size in between


def cache_shapes(plan: Plan, *, keep_raw: bool = False) -> list[tuple[CacheShape | None, CacheShape | None]]:
    """Per node, the (slots, channels) of its raw and its concat_elu cache, or None if unread.

    Only caches something reads exist, unless ``keep_raw`` keeps every raw activation. Times the
    batch size and the element size, this is the sampler's memory.
    """
    read_raw = set(range(len(plan.nodes))) if keep_raw else {INPUT, plan.output}  # canvas, mixture params
    read_activated: set[int] = set()
    for node in plan.nodes:
        for term in node.terms:
            (read_raw if term.activation == "none" else read_activated).update(term.sources)
        if node.residual is not None:
            read_raw.add(node.residual)
    return [
        (
            (plan.cache_slots(i), n.channels) if i in read_raw else None,
            (plan.cache_slots(i), 2 * n.channels) if i in read_activated else None,
        )
        for i, n in enumerate(plan.nodes)
    ]


def _bind(model: PixelCNNpp, plan: Plan, batch: int, *, keep_raw: bool = False) -> list[_BoundNode]:
    """Allocate zeroed caches [slots, B, C] for a batch and attach the model's current weights."""
    param = next(model.parameters())

    def zeros(shape: CacheShape | None) -> Tensor | None:
        return None if shape is None else param.new_zeros(shape[0], batch, shape[1])

    shapes = cache_shapes(plan, keep_raw=keep_raw)
    raw = [zeros(raw_shape) for raw_shape, _ in shapes]
    activated = [zeros(activated_shape) for _, activated_shape in shapes]
    bound = []
    for node, node_raw, node_activated in zip(plan.nodes, raw, activated):
        terms = tuple(_bind_term(model, plan, term, raw, activated) for term in node.terms)
        residual = raw[node.residual] if node.residual is not None else None
        bound.append(_BoundNode(node_raw, node_activated, terms, residual))
    return bound


def _bind_term(
    model: PixelCNNpp, plan: Plan, term: Term, raw: list[Tensor | None], activated: list[Tensor | None]
) -> _BoundTerm:
    if term.activation == "none":
        sources = tuple(raw[s] for s in term.sources)
    elif term.activation == "elu":  # the positive half of concat_elu
        sources = tuple(activated[s][..., : plan.nodes[s].channels] for s in term.sources)
    else:
        sources = tuple(activated[s] for s in term.sources)
    taps = term.table.shape[1]
    if term.module is None:
        return _BoundTerm(sources, taps, None, None)
    weight, bias = conv_matrix(model.get_submodule(term.module))
    if term.activation == "concat_elu" and len(term.sources) > 1:
        weight = weight[_gathered_rows([plan.nodes[s].channels for s in term.sources], taps)]
    return _BoundTerm(sources, taps, weight, bias)


def _evaluate(node: _BoundNode, call: Invocation) -> None:
    """Compute ``node`` at ``call``'s positions from its sources' caches and store it in its caches."""
    n, batch = call.writes.numel(), node.terms[0].sources[0].shape[1]
    total: Tensor | None = None
    for term, gathers in zip(node.terms, call.gathers):
        parts = [src.index_select(0, g) for src, g in zip(term.sources, gathers)]  # each [n * K, B, C_s]
        patches = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        if term.taps > 1:  # [n, K, B, C] -> [n, B, K, C]: one row per (position, image)
            patches = patches.view(n, term.taps, batch, -1).transpose(1, 2)
        patches = patches.reshape(n * batch, -1)  # [n * B, K * C]
        value = patches if term.weight is None else torch.addmm(term.bias, patches, term.weight)
        total = value if total is None else total + value
    assert total is not None
    if node.residual is not None:  # x + a * sigmoid(b), as GatedResnet
        a, b = total.chunk(2, dim=1)
        total = node.residual.index_select(0, call.residual).view(n * batch, -1) + a * torch.sigmoid(b)
    out = total.view(n, batch, -1)
    if node.raw is not None:
        node.raw.index_copy_(0, call.writes, out)
    if node.activated is not None:
        node.activated.index_copy_(0, call.writes, F.elu(torch.cat([out, -out], dim=2)))


def _run_step(bound: list[_BoundNode], plan: Plan, step: int) -> None:
    for call in plan.steps[step]:
        _evaluate(bound[call.node], call)


def _input_canvas(bound: list[_BoundNode], channels: int) -> Tensor:
    """The input cache with its constant ones channel set (the zero slot stays 0, like padding)."""
    canvas = bound[INPUT].raw  # [N + 1, B, C + 1]
    assert canvas is not None
    canvas[:-1, :, channels] = 1.0
    return canvas


def sample_cached(model: PixelCNNpp, mix_u: Tensor, pix_u: Tensor, *, progress: bool = False) -> Tensor:
    """Cached sampler: the contract and the images of ``sample_naive`` at about 1/(H*W) of its work.

    ``mix_u`` [B,H,W,K] and ``pix_u`` [B,H,W,C] come from ``draw_sampling_noise``; returns uint8
    [B,C,H,W] on the model's device. Runs in the model's dtype: bit for bit the naive images in
    float64, up to rare rounding flips in float32 (module docstring).
    """
    return run_plan(model, build_plan(model.config, model.device), mix_u, pix_u, progress=progress)


def run_plan(
    model: PixelCNNpp, plan: Plan, mix_u: Tensor, pix_u: Tensor, *, progress: bool = False
) -> Tensor:
    """``sample_cached`` with an explicit plan (e.g. one without ring caches)."""
    check_noise(model, mix_u, pix_u)
    device, cfg = model.device, model.config
    batch, pixels, channels = mix_u.shape[0], cfg.image_size**2, cfg.in_channels
    mix_u = mix_u.to(device).reshape(batch, pixels, -1)  # raster order: [B, N, K]
    pix_u = pix_u.to(device).reshape(batch, pixels, -1)  # [B, N, C]
    with eval_no_grad(model):
        bound = _bind(model, plan, batch)
        canvas = _input_canvas(bound, channels)
        params = bound[plan.output].raw  # [slots, B, P]
        param_slots = plan.slots[plan.output].tolist()  # pixel -> slot in the output's ring
        for step in show(range(pixels), disable=not progress, desc="cached sampling", unit="px"):
            _run_step(bound, plan, step)
            pixel = lm.sample_pixels(params[param_slots[step]], mix_u[:, step], pix_u[:, step])  # [B, C]
            canvas[step, :, :channels] = lm.to_unit_range(pixel)  # the canvas keeps every row
    image = canvas[:-1, :, :channels].reshape(cfg.image_size, cfg.image_size, batch, channels)
    return lm.to_uint8(image.permute(2, 3, 0, 1))


def scheduled_activations(model: PixelCNNpp, images: Tensor) -> dict[str, Tensor]:
    """Every node's activation [B,C,h,w] computed by the step schedule with ``images`` (uint8) as the canvas.

    Runs all steps, including those after the last pixel, so every position is filled; comparing
    the result with the full network's activations checks the tables, the ready steps and the
    per-position arithmetic layer by layer.
    """
    cfg = model.config
    model._check_shape(images)
    plan = build_plan(cfg, model.device, ring=False)
    with eval_no_grad(model):
        bound = _bind(model, plan, images.shape[0], keep_raw=True)
        canvas = _input_canvas(bound, cfg.in_channels)
        pixels = lm.to_unit_range(images.to(model.device)).flatten(2)  # [B, C, N]
        canvas[:-1, :, : cfg.in_channels] = pixels.permute(2, 0, 1)
        for step in range(len(plan.steps)):
            _run_step(bound, plan, step)
    return {
        node.name: b.raw[:-1].reshape(*node.size, -1, node.channels).permute(2, 3, 0, 1)
        for node, b in zip(plan.nodes, bound)
    }

"""PixelCNN++ lowered to a flat graph of gather-matmul nodes, the input of cached sampling.

Each node is one activation map of the network (a conv output, a gated-resnet block output, ...)
and computes, at any set of output positions, ``sum_t act(gather(sources_t, table_t)) @ W_t + b_t``
optionally followed by the gated residual ``x + a * sigmoid(b)``. That one form covers every layer:
padded and strided shifted convs, cropped transposed convs, the init shifts, the auxiliary ``Nin``
inputs (skip connections) and the output layer. Nodes hold module names, not weights, so a graph
depends only on the config; ``pixelcnnpp_cache_plan`` schedules it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rgm_ray.models.pixelcnnpp import NUM_RESOLUTIONS, PixelCNNpp
from rgm_ray.models.pixelcnnpp_cache_tables import (
    Size,
    conv_out_size,
    conv_table,
    transposed_conv_table,
)
from rgm_ray.models.pixelcnnpp_layers import DownShiftedConvTranspose2d

INPUT = 0  # node id of the input canvas: the image in [-1, 1] plus the constant ones channel


@dataclass(frozen=True)
class Term:
    """One summand of a node: gather ``sources`` (concatenated on channels), activate, multiply.

    ``module`` names the ``nn.Conv2d`` / ``nn.ConvTranspose2d`` whose (weight-normalised) weight and
    bias multiply the patches; ``None`` means the patches are the result (a shift).
    """

    sources: tuple[int, ...]
    table: Tensor  # [N_out, K] flat source positions; N_src is the zero slot
    activation: str  # "none", "elu" or "concat_elu", applied to the gathered patches
    module: str | None
    size: Size  # output grid
    channels: int  # output channels


@dataclass(frozen=True)
class Node:
    """An activation map; ``name`` is the model module whose output it equals, where one exists."""

    name: str
    size: Size
    channels: int
    terms: tuple[Term, ...]
    residual: int | None = None  # gated residual on this node's input (terms give 2 * channels)


def _inner_conv(module: nn.Module) -> nn.Conv2d | nn.ConvTranspose2d:
    inner = module.deconv if hasattr(module, "deconv") else getattr(module, "conv", None)
    if not isinstance(inner, (nn.Conv2d, nn.ConvTranspose2d)):
        raise TypeError(f"{type(module).__name__} is not a PixelCNN++ conv layer")
    return inner


def layer_table(module: nn.Module, in_size: Size) -> tuple[Tensor, Size]:
    """Gather table and output size of one PixelCNN++ conv layer on an ``in_size`` input.

    Handles ``DownShiftedConv2d`` / ``DownRightShiftedConv2d`` (any stride; zero padding
    ``module.pad``), ``Nin`` (1x1, no padding) and the two cropped transposed convs.
    """
    inner = _inner_conv(module)
    kernel, stride = (inner.kernel_size[0], inner.kernel_size[1]), inner.stride[0]
    if isinstance(inner, nn.ConvTranspose2d):
        crop_left = module.crop_left if isinstance(module, DownShiftedConvTranspose2d) else 0
        table = transposed_conv_table(in_size, kernel, stride, crop_left)
        return table, (stride * in_size[0], stride * in_size[1])
    left, right, top, bottom = getattr(module, "pad", (0, 0, 0, 0))
    out_size = conv_out_size(in_size, kernel, stride, (left, right, top, bottom))
    return conv_table(in_size, out_size, kernel, stride, top, left), out_size


class _Lowering:
    """Builds the node list by walking the model in the order of ``PixelCNNpp.forward``."""

    def __init__(self, model: PixelCNNpp):
        self.model = model
        s, c = model.config.image_size, model.config.in_channels
        self.nodes: list[Node] = [Node("input", (s, s), c + 1, ())]

    def node(self, name: str, terms: list[Term], residual: int | None = None) -> int:
        size, channels = terms[0].size, terms[0].channels
        if any(t.size != size or t.channels != channels for t in terms):
            raise AssertionError(f"{name}: terms disagree on output shape")
        if residual is not None:
            channels //= 2  # value and gate halves
            if (self.nodes[residual].size, self.nodes[residual].channels) != (size, channels):
                raise AssertionError(f"{name}: residual shape mismatch")
        self.nodes.append(Node(name, size, channels, tuple(terms), residual))
        return len(self.nodes) - 1

    def conv(self, name: str, sources: tuple[int, ...], activation: str = "none") -> Term:
        """Term of a shifted conv, a ``Nin`` or a shifted transposed conv applied to ``sources``."""
        module = self.model.get_submodule(name)
        inner = _inner_conv(module)
        in_size = self._source_size(sources, inner.in_channels, activation)
        table, out_size = layer_table(module, in_size)
        inner_name = "deconv" if isinstance(inner, nn.ConvTranspose2d) else "conv"
        return Term(sources, table, activation, f"{name}.{inner_name}", out_size, inner.out_channels)

    def layer(self, name: str, source: int) -> int:
        """Node of a conv layer module applied to one source without activation."""
        return self.node(name, [self.conv(name, (source,))])

    def shift(self, source: int, *, down: bool) -> Term:
        """``down_shift`` (one row down) or ``right_shift`` (one column right), zero-filled."""
        size, channels = self.nodes[source].size, self.nodes[source].channels
        table = conv_table(size, size, (1, 1), 1, top=int(down), left=int(not down))
        return Term((source,), table, "none", None, size, channels)

    def gated_resnet(self, name: str, x: int, aux: tuple[int, ...] = ()) -> int:
        terms = [self.conv(f"{name}.conv_in", (x,), "concat_elu")]
        if aux:
            terms.append(self.conv(f"{name}.aux", aux, "concat_elu"))
        h = self.node(f"{name}.h", terms)  # conv_in(ce(x)) + aux(ce(a)), before the second conv
        return self.node(name, [self.conv(f"{name}.conv_out", (h,), "concat_elu")], residual=x)

    def _source_size(self, sources: tuple[int, ...], in_channels: int, activation: str) -> Size:
        sizes = {self.nodes[s].size for s in sources}
        channels = sum(self.nodes[s].channels for s in sources) * (2 if activation == "concat_elu" else 1)
        if len(sizes) != 1 or channels != in_channels:
            raise AssertionError(f"sources {sources} do not fit a layer with {in_channels} input channels")
        return sizes.pop()


def lower(model: PixelCNNpp) -> tuple[Node, ...]:
    """The model's forward pass as nodes; mirrors ``PixelCNNpp.forward`` step by step."""
    low = _Lowering(model)
    u_init, above, left = (low.layer(name, INPUT) for name in ("u_init", "ul_init_above", "ul_init_left"))
    u = low.node("u", [low.shift(u_init, down=True)])
    ul = low.node("ul", [low.shift(above, down=True), low.shift(left, down=False)])

    u_skips, ul_skips = [u], [ul]
    for level in range(NUM_RESOLUTIONS):
        if level > 0:
            u, ul = low.layer(f"downsample_u.{level - 1}", u), low.layer(f"downsample_ul.{level - 1}", ul)
            u_skips.append(u)
            ul_skips.append(ul)
        for k in range(len(model.down_u[level])):
            u = low.gated_resnet(f"down_u.{level}.{k}", u)
            ul = low.gated_resnet(f"down_ul.{level}.{k}", ul, (u,))
            u_skips.append(u)
            ul_skips.append(ul)

    u, ul = u_skips.pop(), ul_skips.pop()
    for level in range(NUM_RESOLUTIONS):
        if level > 0:
            u, ul = low.layer(f"upsample_u.{level - 1}", u), low.layer(f"upsample_ul.{level - 1}", ul)
        for k in range(len(model.up_u[level])):
            u = low.gated_resnet(f"up_u.{level}.{k}", u, (u_skips.pop(),))
            ul = low.gated_resnet(f"up_ul.{level}.{k}", ul, (u, ul_skips.pop()))
    if u_skips or ul_skips:
        raise AssertionError("every down-pass activation must be consumed once on the way up")
    low.node("output", [low.conv("output", (ul,), "elu")])
    return tuple(low.nodes)

"""Cached PixelCNN++ sampling: layer tables, ready steps, per-layer activations and exactness.

Exactness is checked two ways. Directly: the naive sampler's uint8 images, for a few affordable
configs. And by the naive sampler's fixed point, which is as strict and costs one forward pass
instead of H*W: because the network is causal, ``images`` are what ``sample_naive`` returns for a
seed and batch size iff, batch by batch, every pixel equals ``sample_pixels`` of the parameters
the full network gives for ``images`` at that pixel, with that pixel's noise (the full pass computes
each of those parameters with exactly the arithmetic of the naive step that drew the pixel).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rgm_ray.bench.sampler import (
    bench_sampler,
    forward_flops,
    project_gpu_hours,
    project_sampling_hours,
)
from rgm_ray.data import load_dataset
from rgm_ray.models import logistic_mixture as lm
from rgm_ray.models import pixelcnnpp_cached
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig, eval_no_grad
from rgm_ray.models.pixelcnnpp_cache_graph import layer_table
from rgm_ray.models.pixelcnnpp_cache_plan import build_plan, check_schedule
from rgm_ray.models.pixelcnnpp_cache_tables import conv_table
from rgm_ray.models.pixelcnnpp_cached import (
    _bind,
    conv_matrix,
    run_plan,
    sample_cached,
    scheduled_activations,
)
from rgm_ray.models.pixelcnnpp_layers import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    GatedResnet,
    Nin,
    down_shift,
    right_shift,
)
from rgm_ray.models.pixelcnnpp_noise import draw_sampling_noise
from rgm_ray.models.pixelcnnpp_sampling import SAMPLERS, sample_naive, sample_pixelcnnpp
from rgm_ray.pipeline.presets import load_preset, section
from rgm_ray.seeding import torch_generator


def random_model(channels: int, size: int, nr_resnet: int, nr_filters: int = 8, seed: int = 0) -> PixelCNNpp:
    """A random model whose biases and weight-norm gains are perturbed, so no term is trivially zero."""
    cfg = PixelCNNppConfig(channels, size, nr_resnet, nr_filters, nr_logistic_mix=3, dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # weight init only
        model = PixelCNNpp(cfg)
    gen = torch_generator(seed, 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("bias"):
                param.add_(0.3 * noise)
            elif name.endswith("original0"):  # weight-norm gain g
                param.mul_(torch.exp(0.3 * noise))
    return model.eval()


def naive_redraw(model: PixelCNNpp, images: torch.Tensor, seed: int, first_index: int = 0) -> torch.Tensor:
    """What the naive sampler draws at every pixel of ``images`` (one batch) given the same earlier
    pixels: ``sample_pixels`` of one full forward pass with each pixel's own noise; [B,H,W,C] uint8."""
    mix_u, pix_u = draw_sampling_noise(len(images), model.config, seed, first_index=first_index)
    with eval_no_grad(model):
        canvas = lm.to_unit_range(images).to(next(model.parameters()).dtype)  # as the naive canvas
        params = model(canvas).permute(0, 2, 3, 1)  # [B,H,W,P]
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  [B,H,W,D] -> [B*H*W, D]
    return lm.sample_pixels(flat(params), flat(mix_u), flat(pix_u)).view(*params.shape[:3], -1)


def assert_naive_fixed_point(model: PixelCNNpp, images: torch.Tensor, seed: int, batch_size: int) -> None:
    """Assert ``images`` are what the naive sampler returns for this seed and batch size."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        redrawn = naive_redraw(model, chunk, seed, first_index=start)
        assert torch.equal(redrawn, chunk.permute(0, 2, 3, 1)), f"batch at {start} is not the naive sample"


# --- gather tables: one layer at a time -----------------------------------------------------------


def _gather_matmul(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The cached sampler's arithmetic for one layer at every position: gather patches, one matmul."""
    b, c, h, w = x.shape
    table, (ho, wo) = layer_table(layer, (h, w))
    cache = torch.cat([x.flatten(2).transpose(1, 2), x.new_zeros(b, 1, c)], dim=1)  # [B, N + 1, C]
    weight, bias = conv_matrix(layer.deconv if hasattr(layer, "deconv") else layer.conv)
    out = cache[:, table.reshape(-1)].reshape(b * ho * wo, -1) @ weight + bias
    return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    "layer",
    [
        DownShiftedConv2d(3, 5, (2, 3)),
        DownShiftedConv2d(3, 5, (2, 3), stride=2),
        DownShiftedConv2d(3, 5, (1, 3)),
        DownRightShiftedConv2d(3, 5, (2, 2)),
        DownRightShiftedConv2d(3, 5, (2, 2), stride=2),
        DownRightShiftedConv2d(3, 5, (2, 1)),
        DownShiftedConvTranspose2d(3, 5, (2, 3), stride=2),
        DownRightShiftedConvTranspose2d(3, 5, (2, 2), stride=2),
        Nin(3, 5),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_gather_matmul_equals_each_layer(layer):
    x = torch.randn(2, 3, 6, 10, generator=torch_generator(0))  # non-square: catches swapped axes
    with torch.no_grad():
        torch.testing.assert_close(_gather_matmul(layer, x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("down", [True, False])
def test_shift_tables_equal_the_shifts(down):
    x = torch.randn(2, 4, 5, 7, generator=torch_generator(1))
    table = conv_table((5, 7), (5, 7), (1, 1), 1, top=int(down), left=int(not down))
    cache = torch.cat([x.flatten(2).transpose(1, 2), x.new_zeros(2, 1, 4)], dim=1)
    shifted = cache[:, table[:, 0]].reshape(2, 5, 7, 4).permute(0, 3, 1, 2)
    assert torch.equal(shifted, down_shift(x) if down else right_shift(x))


# --- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels, size, nr_resnet", [(1, 28, 1), (3, 32, 2)])
def test_every_activation_is_computed_exactly_once_and_the_output_in_time(channels, size, nr_resnet):
    plan = build_plan(PixelCNNppConfig(channels, size, nr_resnet, 8, 3, 0.0))
    for index, node in enumerate(plan.nodes[1:], start=1):
        done = torch.cat([call.positions for step in plan.steps for call in step if call.node == index])
        assert torch.equal(done.sort().values, torch.arange(node.size[0] * node.size[1])), node.name
    # The output at pixel s is ready by step s, and exactly then when its left neighbour is a pixel;
    # it is computed at step s, just before the sampler reads it.
    ready = plan.ready[plan.output].view(size, size)
    raster = torch.arange(size * size).view(size, size)
    assert (ready <= raster).all() and torch.equal(ready[:, 1:], raster[:, 1:])
    assert torch.equal(plan.computed[plan.output], raster.flatten())
    # The u stream runs a row at a time: far fewer invocations than one per position and step.
    u_calls = [call for step in plan.steps for call in step if plan.nodes[call.node].name == "down_u.0.0"]
    assert len(u_calls) == size


def test_ring_caches_keep_few_rows_and_change_nothing():
    """Ring caches only change where activations live, not the arithmetic: identical float32 images."""
    model = random_model(3, 16, 2, seed=12)
    ring, full = build_plan(model.config), build_plan(model.config, ring=False)
    assert ring.ring_rows[0] == 16 and max(ring.ring_rows[1:]) <= 2 and set(full.ring_rows[1:]) == {4, 8, 16}
    mix_u, pix_u = draw_sampling_noise(2, model.config, seed=13)
    assert torch.equal(run_plan(model, ring, mix_u, pix_u), run_plan(model, full, mix_u, pix_u))


def test_schedule_check_rejects_early_and_out_of_order_computation():
    plan = build_plan(PixelCNNppConfig(1, 8, 1, 8, 3, 0.0))
    u = [n.name for n in plan.nodes].index("down_u.0.0")
    too_early = list(plan.computed)
    too_early[u] = plan.computed[u] - 1
    with pytest.raises(AssertionError, match="before its inputs are final"):
        check_schedule(plan.nodes, plan.ready, tuple(too_early))
    too_late = list(plan.computed)
    too_late[u] = plan.computed[u] + 8
    with pytest.raises(AssertionError, match="reads down_u.0.0 before it is computed"):
        check_schedule(plan.nodes, plan.ready, tuple(too_late))


def test_ready_steps_match_autograd_dependencies():
    """The output's ready step is 1 + the last pixel it depends on (0 if none), per autograd."""
    model = random_model(3, 12, 1)
    x = (torch.rand(1, 3, 12, 12, generator=torch_generator(2)) * 2 - 1).requires_grad_()
    params = model(x)
    expected = torch.zeros(144, dtype=torch.long)
    for p in range(144):
        (grad,) = torch.autograd.grad(params[0, :, p // 12, p % 12].sum(), x, retain_graph=True)
        depends = grad[0].abs().sum(dim=0).flatten().nonzero()
        expected[p] = int(depends.max()) + 1 if len(depends) else 0
    assert torch.equal(build_plan(model.config).ready[-1], expected)


# --- per-layer activations ------------------------------------------------------------------------


def full_activations(model: PixelCNNpp, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each plan node's activation from one ordinary forward pass (module hooks)."""
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o)))
        if name.endswith("conv_out"):  # its input is concat_elu(h) (dropout is off): keep h
            block = name.removesuffix(".conv_out")
            channels = module.conv.in_channels // 2
            hooks.append(module.register_forward_pre_hook(
                lambda m, i, block=block, c=channels: acts.__setitem__(f"{block}.h", _uncat_elu(i[0], c))))
    try:
        with eval_no_grad(model):
            acts["output"] = model(lm.to_unit_range(images))
    finally:
        for hook in hooks:
            hook.remove()
    acts["u"] = down_shift(acts["u_init"])
    acts["ul"] = down_shift(acts["ul_init_above"]) + right_shift(acts["ul_init_left"])
    return acts


LAYERS = (
    DownShiftedConv2d,
    DownRightShiftedConv2d,
    DownShiftedConvTranspose2d,
    DownRightShiftedConvTranspose2d,
    Nin,
)


def _uncat_elu(ce: torch.Tensor, channels: int) -> torch.Tensor:
    """Invert concat_elu: h = elu(h) where that is positive, else -elu(-h)."""
    pos, neg = ce[:, :channels], ce[:, channels:]
    return torch.where(pos > 0, pos, -neg)


@pytest.mark.parametrize("channels, size, nr_resnet", [(1, 28, 2), (3, 32, 1)])
def test_scheduled_activations_equal_the_full_forward_pass_layer_by_layer(channels, size, nr_resnet):
    model = random_model(channels, size, nr_resnet, seed=3)
    images = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8, generator=torch_generator(3))
    scheduled = scheduled_activations(model, images)
    full = full_activations(model, images)
    for name, activation in scheduled.items():
        if name != "input":
            torch.testing.assert_close(
                activation, full[name], atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )
    # Every block, its inner activation h and every layer outside the blocks is a node, and nothing else.
    blocks = {n for n, m in model.named_modules() if isinstance(m, GatedResnet)}
    layers = {
        n for n, m in model.named_modules()
        if isinstance(m, LAYERS) and not any(n.startswith(f"{b}.") for b in blocks)
    }
    assert set(scheduled) == blocks | layers | {f"{b}.h" for b in blocks} | {"input", "u", "ul"}


# --- exactness against the naive sampler -----------------------------------------------------------
# Bit-for-bit comparisons run in float64. In float32 the naive convs and the cached matmuls round
# differently (logits agree to ~1e-7), and a draw that close to a quantisation boundary rounds the
# other way (measured: 1 pixel in 2e3 to 6e4); the naive sampler differs from itself as often
# across batch sizes, since PyTorch picks its conv kernels by batch size. float32 is checked at the
# level it can be: activations layer by layer above, and the rate of differing draws below.


@pytest.mark.parametrize(
    "channels, size, nr_resnet, batch_size",
    [(1, 28, 1, 1), (1, 28, 2, 3), (3, 32, 1, 3), (3, 32, 2, 1)],  # every pair of factor levels once
)
def test_cached_samples_are_the_naive_samples(channels, size, nr_resnet, batch_size):
    """Checked through the naive sampler's fixed point (one forward pass instead of H*W)."""
    model = random_model(channels, size, nr_resnet, seed=4).double()
    images = sample_pixelcnnpp(model, batch_size, seed=5, batch_size=batch_size, sampler="cached")
    assert images.dtype == torch.uint8 and images.shape == (batch_size, channels, size, size)
    assert len(torch.unique(images)) > 20, "samples should not collapse"
    assert_naive_fixed_point(model, images, seed=5, batch_size=batch_size)


@pytest.mark.parametrize("channels, size, nr_resnet", [(3, 12, 2), (1, 16, 1)])
def test_cached_sampler_equals_naive_sampler_directly(channels, size, nr_resnet):
    model = random_model(channels, size, nr_resnet, seed=6).double()
    mix_u, pix_u = draw_sampling_noise(2, model.config, seed=7)
    naive = sample_naive(model, mix_u, pix_u)
    assert torch.equal(sample_cached(model, mix_u, pix_u), naive)
    assert torch.equal(sample_cached(model, mix_u[1:], pix_u[1:]), naive[1:])  # batch 1


def test_trained_tiny_model_cached_equals_naive():
    """A model trained briefly on real Fashion-MNIST has sharper, data-like distributions."""
    config = section(load_preset("tiny"), "pixelcnn")
    images = torch.from_numpy(load_dataset("fashion-mnist", "test").images[:16])
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = PixelCNNpp(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model.loss(images)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, f"the model should have learned something: {losses}"

    # float32, as in production: only draws that float rounding moves across a boundary differ.
    samples = sample_pixelcnnpp(model, 4, seed=9, batch_size=4, sampler="cached")
    differing = (naive_redraw(model, samples, seed=9) != samples.permute(0, 2, 3, 1)).any(dim=-1)
    assert differing.float().mean().item() < 1e-3

    model.double()  # bit for bit: against the naive sampler run, and its fixed point at batch sizes 2, 1
    mix_u, pix_u = draw_sampling_noise(1, config, seed=10)
    assert torch.equal(sample_cached(model, mix_u, pix_u), sample_naive(model, mix_u, pix_u))
    samples = sample_pixelcnnpp(model, 3, seed=10, batch_size=2, sampler="cached")
    assert_naive_fixed_point(model, samples, seed=10, batch_size=2)


# --- sampler contract -----------------------------------------------------------------------------


def test_cached_sampler_is_deterministic_batch_independent_and_registered():
    model = random_model(3, 12, 1, seed=10)
    model.train()
    first = sample_pixelcnnpp(model, 4, seed=11, batch_size=4, sampler="cached")
    assert model.training, "sampling must restore the training mode"
    assert first.shape == (4, 3, 12, 12) and SAMPLERS["cached"] is pixelcnnpp_cached.sample_cached
    assert torch.equal(first, sample_pixelcnnpp(model, 4, seed=11, batch_size=4, sampler="cached"))
    assert not torch.equal(first, sample_pixelcnnpp(model, 4, seed=12, batch_size=4, sampler="cached"))
    model.double()  # batch-size independence is exact in float64 (see above)
    reference = sample_pixelcnnpp(model, 4, seed=11, batch_size=4, sampler="cached")
    assert torch.equal(reference, sample_pixelcnnpp(model, 4, seed=11, batch_size=3, sampler="cached"))
    with pytest.raises(ValueError, match="do not fit"):
        sample_cached(model, torch.rand(1, 12, 12, 4), torch.rand(1, 12, 12, 3))


# --- benchmark helpers ----------------------------------------------------------------------------


def test_bench_sampler_reports_json_with_a_speedup():
    config = PixelCNNppConfig(3, 8, 1, 8, 3, 0.0)
    result = json.loads(json.dumps(bench_sampler(config, [2], naive_steps=1)))
    (row,) = result["results"]
    assert result["config"] == config.to_dict() and result["parameters"] > 0 and "naive" in result["method"]
    assert row["batch_size"] == 2 and row["cached_images"] == 2
    assert row["speedup"] == pytest.approx(row["cached_images_per_second"] / row["naive_images_per_second"])
    assert project_sampling_hours(0.36, 150_000) == pytest.approx(15.0)
    # On an accelerator: arithmetic at the sustained rate plus a per-step overhead per batch.
    flops = forward_flops(config)
    assert project_gpu_hours(config, sustained_tflops=1.0, n_images=3600) == pytest.approx(flops / 1e12)
    hours = project_gpu_hours(
        config, sustained_tflops=1.0, n_images=10, batch_size=4, step_overhead_seconds=0.1
    )
    assert hours == pytest.approx((10 * flops / 1e12 + 3 * 64 * 0.1) / 3600)  # 3 batches of 64 steps
    # The reported cache memory is what the sampler allocates.
    model = PixelCNNpp(config)
    with eval_no_grad(model):
        bound = _bind(model, build_plan(config), 2)
    allocated = sum(4 * c.numel() for node in bound for c in (node.raw, node.activated) if c is not None)
    assert 2 * result["cache_mb_per_image"] * 1e6 == pytest.approx(allocated)


def test_forward_flops_counts_the_layers_multiply_adds():
    """Against torch's FLOP counter, which also counts the taps on padding and the transposed convs'
    full (uncropped) outputs, so it is a little larger."""
    config = PixelCNNppConfig(3, 32, 1, 8, 3, 0.0)
    model = PixelCNNpp(config)
    with FlopCounterMode(display=False) as counter, eval_no_grad(model):
        model(torch.zeros(1, 3, 32, 32))
    assert 0.8 * counter.get_total_flops() < forward_flops(config) <= counter.get_total_flops()

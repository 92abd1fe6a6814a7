"""The GPU path (`unetscout.device.fast_path`: bf16 autocast + channels-last) exercised on the CPU.

The reference is always the float32, contiguous computation done here with plain autograd from
the same weights and batch; the code under test runs the fast path. bf16 keeps 8 bits of
mantissa (~3 significant digits), so the tolerances are set from measurements on this CPU
(`make_batch` batches, 32 px, batch 4), each with a margin, and stated where they are used.
"""

from __future__ import annotations

import copy

import pytest
import torch

from test_train import make_store, tiny_config
from unetscout.data.slice_store import SliceStore
from unetscout.device import fast_path
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.runs import train_mode
from unetscout.search.config import Backbone, resolve_search_config
from unetscout.search.lth import LTHSearch
from unetscout.train.augment import Augmenter, device_batch
from unetscout.train.losses import SegmentationLoss
from unetscout.train.presets import PRESETS
from unetscout.train.step import optimisation_step

SIZE, BATCH = 32, 4
CHANNELS_LAST = torch.channels_last
LOSS = SegmentationLoss.from_config(PRESETS["nnunet"])


def make_batch(seed: int, n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc (class 1, bright in channel 0) and a square (class 2, bright in channel 1) on noise,
    the kind of slice the tests' stores hold. Learnable structure matters: against labels that are
    pure noise the relative bf16 error of the gradient at initialisation measured 0.15-0.30,
    against 0.05-0.11 on these batches."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    label = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        cy, cx = torch.randint(8, SIZE - 8, (2,), generator=g).tolist()
        radius = int(torch.randint(3, 7, (1,), generator=g))
        label[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1
        sy, sx = torch.randint(6, SIZE - 6, (2,), generator=g).tolist()
        label[i][((yy - sy).abs() <= 3) & ((xx - sx).abs() <= 3) & (label[i] == 0)] = 2
    image = 0.3 * torch.randn(n, 2, SIZE, SIZE, generator=g)
    image[:, 0] += 2.0 * (label == 1)
    image[:, 1] += 2.0 * (label == 2)
    return image, label


def agreement(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> tuple[float, float]:
    """(cosine similarity, relative L2 error) of the flattened, concatenated tensors, in float64."""
    r = torch.cat([t.reshape(-1) for t in reference]).double()
    c = torch.cat([t.reshape(-1) for t in candidate]).double()
    return float(torch.nn.functional.cosine_similarity(r, c, dim=0)), float((c - r).norm() / r.norm())


def output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """The dtypes of every output the model's forward returns from now on (all deep-supervision heads)."""
    seen: list[torch.dtype] = []

    def hook(module, inputs, output):
        seen.extend(o.dtype for o in (output if isinstance(output, (list, tuple)) else [output]))
    model.register_forward_hook(hook)
    return seen


def plain_unet(deep_supervision: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("plain", in_channels=2, num_classes=3, image_size=SIZE, cap=16, deep_supervision=deep_supervision)
    return build_model(spec)


def reference_gradients(model: torch.nn.Module, image: torch.Tensor,
                        label: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """fp32 loss and d loss / d parameter by plain autograd (None for a parameter the forward leaves unused)."""
    loss = LOSS(model(image), label)
    return loss.detach(), list(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))


# -- the rule ------------------------------------------------------------------------------------

def test_fast_path_is_on_for_cuda_only():
    assert not fast_path(torch.device("cpu"))
    assert fast_path(torch.device("cuda")) and fast_path(torch.device("cuda:1"))


# -- the optimisation step ---------------------------------------------------------------------------

@pytest.mark.parametrize("clip", [False, True])
def test_fp32_step_is_autograd_clip_and_sgd(clip):
    """mixed_precision off (every CPU run): the step is exactly forward, fp32 loss, fresh gradients
    (none left for parameters the forward leaves unused), backward, the norm clipped
    (clip_grad_norm_'s rule: scale max / (norm + 1e-6) when below 1) and SGD."""
    model = plain_unet()
    image, label = make_batch(0)
    before = [p.detach().clone() for p in model.parameters()]
    ref_loss, grads = reference_gradients(copy.deepcopy(model), image, label)
    norm = torch.cat([g.reshape(-1) for g in grads if g is not None]).norm()
    grad_clip = float(norm) / 2 if clip else 0.0
    scale = grad_clip / (norm + 1e-6) if clip else 1.0
    lr = 0.1
    for p in model.parameters():  # a previous step's gradients: the step must start afresh
        p.grad = torch.ones_like(p)
    loss = optimisation_step(model, torch.optim.SGD(model.parameters(), lr=lr), LOSS, image, label,
                             grad_clip=grad_clip, mixed_precision=False)
    assert loss.dtype == torch.float32 and not loss.requires_grad
    torch.testing.assert_close(loss, ref_loss)
    for p, old, g in zip(model.parameters(), before, grads):
        if g is None:  # the unused deep-supervision heads: no gradient, no step
            assert p.grad is None and torch.equal(p.detach(), old)
            continue
        torch.testing.assert_close(p.grad, g * scale)
        torch.testing.assert_close(p.detach(), old - lr * g * scale)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_bf16_channels_last_step_agrees_with_fp32(deep_supervision):
    """The GPU path's step on the CPU: channels-last model and batch, forward under bf16 autocast.

    Measured over 10 seeds each with and without deep supervision (plain U-Net, widths 16):
    loss relative difference <= 5.7e-4, gradient cosine >= 0.9938, relative L2 error <= 0.111.
    The error is smallest at the head and grows towards the input layers. Asserted: loss 5e-3,
    cosine 0.99, relative L2 0.15.
    """
    model = plain_unet(deep_supervision)
    image, label = make_batch(1)
    ref_loss, grads = reference_gradients(copy.deepcopy(model), image, label)
    fast = copy.deepcopy(model).to(memory_format=CHANNELS_LAST)
    dtypes = output_dtypes(fast)
    loss = optimisation_step(fast, torch.optim.SGD(fast.parameters(), lr=0.1), LOSS,
                             image.contiguous(memory_format=CHANNELS_LAST), label,
                             grad_clip=0.0, mixed_precision=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}, "the forward did not run in bf16"
    assert loss.dtype == torch.float32
    assert abs(float(loss) - float(ref_loss)) <= 5e-3 * abs(float(ref_loss))
    assert [p.grad is None for p in fast.parameters()] == [g is None for g in grads]
    pairs = [(g, p.grad) for g, p in zip(grads, fast.parameters()) if g is not None]
    cosine, relative = agreement([g for g, _ in pairs], [f for _, f in pairs])
    assert cosine > 0.99 and relative < 0.15, (cosine, relative)


# -- the cell search ----------------------------------------------------------------------------------

SEARCH_SPEC = ModelSpec(backbone="lean", in_channels=2, num_classes=3, image_size=SIZE, width=8)


@pytest.fixture(scope="module")
def search_inputs(tmp_path_factory) -> tuple[Backbone, SliceStore]:
    """A slice store and a backbone trained 20 fp32 Adam steps on `make_batch` batches, in memory
    (a backbone at initialisation gives noisier architecture gradients: alpha's relative bf16
    error up to 0.17, beta's 0.35 over 6 seeds)."""
    root = tmp_path_factory.mktemp("fast_path")
    store = SliceStore(make_store(root / "slices"))
    config = tiny_config("paper")
    torch.manual_seed(0)
    net = build_model(SEARCH_SPEC)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(20):
        image, label = make_batch(100 + step)
        loss = LOSS(net(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Backbone(root, SEARCH_SPEC, net.state_dict(), config), store


@pytest.mark.slow
def test_search_loss_on_the_fast_path_agrees_with_fp32(search_inputs, tmp_path):
    """`SupernetSearch.loss` (shared by IAC and IAC-LTH) with mixed_precision on: a channels-last
    supernet under bf16 autocast, the loss in fp32; gradients of the cell weights and of alpha and
    beta against plain fp32 autograd on the same supernet built with the fast path off.

    Measured over 6 seeds (backbone, batch and search seed): loss relative difference <= 9.2e-4;
    cosine >= 0.9979 / 0.9939 / 0.9937 and relative L2 error <= 0.065 / 0.111 / 0.139 for the
    cells / alpha / beta. Asserted: loss 5e-3, cosine 0.99 and relative L2 0.2 for each.

    oneDNN is switched off here: with it (torch 2.14.1 on an AVX512-BF16 CPU) the weight gradient
    of a depthwise *dilated* convolution (the cells' dil_conv ops) in bf16 and channels-last is
    wrong (~100 % error, or inf) on feature maps of 31 px and more (24 px and less were right),
    while the contiguous bf16 and every fp32 one are right. A CPU kernel fault outside this
    package, and the GPU does not use oneDNN; torch's native CPU kernels take its place here.
    """
    backbone, store = search_inputs
    config = resolve_search_config({"batch_size": str(BATCH), "num_workers": "0"})
    cpu = torch.device("cpu")
    image, label = make_batch(7)
    with torch.backends.mkldnn.flags(enabled=False):
        reference = LTHSearch(backbone, store, tmp_path, config, cpu, {}, mixed_precision=False)
        fast = LTHSearch(backbone, store, tmp_path, config, cpu, {}, mixed_precision=True)
        assert fast.fast_path and not reference.fast_path and not LTHSearch(
            backbone, store, tmp_path, config, cpu, {}).fast_path  # the default follows the device
        convs = [p for p in fast.model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=CHANNELS_LAST) for p in convs)
        for search in (reference, fast):
            train_mode(search.model)  # as run(): the frozen backbone in eval, the cells in train mode
        cells = list(reference.model.skip_modules.parameters())
        ref_loss = SegmentationLoss.from_config(backbone.config)(reference.model(image), label)
        ref_grads = torch.autograd.grad(ref_loss, cells + [reference.arch.alpha, reference.arch.beta])

        dtypes = output_dtypes(fast.model)
        loss = fast.loss((image.contiguous(memory_format=CHANNELS_LAST), label))
        fast.backward(loss)
        loss, ref_loss = loss.detach(), ref_loss.detach()
    assert set(dtypes) == {torch.bfloat16} and loss.dtype == torch.float32
    assert abs(float(loss) - float(ref_loss)) <= 5e-3 * abs(float(ref_loss))
    fast_cells = list(fast.model.skip_modules.parameters())
    assert len(fast_cells) == len(cells) and all(p.grad is not None for p in fast_cells)
    groups = {"cells": (ref_grads[:-2], [p.grad for p in fast_cells]),
              "alpha": (ref_grads[-2:-1], [fast.arch.alpha.grad]), "beta": (ref_grads[-1:], [fast.arch.beta.grad])}
    for name, (expected, got) in groups.items():
        cosine, relative = agreement(list(expected), got)
        assert cosine > 0.99 and relative < 0.2, (name, cosine, relative)


# -- the batch on the device ------------------------------------------------------------------------

def test_device_batch_on_the_fast_path_is_the_plain_batch_channels_last():
    """What tests/test_augment.py does not cover: `device_batch` as the GPU path calls it (a loader's
    uint8 labels, the nnunet preset's augmentation, channels-last) gives the values of the plain
    call with the same seed, only laid out channels-last. test_augment.py already checks on CPU
    tensors with a CPU generator that the augmentation keeps shapes, dtypes and the label set and
    is reproducible for a seed; not repeated here."""
    image, label = make_batch(3, n=8)
    label = label.to(torch.uint8)
    config = PRESETS["nnunet"]
    cpu = torch.device("cpu")
    out = {}
    for channels_last in (False, True):
        augmenter = Augmenter(config, torch.Generator().manual_seed(5))
        out[channels_last] = device_batch(image, label, cpu, augmenter, channels_last=channels_last)
    (plain_image, plain_label), (fast_image, fast_label) = out[False], out[True]
    assert fast_image.is_contiguous(memory_format=CHANNELS_LAST) and fast_label.dtype == torch.long
    assert torch.equal(fast_image, plain_image) and torch.equal(fast_label, plain_label)
    assert not torch.equal(plain_image, image)  # the augmentation did run

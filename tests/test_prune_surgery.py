"""Physical channel removal (unetscout.prune.surgery) and the three criteria's choices.

After every pruning step the network must (1) have exactly the parameters of a U-Net built
fresh with the same widths, counted here from the widths by formula, and (2) compute what the
unpruned network computes with the removed channels' activations set to zero.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from unetscout.errors import UnetscoutError
from unetscout.models.describe import count_parameters
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.models.widths import UNetWidths
from unetscout.prune.criteria import (ActivationNorms, choose, dropout_probabilities, normalise_per_layer,
                                      stamp_choice, widest_block, without_channel)
from unetscout.prune.settings import CRITERIA
from unetscout.prune.surgery import prunable_blocks, remove_channel

IN, CLASSES, SIZE = 2, 3, 32


def parameters_by_formula(widths: UNetWidths, in_channels: int, classes: int) -> int:
    """3x3 conv (bias) + InstanceNorm (weight, bias) per prunable layer, 2x2 transposed convs
    (bias), 1x1 heads (bias), from the widths alone."""
    def conv(i: int, o: int) -> int:
        return i * o * 9 + o + 2 * o

    total, previous = 0, in_channels
    for stage in widths.encoder:
        for width in stage:
            total += conv(previous, width)
            previous = width
    n = widths.n_stages
    below = widths.encoder[-1][-1]
    for lv in range(n - 2, -1, -1):
        total += below * widths.up[lv] * 4 + widths.up[lv]
        previous = widths.up[lv] + widths.encoder[lv][-1]
        for width in widths.decoder[lv]:
            total += conv(previous, width)
            previous = width
        total += previous * classes + classes
        below = previous
    return total


def fresh_spec(widths: UNetWidths) -> ModelSpec:
    return ModelSpec("plain", IN, CLASSES, SIZE, stages=widths.n_stages, widths=widths.to_json(), deep_supervision=True)


def masked(original: torch.nn.Module, kept: dict[str, list[int]]) -> list:
    """Hooks zeroing, in the unpruned network, every channel the pruned one no longer has."""
    handles = []
    for name, block in prunable_blocks(original).items():
        mask = torch.zeros(block[0].out_channels)
        mask[kept[name]] = 1.0
        handles.append(block.register_forward_hook(lambda m, i, out, mask=mask: out * mask.view(1, -1, 1, 1)))
    return handles


def test_formula_matches_the_plain_unet_reference():
    # The reference count of docs/methods.md (7 stages, 3 -> 2, cap 8), from nnU-Net's own widths.
    spec = ModelSpec("plain", 3, 2, 256, cap=8)
    assert parameters_by_formula(UNetWidths.uniform(spec.features(), 2), 3, 2) == 20388
    assert count_parameters(build_model(spec)) == 20388


@pytest.mark.parametrize("top, paper_unet, paper_lunet", [(4, 354_000, 10_733), (2, 88_800, 2_831)])
def test_the_2d_study_keeps_the_papers_unet_to_lunet_ratio(top, paper_unet, paper_lunet):
    # The HarP runs (5 levels, 1 -> 2) are 3-D; the 2-D networks are about a third as large, but
    # the doubling U-Net over LUnet at the same top width stays the paper's ratio within 5 %.
    unet = parameters_by_formula(UNetWidths.doubling(top, 5, 2), 1, 2)
    lunet = parameters_by_formula(UNetWidths.uniform([top] * 5, 2), 1, 2)
    assert count_parameters(build_model(ModelSpec("lean", 1, 2, 64, width=top))) == lunet
    assert unet / lunet == pytest.approx(paper_unet / paper_lunet, rel=0.05)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_step_matches_a_fresh_build_and_the_masked_network(criterion):
    torch.manual_seed(0)
    model = build_model(fresh_spec(UNetWidths.doubling(4, 4, 2))).eval()
    original = copy.deepcopy(model)
    kept = {name: list(range(width)) for name, width in model.widths.layers()}
    rng = np.random.default_rng(1)
    x = torch.randn(3, IN, SIZE, SIZE)
    checked = 0
    for step in range(1, 61):
        norms = ActivationNorms(prunable_blocks(model))
        with torch.no_grad():
            model(x)
        ranks = norms.close()
        layer, channel = choose(criterion, ranks, model.widths, rng)
        remove_channel(model, layer, channel)
        kept[layer].pop(channel)
        assert [w for _, w in model.widths.layers()] == [len(kept[n]) for n, _ in model.widths.layers()]
        if step in (1, 2, 7, 20, 45, 60):
            checked += 1
            assert count_parameters(model) == parameters_by_formula(model.widths, IN, CLASSES)
            assert count_parameters(model) == count_parameters(build_model(model.spec))
            handles = masked(original, kept)
            with torch.no_grad():
                pruned_out, reference = model(x), original(x)
            for handle in handles:
                handle.remove()
            for a, b in zip(pruned_out, reference):  # every deep-supervision head
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            # the rebuilt spec loads the pruned weights: nothing but widths changed
            build_model(model.spec).load_state_dict(model.state_dict())
    assert checked == 6
    assert model.widths.total_channels() == UNetWidths.doubling(4, 4, 2).total_channels() - 60


def test_pruned_network_trains():
    """New parameters are real leaves: a gradient step after pruning reaches every one."""
    torch.manual_seed(0)
    model = build_model(fresh_spec(UNetWidths.doubling(2, 3, 2)))
    remove_channel(model, "enc2.1", 3)
    remove_channel(model, "enc0.1", 0)
    out = model(torch.randn(2, IN, SIZE, SIZE))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_refusals():
    model = build_model(fresh_spec(UNetWidths.uniform([1, 2, 2], 2)))
    with pytest.raises(UnetscoutError, match="enc0.1 has one channel left"):
        remove_channel(model, "enc0.1", 0)
    with pytest.raises(UnetscoutError, match="no channel 2"):
        remove_channel(model, "enc1.0", 2)
    with pytest.raises(UnetscoutError, match="no layer enc9.0"):
        remove_channel(model, "enc9.0", 0)


def test_activation_norms_are_stamps_l2_criterion():
    block = torch.nn.Identity()
    norms = ActivationNorms({"a": block})
    batches = [torch.randn(4, 3, 5, 5) for _ in range(2)]
    for batch in batches:
        block(batch)
    got = norms.close()["a"]
    # per channel: spatial L2 norm, mean over the batch, summed over batches, then |v| / ||v||
    raw = sum(np.sqrt((b.numpy() ** 2).sum(axis=(2, 3))).mean(axis=0) for b in batches)
    np.testing.assert_allclose(got, raw / np.sqrt((raw ** 2).sum()), rtol=1e-5)
    np.testing.assert_allclose(normalise_per_layer({"z": np.array([-3.0, 4.0])})["z"], [0.6, 0.8])


def test_stamp_takes_the_global_minimum_of_layers_that_can_lose_one():
    widths = UNetWidths(encoder=((2, 1), (3, 3)), decoder=((2, 2),), up=(2,))
    ranks = {"enc0.0": np.array([0.5, 0.4]), "enc0.1": np.array([0.01]),  # one channel: never chosen
             "enc1.0": np.array([0.3, 0.2, 0.9]), "enc1.1": np.array([0.6, 0.7, 0.8]),
             "dec0.0": np.array([0.25, 0.5]), "dec0.1": np.array([0.7, 0.7])}
    assert stamp_choice(ranks, widths) == ("enc1.0", 1)
    assert stamp_choice(without_channel(ranks, "enc1.0", 1), widths.with_layer("enc1.0", 2)) == ("dec0.0", 0)
    # stamp_random_in_block: a random channel of STAMP's block, enc1 (enc1.0 and enc1.1, 3 + 3)
    picks = {choose("stamp_random_in_block", ranks, widths, np.random.default_rng(s)) for s in range(60)}
    assert picks == {(layer, c) for layer in ("enc1.0", "enc1.1") for c in range(3)}


def test_per_conv_widest_ties_go_to_the_deepest_then_the_later():
    # One conv per block (PER_CONV_BLOCKS, the reading before issue 29): the widest conv.
    widths = UNetWidths(encoder=((4, 4), (2, 4), (1, 1)), decoder=((4, 1), (4, 3)), up=(1, 1))
    assert widest_block(widths, per_conv=True) == ["dec1.0"]   # depth 1: enc1.1 and dec1.0; dec1.0 comes later
    widths = widths.with_layer("dec1.0", 3)
    assert widest_block(widths, per_conv=True) == ["enc1.1"]
    flat = UNetWidths.uniform([1, 1, 1], 2)
    for per_conv in (True, False):
        with pytest.raises(UnetscoutError, match="every layer is down to one channel"):
            widest_block(flat, per_conv=per_conv)
    with pytest.raises(UnetscoutError, match="every layer is down to one channel"):
        stamp_choice({name: np.ones(1) for name, _ in flat.layers()}, flat)


def test_targeted_dropout_follows_the_rank_of_a_layers_channels():
    # ascending: a0 (0.1), a1 (0.2), b0 (0.9) -> positions from the top 2, 1, 0 -> a 1.5, b 0
    probabilities = dropout_probabilities({"a": np.array([0.1, 0.2]), "b": np.array([0.9])}, base=0.05)
    assert probabilities == pytest.approx({"a": 0.05, "b": 0.0})
    probabilities = dropout_probabilities({"a": np.array([0.1, 0.9]), "b": np.array([0.5])}, base=0.05)
    assert probabilities == pytest.approx({"a": 0.05, "b": 0.05})


def test_widths_round_trip_and_refuse_bad_values():
    widths = UNetWidths.doubling(4, 5, 2, scale=0.5)
    assert widths.stage_outputs() == [2, 4, 8, 16, 32]
    assert UNetWidths.from_json(widths.to_json()) == widths
    assert UNetWidths.doubling(4, 3, 2, scale=0.25).stage_outputs() == [1, 2, 4]
    with pytest.raises(UnetscoutError, match="integer >= 1"):
        UNetWidths.from_dict({"encoder": [[1, 0], [2, 2]], "decoder": [[1, 1]], "up": [1]})
    with pytest.raises(UnetscoutError, match="3 stages but the model has 5"):
        ModelSpec("plain", 1, 2, 64, widths=UNetWidths.uniform([1, 2, 3], 2).to_json())
    with pytest.raises(UnetscoutError, match="for the plain U-Net"):
        ModelSpec("lean", 1, 2, 64, widths=UNetWidths.uniform([1] * 5, 2).to_json())

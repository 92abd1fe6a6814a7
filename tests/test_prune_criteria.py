"""The Lean U-Net paper's blocks in the two simplified criteria (unetscout.prune.criteria):
a block is one stage's convs, the widest block has the most channels in total, and a random
channel of a block is uniform over the channels of its convs that can lose one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

import unetscout.prune.criteria as criteria
from unetscout.errors import UnetscoutError
from unetscout.models.widths import UNetWidths
from unetscout.prune.criteria import block_layers, block_of, blocks, choose, random_channel_in, widest_block

DRAWS = 8000


def uniform_ranks(widths: UNetWidths, low: str, channel: int = 0) -> dict[str, np.ndarray]:
    """Ranks where STAMP picks (`low`, `channel`): every other channel at 1."""
    ranks = {name: np.ones(width) for name, width in widths.layers()}
    ranks[low] = ranks[low].copy()
    ranks[low][channel] = 0.01
    return ranks


def draw_counts(criterion: str, widths: UNetWidths, ranks=None, seed: int = 0, n: int = DRAWS) -> Counter:
    rng = np.random.default_rng(seed)
    return Counter(choose(criterion, ranks, widths, rng) for _ in range(n))


def assert_uniform_over(counts: Counter, expected: set[tuple[str, int]]) -> None:
    """Only channels of the block, every one of them, with frequencies a uniform draw gives."""
    assert set(counts) == expected, "a channel outside the block was drawn, or one of the block never"
    observed = np.array([counts[key] for key in sorted(expected)])
    # chi-square against equal frequencies; p < 1e-4 would mean a biased draw
    assert stats.chisquare(observed).pvalue > 1e-4, observed
    share = observed / observed.sum()
    np.testing.assert_allclose(share, 1 / len(expected), rtol=0.15)


def channels_of(widths: UNetWidths, *layers: str) -> set[tuple[str, int]]:
    width = widths.layer_widths()
    return {(name, c) for name in layers for c in range(width[name])}


# ---- what a block is ----------------------------------------------------------------------------

def test_a_block_is_one_stage_of_the_encoder_or_the_decoder():
    widths = UNetWidths.doubling(2, 4, 2)
    assert blocks(widths) == {"enc0": ["enc0.0", "enc0.1"], "enc1": ["enc1.0", "enc1.1"],
                              "enc2": ["enc2.0", "enc2.1"], "enc3": ["enc3.0", "enc3.1"],
                              "dec2": ["dec2.0", "dec2.1"], "dec1": ["dec1.0", "dec1.1"],
                              "dec0": ["dec0.0", "dec0.1"]}
    assert block_of("enc3.1") == "enc3" and block_of("dec0.0") == "dec0"
    assert block_layers(widths, "dec1.1") == ["dec1.0", "dec1.1"]
    assert blocks(widths, per_conv=True) == {name: [name] for name, _ in widths.layers()}
    with pytest.raises(UnetscoutError, match="not a U-Net layer name"):
        block_of("up1")


# ---- the widest block ---------------------------------------------------------------------------

def test_the_widest_block_is_the_bottleneck_of_a_doubling_unet():
    assert widest_block(UNetWidths.doubling(4, 5, 2)) == ["enc4.0", "enc4.1"]


def test_the_widest_block_counts_all_its_channels_not_its_widest_conv():
    # enc1 = 9 + 1 = 10 has the widest conv, dec0 = 5 + 6 = 11 the most channels
    widths = UNetWidths(encoder=((2, 2), (9, 1), (3, 3)), decoder=((5, 6), (4, 4)), up=(1, 1))
    assert widest_block(widths) == ["dec0.0", "dec0.1"]
    assert widest_block(widths, per_conv=True) == ["enc1.0"]


def test_widest_block_ties_go_to_the_deepest_then_the_decoder():
    # totals: enc0 8, enc1 8, enc2 4, dec1 8, dec0 8 -> depth 1 (enc1, dec1) -> dec1, the later
    widths = UNetWidths(encoder=((4, 4), (5, 3), (2, 2)), decoder=((4, 4), (6, 2)), up=(1, 1))
    assert widest_block(widths) == ["dec1.0", "dec1.1"]
    # dec1 down to 7: enc1 (8) is the only depth-1 block left at 8
    assert widest_block(widths.with_layer("dec1.0", 5)) == ["enc1.0", "enc1.1"]
    # enc1 down to 7 too: depth 0 (enc0, dec0) -> dec0
    assert widest_block(widths.with_layer("dec1.0", 5).with_layer("enc1.1", 2)) == ["dec0.0", "dec0.1"]


def test_a_block_of_one_channel_convs_is_never_the_widest():
    # enc1: five convs at one channel (5 in all) cannot lose one; enc0 (2 + 2 = 4) goes
    widths = UNetWidths(encoder=((2, 2), (1, 1, 1, 1, 1)), decoder=((1, 1),), up=(1,))
    assert widest_block(widths) == ["enc0.0", "enc0.1"]


# ---- a random channel of the block --------------------------------------------------------------

def test_widest_block_draws_every_channel_of_the_block_equally_often():
    # bottleneck enc2 = 3 + 5 = 8 channels: each (conv, channel) about 1/8, enc2.0 about 3/8
    widths = UNetWidths(encoder=((2, 2), (3, 3), (3, 5)), decoder=((2, 2), (3, 3)), up=(2, 3))
    counts = draw_counts("widest_block", widths)
    assert_uniform_over(counts, channels_of(widths, "enc2.0", "enc2.1"))
    by_layer = Counter()
    for (layer, _), n in counts.items():
        by_layer[layer] += n
    assert by_layer["enc2.0"] / DRAWS == pytest.approx(3 / 8, abs=0.03)


def test_stamp_random_in_block_draws_from_the_block_of_stamps_layer():
    widths = UNetWidths(encoder=((2, 2), (4, 4), (8, 8)), decoder=((2, 2), (4, 6)), up=(2, 4))
    for low in ("dec1.1", "dec1.0"):                  # STAMP's pick in either conv of dec1
        ranks = uniform_ranks(widths, low, channel=3)
        assert criteria.stamp_choice(ranks, widths) == (low, 3)
        counts = draw_counts("stamp_random_in_block", widths, ranks, seed=1)
        assert_uniform_over(counts, channels_of(widths, "dec1.0", "dec1.1"))
    # an encoder pick stays in its encoder stage, not the decoder stage of its level
    counts = draw_counts("stamp_random_in_block", widths, uniform_ranks(widths, "enc1.0"), seed=2)
    assert_uniform_over(counts, channels_of(widths, "enc1.0", "enc1.1"))


def test_a_one_channel_conv_of_the_block_is_left_out_of_the_draw():
    # STAMP picks enc1.1 (4 channels); enc1.0 is down to one: only enc1.1's four are drawn
    widths = UNetWidths(encoder=((2, 2), (1, 4), (8, 8)), decoder=((2, 2), (4, 4)), up=(2, 4))
    counts = draw_counts("stamp_random_in_block", widths, uniform_ranks(widths, "enc1.1"), seed=3)
    assert_uniform_over(counts, channels_of(widths, "enc1.1"))
    with pytest.raises(UnetscoutError, match="every layer is at one channel"):
        random_channel_in(["enc1.0"], widths, np.random.default_rng(0))


def test_the_choice_always_lies_in_the_expected_block_while_pruning():
    """Removing channel after channel (widths updated as the loop does), every widest_block
    choice is in the block that is then the widest, every stamp_random_in_block choice in the
    block of STAMP's layer."""
    rng = np.random.default_rng(4)
    for criterion in ("widest_block", "stamp_random_in_block"):
        widths = UNetWidths.doubling(4, 4, 2)
        while widths.total_channels() > len(list(widths.layers())):
            ranks = {name: rng.random(width) for name, width in widths.layers()}
            expected = (widest_block(widths) if criterion == "widest_block"
                        else block_layers(widths, criteria.stamp_choice(ranks, widths)[0]))
            layer, channel = choose(criterion, ranks, widths, rng)
            width = widths.layer_widths()[layer]
            assert layer in expected and 0 <= channel < width and width > 1
            widths = widths.with_layer(layer, width - 1)


# ---- the reading before issue 29 ----------------------------------------------------------------

def test_per_conv_blocks_give_exactly_the_old_draws(monkeypatch):
    monkeypatch.setattr(criteria, "PER_CONV_BLOCKS", True)
    widths = UNetWidths(encoder=((2, 2), (3, 3), (3, 5)), decoder=((2, 2), (3, 3)), up=(2, 3))
    ours, old = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(50):   # the widest conv enc2.1, a channel drawn as rng.integers(its width)
        assert choose("widest_block", None, widths, ours) == ("enc2.1", int(old.integers(5)))
    ranks = uniform_ranks(widths, "dec1.0")
    for _ in range(50):
        assert choose("stamp_random_in_block", ranks, widths, ours) == ("dec1.0", int(old.integers(3)))

"""Training-step throughput: our plain U-Net against nnU-Net's own `PlainConvUNet`.

Both networks are built to the identical configuration (dynamic-network-architectures is the
peer; install it with `pip install --no-deps dynamic-network-architectures einops`), get the same
input batch, the same loss and the same optimiser, and are timed in interleaved rounds so that
machine noise hits both alike. Prints the median ratio ours / theirs (lower is better; target
<= 1.05). On CUDA both run under bf16 autocast with channels_last, as training does.

    python bench/train_step.py [--device cpu|cuda] [--size 64] [--cap 32] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model


def peer_model(spec: ModelSpec) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        input_channels=spec.in_channels, n_stages=spec.n_stages, features_per_stage=spec.features(),
        conv_op=nn.Conv2d, kernel_sizes=3, strides=spec.strides(), n_conv_per_stage=2,
        num_classes=spec.num_classes, n_conv_per_stage_decoder=2, conv_bias=True,
        norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True, "negative_slope": 1e-2},
        deep_supervision=False)


def make_step(model: nn.Module, image: torch.Tensor, label: torch.Tensor, device: torch.device):
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(image), label)
        loss.backward()
        optimiser.step()

    return step


def time_steps(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cap", type=int, default=32)
    parser.add_argument("--in-channels", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    spec = ModelSpec("plain", in_channels=args.in_channels, num_classes=args.classes,
                     image_size=args.size, cap=args.cap)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, args.in_channels, args.size, args.size, generator=generator)
    label = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=generator)
    image, label = image.to(device).contiguous(memory_format=memory_format), label.to(device)

    ours_model, theirs_model = build_model(spec), peer_model(spec)
    # Identical starting weights (same shapes in the same order), so both networks do the same
    # arithmetic on the same numbers and only the implementation differs.
    with torch.no_grad():
        for mine, peer in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            peer.copy_(mine)
    steps = {}
    for name, model in (("ours", ours_model), ("theirs", theirs_model)):
        model = model.to(device).to(memory_format=memory_format).train()
        steps[name] = make_step(model, image, label, device)
        steps[name]()  # warm-up: allocator, cudnn autotuning
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                (("ours", build_model(spec)), ("theirs", peer_model(spec)))}
    assert n_params["ours"] == n_params["theirs"], n_params

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for round_index in range(args.rounds):
        order = ("ours", "theirs") if round_index % 2 == 0 else ("theirs", "ours")
        for name in order:
            times[name].append(time_steps(steps[name], args.steps, device))
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    print(f"device {device}, plain U-Net cap {args.cap}, {spec.n_stages} stages, "
          f"{n_params['ours']:,} parameters, batch {args.batch} x {args.in_channels} x {args.size}^2")
    print(f"ours   {1000 * ours:8.1f} ms/step  ({args.batch / ours:7.1f} img/s)")
    print(f"theirs {1000 * theirs:8.1f} ms/step  ({args.batch / theirs:7.1f} img/s)  "
          f"[dynamic-network-architectures PlainConvUNet]")
    print(f"ratio ours/theirs: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()

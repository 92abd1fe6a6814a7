"""docs/extending.md's worked examples, applied as written to a copy of the package: each is a
two-file change, and the new skip module and backbone work everywhere a name is used."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, copy_workflow, snakemake, tiny_config

DOC = ROOT / "docs" / "extending.md"
SNIPPET = re.compile(r"```python\n# (?P<file>\S+), (?P<where>before|after): (?P<anchor>[^\n]+)\n(?P<code>.*?)```", re.S)


def snippets(section: str) -> list[re.Match]:
    """The placed snippets of one `## ` section of the page."""
    text = DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return list(SNIPPET.finditer(body))


def apply(root: Path, found: list[re.Match]) -> set[str]:
    """Insert every snippet into the copy at `root`; returns the files touched."""
    touched = set()
    for match in found:
        path = root / match["file"]
        lines = path.read_text().splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.strip().startswith(match["anchor"].strip())]
        assert len(hits) == 1, f"{match['file']}: anchor {match['anchor']!r} found {len(hits)} times"
        at = hits[0] + (1 if match["where"] == "after" else 0)
        lines[at:at] = [match["code"]]
        path.write_text("".join(lines))
        touched.add(match["file"])
    return touched


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> Path:
    """A copy of the workflow and the package with both examples applied."""
    root = copy_workflow(tmp_path_factory.mktemp("extended"), tiny_config())
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    root.joinpath("touched.json").write_text(json.dumps({
        section: sorted(apply(root, snippets(section))) for section in ("A skip module", "A backbone")}))
    return root


def run_python(root: Path, code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(root / "src"), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_each_example_is_a_two_file_change(extended):
    touched = json.loads((extended / "touched.json").read_text())
    assert touched == {"A skip module": ["src/unetscout/models/skips.py", "src/unetscout/names.py"],
                       "A backbone": ["src/unetscout/models/unet.py", "src/unetscout/names.py"]}


def test_the_new_skip_module_and_backbone_build_train_and_are_registered(extended):
    out = run_python(extended, """
        import json, torch
        from unetscout import names
        from unetscout.cli import build_parser
        from unetscout.models.spec import ModelSpec
        from unetscout.models.unet import build_model
        from unetscout.stats.figures import LABELS

        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="deep", in_channels=2, num_classes=3, image_size=32, cap=8, skip="se"))
        x = torch.randn(2, 2, 32, 32)
        logits = model(x)
        logits.mean().backward()
        encoder_convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        gates = [m for m in model.skip_modules]
        # the SE gate starts at weight 0: every skip is halved, and its gate gets a gradient
        skip = torch.randn(1, 8, 4, 4)
        half = gates[0](skip, torch.randn(1, 8, 4, 4))
        parser = build_parser()
        args = parser.parse_args(["train", "s", "--out", "o", "--backbone", "deep", "--cap", "8", "--preset", "paper",
                                  "--skip", "se"])
        print(json.dumps({
            "shape": list(logits.shape), "encoder_convs": len(encoder_convs), "stages": model.spec.n_stages,
            "gates": sorted({type(g).__name__ for g in gates}), "gate_grad": float(gates[0].gate.weight.grad.abs().sum()),
            "halved": bool(torch.allclose(half, skip * 0.5)),
            "backbone": args.backbone, "skip_methods": list(names.SKIP_METHODS), "label": LABELS["se"],
            "backbone_label": names.backbone_label("deep")}))
    """)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["shape"] == [2, 3, 32, 32]
    assert found["encoder_convs"] == 3 * found["stages"]     # three convs per stage, none elsewhere
    assert found["gates"] == ["SqueezeExciteSkip"]
    assert found["gate_grad"] > 0 and found["halved"]
    assert found["backbone"] == "deep"
    assert "se" in found["skip_methods"] and found["label"] == "SE gate"
    assert found["backbone_label"] == "Deep U-Net"


def test_the_workflow_plans_the_new_names(extended):
    config = yaml.safe_load((extended / "config" / "config.yaml").read_text())
    config["backbones"] = ["plain", "deep"]
    config["models"] = {"deep": {"cap": 16}}
    config["skips"] = {"search_backbones": ["deep"], "methods": ["se"]}
    (extended / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(extended, "-n", "-p")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--backbone deep --cap 16" in result.stdout
    assert re.search(r"--out results/\S+/skips/deep/paper/se/seed0 --backbone deep --cap 16 --skip se", result.stdout)
    # and the original package (no examples applied) still refuses them
    config["backbones"] = ["deep"]
    del config["models"]
    pristine = copy_workflow(extended.parent / "pristine", config)
    refused = snakemake(pristine, "-n")
    assert refused.returncode != 0 and "'deep' is not one of" in refused.stdout + refused.stderr


def test_an_encoder_unet_is_one_line_of_the_registry(tmp_path):
    root = tmp_path / "encoder"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    assert apply(root, snippets("An encoder U-Net")) == {"src/unetscout/names.py"}
    out = run_python(root, """
        import json
        import segmentation_models_pytorch as smp
        from unetscout.models.describe import describe_model
        from unetscout.models.spec import ModelSpec

        info = describe_model(ModelSpec(backbone="resnet34", in_channels=2, num_classes=3, image_size=64))
        reference = smp.Unet("resnet34", encoder_weights=None, in_channels=2, classes=3)
        print(json.dumps({"params": info["params"], "smp": sum(p.numel() for p in reference.parameters())}))
    """)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["params"] == found["smp"]

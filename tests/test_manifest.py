"""Tables and figures from the runs a manifest declares: undeclared runs on disk change nothing,
a missing or contradicting run is refused by name, one network is one unit, provenance.

The results trees are fabricated (patients.tsv and done.json written here), over a real slice
store so that the data digest is the one `unetscout slices` writes; expected values are
computed by hand in each test.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch

from unetscout.cli import main
from unetscout.data.slice_store import SliceStore
from unetscout.models.fingerprint import network_fingerprint
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.stats.manifest import config_digest, write_manifest
from unetscout.stats.tables.results import Results

PATIENTS = ["p1", "p2", "p3", "p4"]
TABLES = [f"table{n}" for n in range(1, 7)] + ["width_picks"]
CONFIG = {"seeds": [0], "train": {"paper": {"epochs": 4}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    assert main(["synth", "--out", str(root / "raw"), "--cases", "5", "--seed", "0"]) == 0
    assert main(["slices", str(root / "raw"), "--out", str(root / "slices"), "--size", "32", "--seed", "0"]) == 0
    return root / "slices"


def _run(path, dice, record):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"patient": PATIENTS, "dice": dice, "dice_lesion": dice}).to_csv(
        path / "patients.tsv", sep="\t", index=False)
    (path / "done.json").write_text(json.dumps(record))


def _record(digest, seed=0, epochs=4, network="netA", weights="w0"):
    return {"model": {"backbone": "plain"}, "config": {"preset": "paper", "seed": seed, "epochs": epochs},
            "data": digest, "network": {"architecture_sha256": network, "initial_weights_sha256": weights},
            "epochs": epochs}


def _expect(seed=0, epochs=4):
    return {"done.json": {"config": {"preset": "paper", "seed": seed, "epochs": epochs}, "data": True}}


@pytest.fixture()
def workdir(tmp_path, store, monkeypatch):
    """results/ with the store, two backbones (plain and lean: different networks) and their
    IAC runs for seed 0, and a manifest declaring exactly those runs."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(store, tmp_path / "results" / "syn" / "slices")
    digest = SliceStore(tmp_path / "results" / "syn" / "slices").data_digest()
    ds = tmp_path / "results" / "syn"
    _run(ds / "backbones/plain/paper/seed0", [0.5] * 4, _record(digest, network="netA"))
    _run(ds / "backbones/lean/paper/seed0", [0.5] * 4, _record(digest, network="netB"))
    # IAC deltas: plain .1 .2 .3 .4 (mean .25), lean -.1 .2 .3 .4 (mean .20)
    _run(ds / "skips/plain/paper/iac/seed0", [0.6, 0.7, 0.8, 0.9], _record(digest))
    _run(ds / "skips/lean/paper/iac/seed0", [0.4, 0.7, 0.8, 0.9], _record(digest))
    runs = [{"path": f"results/syn/{kind}/seed0", "dataset": "syn", "expect": _expect()}
            for kind in ("backbones/plain/paper", "backbones/lean/paper", "skips/plain/paper/iac",
                         "skips/lean/paper/iac")]
    write_manifest("results/manifest.json", "results", CONFIG,
                   {"syn": {"slices": "results/syn/slices", "files": []}}, runs)
    return tmp_path


def _tables(args, capsys):
    code = main(["tables", *args])
    return code, capsys.readouterr()


def _table_bytes(folder):
    return {name: (folder / f"{name}.{ext}").read_bytes() for name in TABLES for ext in ("csv", "md", "tex")}


def test_undeclared_runs_on_disk_change_no_table_and_are_named(workdir, capsys):
    code, _ = _tables(["--manifest", "results/manifest.json", "--out", "results/tables"], capsys)
    assert code == 0
    before = _table_bytes(workdir / "results" / "tables")
    table1 = pd.read_csv(workdir / "results" / "tables" / "table1.csv").set_index("method")
    assert table1.loc["iac", "delta_dice_mean"] == pytest.approx((0.25 + 0.20) / 2)
    assert table1.loc["iac", "n_backbones"] == 2
    # A seed the config no longer declares, and a dataset of another experiment: copies of real runs
    # with other numbers, so that reading them would change the tables.
    ds = workdir / "results" / "syn"
    shutil.copytree(ds / "skips/plain/paper/iac/seed0", ds / "skips/plain/paper/iac/seed1")
    shutil.copytree(ds / "backbones/plain/paper/seed0", ds / "backbones/plain/paper/seed1")
    pd.DataFrame({"patient": PATIENTS, "dice": [0.1] * 4}).to_csv(ds / "skips/plain/paper/iac/seed1/patients.tsv",
                                                                   sep="\t", index=False)
    shutil.copytree(ds, workdir / "results" / "other")
    code, captured = _tables(["--manifest", "results/manifest.json", "--out", "results/tables"], capsys)
    assert code == 0
    assert _table_bytes(workdir / "results" / "tables") == before
    left_out = [line for line in captured.err.splitlines() if "left out" in line]
    assert len(left_out) == 1
    for path in ("results/other", "results/syn/backbones/plain/paper/seed1", "results/syn/skips/plain/paper/iac/seed1"):
        assert path in left_out[0]
    assert "left out 3 run folder(s)" in left_out[0]
    # By hand on the folder, every run counts, and the command says it reads them all.
    code, captured = _tables(["results", "--out", "by_hand"], capsys)
    assert code == 0 and "no --manifest: reading every run under results" in captured.err
    assert _table_bytes(workdir / "by_hand") != before


def test_provenance_names_every_run_with_its_identity_digest(workdir, capsys):
    assert _tables(["--manifest", "results/manifest.json", "--out", "results/tables"], capsys)[0] == 0
    provenance = json.loads((workdir / "results" / "tables" / "provenance.json").read_text())
    assert provenance["config_sha256"] == config_digest(CONFIG) == hashlib.sha256(
        json.dumps(CONFIG, sort_keys=True).encode()).hexdigest()
    assert provenance["manifest"] == "results/manifest.json" and provenance["left_out"] == []
    assert provenance["unetscout"] and "git_commit" in provenance
    runs = {run["path"]: run["identity_sha256"] for run in provenance["runs"]}
    assert set(runs) == {"results/syn/backbones/plain/paper/seed0", "results/syn/backbones/lean/paper/seed0",
                         "results/syn/skips/plain/paper/iac/seed0", "results/syn/skips/lean/paper/iac/seed0"}
    record = json.loads((workdir / "results/syn/backbones/plain/paper/seed0/done.json").read_text())
    identity = {"done.json": {key: record[key] for key in ("model", "config", "data")}}
    assert runs["results/syn/backbones/plain/paper/seed0"] == hashlib.sha256(
        json.dumps(identity, sort_keys=True).encode()).hexdigest()
    # Rebuilt from the same runs: the same bytes, sidecar included (no time stamp).
    first = (workdir / "results" / "tables" / "provenance.json").read_bytes()
    shutil.rmtree(workdir / "results" / "tables")
    assert _tables(["--manifest", "results/manifest.json", "--out", "results/tables"], capsys)[0] == 0
    assert (workdir / "results" / "tables" / "provenance.json").read_bytes() == first


@pytest.mark.parametrize("damage, named, says", [
    # a declared run that is not on disk
    (lambda w: shutil.rmtree(w / "results/syn/skips/lean/paper/iac/seed0"),
     "results/syn/skips/lean/paper/iac/seed0", "declared in"),
    # trained with other settings and not rerun
    (lambda w: (w / "results/syn/backbones/lean/paper/seed0/done.json").write_text(
        json.dumps(_record("x", epochs=7))), "backbones/lean/paper/seed0/done.json", "records config.epochs = 7"),
    # trained on other data (the store was remade since)
    (lambda w: (w / "results/syn/backbones/lean/paper/seed0/done.json").write_text(
        json.dumps(_record("another digest"))), "backbones/lean/paper/seed0/done.json", "other data"),
    # an unfinished run
    (lambda w: (w / "results/syn/skips/plain/paper/iac/seed0/done.json").unlink(),
     "skips/plain/paper/iac/seed0/done.json", "not finished"),
])
def test_a_missing_or_contradicting_run_is_refused_by_name_and_nothing_is_written(workdir, capsys, damage, named,
                                                                                   says):
    damage(workdir)
    for args in (["--manifest", "results/manifest.json", "--out", "results/tables"],
                 ["--manifest", "results/manifest.json", "--check"]):
        code, captured = _tables(args, capsys)
        assert code == 2
        errors = [line for line in captured.err.splitlines() if line.startswith("unetscout: error:")]
        assert len(errors) == 1 and named in errors[0] and says in errors[0], captured.err
    assert not (workdir / "results" / "tables").exists()
    assert main(["figures", "--manifest", "results/manifest.json", "--out", "results/figures"]) == 2


def test_check_passes_on_agreeing_runs_and_writes_nothing(workdir, capsys):
    code, captured = _tables(["--manifest", "results/manifest.json", "--check"], capsys)
    assert code == 0 and "4 declared runs agree with the config" in captured.out
    assert not (workdir / "results" / "tables").exists()


def test_a_declared_value_must_match_in_type_and_number(workdir, capsys):
    """YAML gives 4 (int) or 0.01 (float); the run recorded them typed: equal numbers agree."""
    manifest = json.loads((workdir / "results/manifest.json").read_text())
    for run in manifest["runs"]:
        run["expect"]["done.json"]["config"]["epochs"] = 4.0
    (workdir / "results/manifest.json").write_text(json.dumps(manifest))
    assert _tables(["--manifest", "results/manifest.json", "--check"], capsys)[0] == 0
    for run in manifest["runs"]:
        run["expect"]["done.json"]["config"]["epochs"] = "5"
    (workdir / "results/manifest.json").write_text(json.dumps(manifest))
    assert _tables(["--manifest", "results/manifest.json", "--check"], capsys)[0] == 2


def test_one_network_is_one_unit(workdir, capsys):
    """lean recorded with plain's fingerprint and training: Table 1 counts one backbone, named
    plain=lean, whose deltas are the two entries' per-patient mean; Table 4 averages its searches
    into one run."""
    ds = workdir / "results" / "syn"
    record = json.loads((ds / "backbones/plain/paper/seed0/done.json").read_text())
    (ds / "backbones/lean/paper/seed0/done.json").write_text(json.dumps(record))
    for backbone, seconds in (("plain", 600.0), ("lean", 1200.0)):
        (ds / f"skips/{backbone}/paper/iac/seed0/search").mkdir()
        (ds / f"skips/{backbone}/paper/iac/seed0/search/search_summary.json").write_text(json.dumps(
            {"method": "iac", "epochs_run": 10, "search_seconds": seconds}))
    assert _tables(["results", "--out", "tables"], capsys)[0] == 0
    table1 = pd.read_csv(workdir / "tables" / "table1.csv").set_index("method")
    iac = table1.loc["iac"]
    assert iac["n_backbones"] == 1 and iac["backbones"] == "lean=plain"
    per_patient = [(0.1 - 0.1) / 2, 0.2, 0.3, 0.4]          # plain .1 .2 .3 .4, lean -.1 .2 .3 .4
    assert iac["delta_dice_mean"] == pytest.approx(sum(per_patient) / 4)
    assert iac["n_pairs"] == 4                               # one unit's patients, not eight
    assert "one network" in (workdir / "tables" / "table1.md").read_text()
    table4 = pd.read_csv(workdir / "tables" / "table4.csv").iloc[0]
    assert table4["iac_minutes"] == pytest.approx((600 + 1200) / 2 / 60) and table4["backbones"] == "lean=plain"
    # Another seed's initial weights (or another network) keep them apart.
    record["network"]["initial_weights_sha256"] = "w1"
    (ds / "backbones/lean/paper/seed0/done.json").write_text(json.dumps(record))
    assert _tables(["results", "--out", "tables"], capsys)[0] == 0
    assert pd.read_csv(workdir / "tables" / "table1.csv").set_index("method").loc["iac", "n_backbones"] == 2


def test_the_fingerprint_sees_the_network_not_its_name():
    def fingerprint(seed, **spec):
        torch.manual_seed(seed)
        return network_fingerprint(build_model(ModelSpec(in_channels=2, num_classes=3, image_size=32, **spec)))

    lean8, cap8 = fingerprint(0, backbone="lean", width=8), fingerprint(0, backbone="plain", cap=8)
    assert lean8 == cap8                                    # every cap <= 32 is a flat U-Net
    assert fingerprint(1, backbone="lean", width=8)["architecture_sha256"] == lean8["architecture_sha256"]
    assert fingerprint(1, backbone="lean", width=8)["initial_weights_sha256"] != lean8["initial_weights_sha256"]
    assert fingerprint(0, backbone="lean", width=4)["architecture_sha256"] != lean8["architecture_sha256"]
    assert fingerprint(0, backbone="plain", cap=16)["architecture_sha256"] != lean8["architecture_sha256"]


def test_training_records_the_fingerprint_of_its_start(store, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(store), "--out", str(out), "--backbone", "plain", "--cap", "4", "--preset", "paper",
            "--seed", "3", "--device", "cpu", "--set", "epochs=1", "--set", "iterations_per_epoch=1",
            "--set", "batch_size=2", "--set", "num_workers=0", "--set", "val_every=1"]
    assert main(args) == 0
    recorded = json.loads((out / "done.json").read_text())["network"]
    torch.manual_seed(3)
    spec = ModelSpec.load(out / "model.json")
    assert recorded == network_fingerprint(build_model(spec))


def test_results_view_sees_declared_paths_their_folders_and_their_insides(tmp_path):
    root = tmp_path / "results"
    results = Results(root, [root / "d" / "backbones" / "plain" / "paper" / "seed0"])
    assert results.visible(root / "d") and results.visible(root / "d" / "backbones" / "plain")
    assert results.visible(root / "d" / "backbones" / "plain" / "paper" / "seed0" / "patients.tsv")
    assert not results.visible(root / "d" / "backbones" / "plain" / "paper" / "seed1")
    assert not results.visible(root / "e") and not results.visible(tmp_path / "elsewhere")
    assert Results(root).visible(root / "anything")


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"), ('{"format": 9}', "not a unetscout manifest"),
                                        ('{"format": 1, "results": "results"}', "needs 'results'")])
def test_a_damaged_manifest_is_one_line_naming_it(workdir, capsys, text, says):
    (workdir / "results" / "manifest.json").write_text(text)
    code, captured = _tables(["--manifest", "results/manifest.json", "--out", "results/tables"], capsys)
    errors = [line for line in captured.err.splitlines() if line.startswith("unetscout: error:")]
    assert code == 2 and len(errors) == 1 and "results/manifest.json" in errors[0] and says in errors[0]
    assert not (workdir / "results" / "tables").exists()


def test_tables_takes_one_source(workdir, capsys):
    for args in (["--out", "t"], ["results", "--manifest", "results/manifest.json", "--out", "t"], ["results", "--check"]):
        with pytest.raises(SystemExit) as exit_:
            main(["tables", *args])
        assert exit_.value.code == 2

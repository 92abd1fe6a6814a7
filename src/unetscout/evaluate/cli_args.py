"""`unetscout evaluate`: argument parsing for the evaluation stage (registered in cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from unetscout.evaluate.predict import predict_split, summarise, write_patients_tsv

    patients = predict_split(args.model_dir, args.slices, split=args.split, checkpoint=args.checkpoint,
                             device=args.device, batch_size=args.batch_size,
                             allow_unfinished=args.allow_unfinished)
    write_patients_tsv(patients, args.out)
    print(summarise(patients))


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="per-patient Dice and HD95 of a trained model (patients.tsv)",
        description="Predict every slice of a split, reassemble each patient's 3-D stack and score it: "
                    "Dice from TP/FP/FN summed over the patient, HD95 in mm on the stack.")
    p.add_argument("model_dir", type=Path, help="trained model folder (model.json + best.pt / last.pt)")
    p.add_argument("slices", type=Path, help="slices folder made by `unetscout slices`")
    p.add_argument("--out", type=Path, required=True, help="output TSV, one row per patient")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to score (default test)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights (default best)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="slices per forward pass (default 64)")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="score a run without done.json (interrupted training) anyway; the table's "
                        "'unfinished' column says so")
    p.set_defaults(func=_cmd_evaluate)

# The Lean U-Net study (docs/methods.md#channel-pruning): prune the plain U-Net channel by
# channel while it trains, by each criterion, then train its baselines from scratch: U-Nets
# scaled in every layer, the pruned architectures at 75 / 50 / 25 % re-initialised, and LUnet.
# The evaluate rule scores each folder's model.json + best.pt (a prune run's: the step with the
# best validation Dice). A prune run's last.pt is undeclared, so a killed job resumes.

SNAPSHOT_FILES = [f"results/{{dataset}}/prune/{{criterion}}/{{preset}}/seed{{seed}}/at{pct}/model.json" for pct in SNAPSHOTS]


rule prune:
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
    output:
        done="results/{dataset}/prune/{criterion}/{preset}/seed{seed}/done.json",
        best="results/{dataset}/prune/{criterion}/{preset}/seed{seed}/best.pt",
        spec="results/{dataset}/prune/{criterion}/{preset}/seed{seed}/model.json",
        steps="results/{dataset}/prune/{criterion}/{preset}/seed{seed}/log.tsv",
        snapshots=SNAPSHOT_FILES,
    log:
        "logs/{dataset}/prune/{criterion}_{preset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/prune/{criterion}_{preset}_seed{seed}.tsv"
    wildcard_constraints:
        criterion="|".join(PRUNE_CRITERIA),
    params:
        out=lambda wildcards, output: Path(output.done).parent,
        top_width=PRUNE["top_width"],
        recovery_epochs=PRUNE["recovery_epochs"],
        channels_per_step=PRUNE["channels_per_step"],
        base_dropout=PRUNE["base_dropout"],
        collapse_fraction=PRUNE["collapse_fraction"],
        overrides=study_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=prune_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout prune {input.slices:q} --out {params.out:q} --criterion {wildcards.criterion:q}"
        " --preset {wildcards.preset:q} --seed {wildcards.seed:q} --top-width {params.top_width:q}"
        " --recovery-epochs {params.recovery_epochs:q} --channels-per-step {params.channels_per_step:q}"
        " --base-dropout {params.base_dropout:q} --collapse-fraction {params.collapse_fraction:q}"
        " {params.overrides} --device {params.device:q} > {log:q} 2>&1"


rule train_study_baseline:
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        pruned=retrained_source,
    output:
        done="results/{dataset}/prune_study/{model}/{preset}/seed{seed}/done.json",
        best="results/{dataset}/prune_study/{model}/{preset}/seed{seed}/best.pt",
        spec="results/{dataset}/prune_study/{model}/{preset}/seed{seed}/model.json",
    log:
        "logs/{dataset}/prune_study/{model}_{preset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/prune_study/{model}_{preset}_seed{seed}.tsv"
    wildcard_constraints:
        model=rf"{SCALED}\d+|{LUNET}\d+|{RETRAINED}({'|'.join(PRUNE_CRITERIA)})_\d+",
    params:
        out=lambda wildcards, output: Path(output.done).parent,
        model=study_model_arguments,
        overrides=study_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=study_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout train {input.slices:q} --out {params.out:q} {params.model} --preset {wildcards.preset:q}"
        " --seed {wildcards.seed:q} {params.overrides} --device {params.device:q} > {log:q} 2>&1"

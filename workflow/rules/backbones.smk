# Backbone stage: train each U-Net on the slices, then score it per patient on the test split.
# Training writes its resumable state (last.pt) next to the declared outputs but does not
# declare it, so Snakemake never deletes it: a killed or requeued job resumes.


rule train_backbone:
    priority: 10   # the searches wait for their backbone (see rule search in skips.smk)
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        selection=selection_input,
    output:
        done="results/{dataset}/backbones/{backbone}/{preset}/seed{seed}/done.json",
        best="results/{dataset}/backbones/{backbone}/{preset}/seed{seed}/best.pt",
        spec="results/{dataset}/backbones/{backbone}/{preset}/seed{seed}/model.json",
    log:
        "logs/{dataset}/train_backbone/{backbone}_{preset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/train_backbone/{backbone}_{preset}_seed{seed}.tsv"
    params:
        out=lambda wildcards, output: Path(output.done).parent,
        model=backbone_arguments,
        overrides=train_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=backbone_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout train {input.slices:q} --out {params.out:q} {params.model} --preset {wildcards.preset:q}"
        " --seed {wildcards.seed:q} {params.overrides} --device {params.device:q} > {log:q} 2>&1"


rule evaluate:
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        done="results/{dataset}/{run}/seed{seed}/done.json",
        spec="results/{dataset}/{run}/seed{seed}/model.json",
    output:
        "results/{dataset}/{run}/seed{seed}/patients.tsv",
    log:
        "logs/{dataset}/evaluate/{run}_seed{seed}.log",
    wildcard_constraints:
        run="(backbones|skips|width/sweep|prune|prune_study)/.+",
    params:
        model_dir=lambda wildcards, input: Path(input.done).parent,
        device=config["device"],
    resources:
        gpu=1,
    # Minutes each: on Slurm several run in one job (group-components in profiles/slurm).
    group:
        "evaluate"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout evaluate {params.model_dir:q} {input.slices:q} --out {output:q}"
        " --device {params.device:q} > {log:q} 2>&1"

# Skip stage: baseline skip modules trained end-to-end like the reference, and cells implanted
# into the frozen backbone: searched (full bilevel IAC, the accelerated IAC-LTH) or drawn at
# random (the baseline that tells whether the search beats chance). `search` of method random
# only draws the genotype.


rule train_skip:
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        selection=selection_input,
    output:
        done="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/done.json",
        best="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/best.pt",
        spec="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/model.json",
    log:
        "logs/{dataset}/train_skip/{backbone}_{preset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/train_skip/{backbone}_{preset}_{method}_seed{seed}.tsv"
    wildcard_constraints:
        method="|".join(BASELINE_SKIPS),
    params:
        out=lambda wildcards, output: Path(output.done).parent,
        model=backbone_arguments,
        overrides=train_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=skip_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout train {input.slices:q} --out {params.out:q} {params.model} --skip {wildcards.method:q}"
        " --preset {wildcards.preset:q} --seed {wildcards.seed:q} {params.overrides}"
        " --device {params.device:q} > {log:q} 2>&1"


rule search:
    # The searches and the cell trainings after them are the longest chain of the run: started
    # first among ready jobs (Snakemake's priority), they overlap the many short jobs instead of
    # running alone at the end (the default run: 2.5 minutes of one idle core without).
    priority: 20
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        backbone="results/{dataset}/backbones/{backbone}/{preset}/seed{seed}/done.json",
    output:
        genotype="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/search/genotype.json",
        summary="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/search/search_summary.json",
    log:
        "logs/{dataset}/search/{backbone}_{preset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/search/{backbone}_{preset}_{method}_seed{seed}.tsv"
    wildcard_constraints:
        method="|".join(CELL_METHODS),
    params:
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        out=lambda wildcards, output: Path(output.genotype).parent,
        overrides=search_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=search_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout search {params.backbone_dir:q} {input.slices:q} --method {wildcards.method:q}"
        " --out {params.out:q} --seed {wildcards.seed:q} {params.overrides}"
        " --device {params.device:q} > {log:q} 2>&1"


rule train_cell:
    priority: 10   # after its search, before the short jobs (see rule search)
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
        backbone="results/{dataset}/backbones/{backbone}/{preset}/seed{seed}/done.json",
        genotype="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/search/genotype.json",
    output:
        done="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/done.json",
        best="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/best.pt",
        spec="results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/model.json",
    log:
        "logs/{dataset}/train_cell/{backbone}_{preset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/train_cell/{backbone}_{preset}_{method}_seed{seed}.tsv"
    wildcard_constraints:
        method="|".join(CELL_METHODS),
    params:
        backbone_dir=lambda wildcards, input: Path(input.backbone).parent,
        out=lambda wildcards, output: Path(output.done).parent,
        device=config["device"],
    resources:
        gpu=1,
        runtime=cell_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout train-cell {params.backbone_dir:q} {input.slices:q} --genotype {input.genotype:q}"
        " --method {wildcards.method:q} --out {params.out:q} --seed {wildcards.seed:q}"
        " --device {params.device:q} > {log:q} 2>&1"


rule search_figures:
    input:
        "results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/search/search_summary.json",
    output:
        report(
            directory("results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}/search/figures"),
            patterns=["{name}.png"],
            caption="../report/search_figures.rst",
            category="Search",
            subcategory="{dataset} {backbone} {preset} {method}",
        ),
    log:
        "logs/{dataset}/search_figures/{backbone}_{preset}_{method}_seed{seed}.log",
    params:
        search_dir=lambda wildcards, input: Path(input[0]).parent,
    # Seconds each: on Slurm several run in one job (group-components in profiles/slurm).
    group:
        "search_figures"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout search-figures {params.search_dir:q} --out {output:q} > {log:q} 2>&1"

# Width stage (XTinyU-Net): score every cap at initialisation, pick the knee, and check the
# pick by training every cap (the width sweep).


rule score_widths:
    priority: 10   # XTinyU-Net's backbone and searches wait for the pick (rule search, skips.smk)
    input:
        lambda wildcards: slices_dir(wildcards.dataset),
    output:
        "results/{dataset}/width/scores.tsv",
    log:
        "logs/{dataset}/score_widths.log",
    benchmark:
        "benchmarks/{dataset}/score_widths.tsv"
    params:
        k=config["width"]["k"],
        seeds=" ".join(str(seed) for seed in config["width"]["seeds"]),
        device=config["device"],
    resources:
        gpu=1,
    # select_width follows in the same Slurm job: the xtiny backbone waits for both.
    group:
        "width_pick"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout score-widths {input:q} --out {output:q} --k {params.k:q} --seeds {params.seeds}"
        " --device {params.device:q} > {log:q} 2>&1"


rule select_width:
    priority: 10   # XTinyU-Net's backbone and searches wait for the pick (rule search, skips.smk)
    input:
        "results/{dataset}/width/scores.tsv",
    output:
        "results/{dataset}/width/selection.json",
    log:
        "logs/{dataset}/select_width.log",
    group:
        "width_pick"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout select-width {input:q} --out {output:q} > {log:q} 2>&1"


rule width_sweep:
    input:
        slices=lambda wildcards: slices_dir(wildcards.dataset),
    output:
        done="results/{dataset}/width/sweep/cap{cap}/{preset}/seed{seed}/done.json",
        best="results/{dataset}/width/sweep/cap{cap}/{preset}/seed{seed}/best.pt",
        spec="results/{dataset}/width/sweep/cap{cap}/{preset}/seed{seed}/model.json",
    log:
        "logs/{dataset}/width_sweep/cap{cap}_{preset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/width_sweep/cap{cap}_{preset}_seed{seed}.tsv"
    wildcard_constraints:
        cap=r"\d+",
    params:
        out=lambda wildcards, output: Path(output.done).parent,
        overrides=sweep_overrides,
        device=config["device"],
    resources:
        gpu=1,
        runtime=sweep_runtime,
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout train {input.slices:q} --out {params.out:q} --backbone plain --cap {wildcards.cap:q}"
        " --preset {wildcards.preset:q} --seed {wildcards.seed:q} {params.overrides}"
        " --device {params.device:q} > {log:q} 2>&1"


rule sweep_report:
    input:
        scores="results/{dataset}/width/scores.tsv",
        selection="results/{dataset}/width/selection.json",
        patients=sweep_inputs,
    output:
        table="results/{dataset}/width/sweep.tsv",
        summary="results/{dataset}/width/sweep.json",
        figure=report(
            "results/{dataset}/width/sweep.png",
            caption="../report/width_sweep.rst",
            category="Width selection",
        ),
    log:
        "logs/{dataset}/sweep_report.log",
    # With the tables and figures: one Slurm job at the end, not one per dataset.
    group:
        "summaries"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout sweep-report {input.patients:q} --scores {input.scores:q}"
        " --selection {input.selection:q}"
        " --out {output.table:q} --summary {output.summary:q} --figure {output.figure:q} > {log:q} 2>&1"

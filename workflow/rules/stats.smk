# Statistics stage: the papers' tables and summary figures, rebuilt from result files alone: the
# runs the manifest declares (common.smk's declared_runs), each checked against the config.

from unetscout.stats.manifest import write_manifest

TABLES = [f"table{number}" for number in range(1, 7)] + ["width_picks"]


# Written on the machine that runs Snakemake: a list of paths and settings, no computation.
rule manifest:
    output:
        MANIFEST,
    params:
        # The parameters are the declaration: the manifest is rewritten when they change.
        config_sha256=config_digest(config),
        datasets=declared_datasets(),
        runs=declared_runs(),
    log:
        "logs/manifest.log",
    localrule: True
    run:
        Path(log[0]).write_text(write_manifest(output[0], "results", config, params.datasets, params.runs))


rule tables:
    input:
        manifest=MANIFEST,
        evaluations=evaluation_targets,
        searches=search_summaries,
        widths=lambda wildcards: width_targets(),
    output:
        [
            report(
                f"results/tables/{name}.{ext}",
                caption=f"../report/{name}.rst",
                category="Tables",
                labels={"table": name, "format": ext},
            )
            if ext == "csv"
            else f"results/tables/{name}.{ext}"
            for name in TABLES
            for ext in ("csv", "md", "tex")
        ]
        + ["results/tables/provenance.json"],
    log:
        "logs/tables.log",
    group:
        "summaries"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout tables --manifest {input.manifest:q} --out results/tables > {log:q} 2>&1"


rule figures:
    input:
        manifest=MANIFEST,
        evaluations=evaluation_targets,
        searches=search_summaries,
        scores=lambda wildcards: [f"results/{d}/width/scores.tsv" for d in DATASETS],
        selections=lambda wildcards: [selection_json(d) for d in DATASETS],
    output:
        report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures.log",
    group:
        "summaries"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout figures --manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"

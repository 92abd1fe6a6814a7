# Statistics stage: the papers' tables and summary figures, rebuilt from result files alone.

TABLES = [f"table{number}" for number in range(1, 7)] + ["width_picks"]


rule tables:
    input:
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
        ],
    log:
        "logs/tables.log",
    group:
        "summaries"
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout tables results --out results/tables > {log:q} 2>&1"


rule figures:
    input:
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
        "unetscout figures results --out {output:q} > {log:q} 2>&1"

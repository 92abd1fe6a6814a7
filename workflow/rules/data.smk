# Data stage: synthetic generator or download -> nnU-Net raw folder -> 2-D slices.


rule synth:
    output:
        directory(f"resources/raw/{SYNTHETIC}"),
    log:
        f"logs/{SYNTHETIC}/synth.log",
    params:
        cases=config["synthetic"]["cases"],
        seed=config["synthetic"]["seed"],
        modality=config["synthetic"]["modality"],
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout synth --out {output:q} --cases {params.cases:q} --seed {params.seed:q}"
        " --modality {params.modality:q} > {log:q} 2>&1"


rule fetch:
    output:
        directory("resources/raw/{dataset}"),
    log:
        "logs/{dataset}/fetch.log",
    wildcard_constraints:
        dataset="|".join(REGISTRY_DATASETS) or "(?!x)x",
    params:
        from_dir=lambda wildcards: (
            shlex.join(["--from", config["fetch"]["from"][wildcards.dataset]])
            if wildcards.dataset in config["fetch"]["from"]
            else ""
        ),
        cache=config["fetch"]["cache"],
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout fetch {wildcards.dataset:q} --out {output:q} --cache {params.cache:q}"
        " {params.from_dir} > {log:q} 2>&1"


rule slices:
    input:
        raw_dir,
    output:
        directory("results/{dataset}/slices"),
    log:
        "logs/{dataset}/slices.log",
    params:
        size=config["slices"]["size"],
        image_fit=config["slices"]["image_fit"],
        seed=config["split"]["seed"],
        fractions=" ".join(str(f) for f in config["split"]["fractions"]),
    conda:
        "../../envs/unetscout.yaml"
    shell:
        "unetscout slices {input:q} --out {output:q} --size {params.size:q} --seed {params.seed:q}"
        " --fractions {params.fractions} --image-fit {params.image_fit:q} > {log:q} 2>&1"

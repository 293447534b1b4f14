# One job per method and ratio: parent -> one-shot pruned child (HF dir, meta.json, masks for sparse methods).
# Sheared-LLaMA trains the whole parent while learning its masks: on a cluster it gets training's GPUs
# and torchrun (pvs.resources.prune_stage); the other methods run layer by layer in one process.


rule prune:
    input:
        parent=f"{R}/models/parent",
        manifest=DATA.manifest,
        splits=SPLIT_FILES,
    output:
        directory(f"{R}/models/pruned/{{method}}/r{{ratio}}"),
    params:
        options=lambda wildcards: method_options(wildcards.method, config["prune"]),
        seed=config["seed"],
        launcher=lambda wildcards: launcher(prune_stage(wildcards.method)),
        ckpt=lambda wildcards: (
            f"--ckpt {R}/ckpt/pruned/{wildcards.method}/r{wildcards.ratio}"
            if prune_stage(wildcards.method) == "sheared"
            else ""
        ),
    log:
        f"{R}/logs/prune/{{method}}/r{{ratio}}.log",
    benchmark:
        f"{R}/benchmarks/prune/{{method}}/r{{ratio}}.tsv"
    resources:
        **PRUNE_RESOURCES,
    threads: config["threads_per_job"]
    shell:
        f"{{params.launcher}} -m pvs.prune --method {{wildcards.method}} --ratio {{wildcards.ratio}} --model {{input.parent}}"
        f" --data {R}/data --out {{output}} --config {CONFIG} --threads {{threads}} {{params.ckpt}} > {{log}} 2>&1"

# One job per method and ratio: parent -> one-shot pruned child (HF dir, meta.json, masks for sparse methods).
# What a method needs comes from its record in pvs.prune.registry: a method that trains the whole parent
# (Sheared-LLaMA's mask learning) gets training's GPUs, torchrun and a checkpoint directory; the others run
# layer by layer in one process. The params are the options that can change the method's result.


rule prune:
    input:
        parent=f"{R}/models/parent",
        manifest=DATA.manifest,
        memory=MEMORY_CHECK,
        splits=SPLIT_FILES,
    output:
        directory(f"{R}/models/pruned/{{method}}/r{{ratio}}"),
    params:
        options=lambda wildcards: method_options(wildcards.method, config["prune"]),
        seed=config["seed"],
        launcher=lambda wildcards: launcher(prune_stage(wildcards.method)),
        ckpt=lambda wildcards: (
            f"--ckpt {R}/ckpt/pruned/{wildcards.method}/r{wildcards.ratio}"
            if method_record(wildcards.method).trains_parent
            else ""
        ),
    conda:
        "../../envs/environment.yaml"
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

# Training, one trainer for every arm (python -m pvs.train): the parent P (pretrained in the DAG, or imported
# from an HF Llama checkpoint), the setting-3 budgets, and every child arm: retraining P-R_N, scratch S_N,
# S_{P+N} and S_F (pvs.study.ARMS says what each reads and how it starts).

if GPU_STUDY:  # every GPU job of the grid must fit its GPUs: checked on the CPU before any is submitted

    rule memory_check:
        output:
            f"{R}/memory/check.json",
        params:
            train=config["train"],
            cluster=config["cluster"],
            prune=config["prune"],
            evaluate=config["evaluate"],
            parent=config["parent"],
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/memory_check.log",
        benchmark:
            f"{R}/benchmarks/memory_check.tsv"
        localrule: True
        shell:
            f"{PY} -m pvs.memory --config {CONFIG} --json {{output}} > {{log}} 2>&1"


if config["parent"]["source"] == "train":

    rule train_parent:
        input:
            **lr_inputs("parent"),
            manifest=DATA.manifest,
            memory=MEMORY_CHECK,
            splits=SPLIT_FILES,
        output:
            directory(f"{R}/models/parent"),
        params:
            tokens=PARENT_TOKENS,
            arch=config["parent"]["arch"],
            recipe=SWEEP.recipe(SWEEP_RECIPE, "parent"),
            seed=config["seed"],
            lr=lr_arg("parent"),
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/train/parent.log",
        benchmark:
            f"{R}/benchmarks/train/parent.tsv"
        resources:
            **PARENT_RESOURCES,
        threads: 16  # capped at --cores locally
        shell:
            f"{launcher('parent')} -m pvs.train --arm parent --tokens {{params.tokens}} {{params.lr}} --data {R}/data --out {{output}}"
            f" --ckpt {R}/ckpt/parent --config {CONFIG} --threads {{threads}} > {{log}} 2>&1"

else:

    rule import_parent:
        input:
            manifest=DATA.manifest,
        output:
            directory(f"{R}/models/parent"),
        params:
            source=config["parent"]["pretrained"],
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/train/parent_import.log",
        benchmark:
            f"{R}/benchmarks/train/parent_import.tsv"
        shell:
            f"{PY} -m pvs.train.parent --pretrained {{params.source}} --out {{output}} --cache {R}/downloads > {{log}} 2>&1"


rule setting3_budget:
    input:
        pruned=f"{R}/models/pruned/{{method}}/r{{ratio}}",
    output:
        f"{R}/compute/setting3/{{method}}/r{{ratio}}/N{{budget}}.json",
    params:
        parent_tokens=PARENT_TOKENS,
    conda:
        "../../envs/environment.yaml"
    log:
        f"{R}/logs/compute/setting3/{{method}}/r{{ratio}}/N{{budget}}.log",
    benchmark:
        f"{R}/benchmarks/compute/setting3/{{method}}/r{{ratio}}/N{{budget}}.tsv"
    localrule: True
    shell:
        f"{PY} -m pvs.train.budget --pruned {{input.pruned}} --parent-tokens {{params.parent_tokens}}"
        f" --budget {{wildcards.budget}} --out {{output}} > {{log}} 2>&1"


rule train_child:
    input:
        unpack(child_train_inputs),
        manifest=DATA.manifest,
        memory=MEMORY_CHECK,
        splits=SPLIT_FILES,
    output:
        directory(f"{R}/models/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}"),
    params:
        tokens=child_tokens_arg,
        recipe=lambda wildcards: SWEEP.recipe(SWEEP_RECIPE, child_key(wildcards)),
        seed=child_seed,
        lr=lambda wildcards: lr_arg(child_key(wildcards)),
    conda:
        "../../envs/environment.yaml"
    log:
        f"{R}/logs/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}.tsv"
    resources:
        **CHILD_RESOURCES,
    threads: config["threads_per_job"]
    shell:
        f"{launcher('child')} -m pvs.train --arm {{wildcards.arm}} {{params.tokens}} {{params.lr}} --seed {{params.seed}} --init {{input.init}}"
        f" --data {R}/data --out {{output}} --config {CONFIG} --threads {{threads}}"
        f" --ckpt {R}/ckpt/{{wildcards.arm}}/{{wildcards.method}}/r{{wildcards.ratio}}/N{{wildcards.budget}}{{wildcards.replica}}"
        f" > {{log}} 2>&1"

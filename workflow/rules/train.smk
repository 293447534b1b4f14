# Training, one trainer for every arm (python -m pvs.train): the parent P (pretrained in the DAG, or imported
# from an HF Llama checkpoint), the setting-3 budgets, and every child arm: retraining P-R_N, scratch S_N,
# S_{P+N} and S_F (pvs.study.ARMS says what each reads and how it starts).
#
# The learning-rate sweep (pvs.sweep: keys, runs, paths): sweep runs of the parent and of the children, each
# scored on the development split, then one chosen LR per key (python -m pvs.train.lr_choose) and the sweep
# table. The train rules (train.smk) take a swept key's chosen file as an input (--lr-from) and a fixed LR
# (train.lr_per_arm) as a param (--lr), so a changed sweep re-runs exactly the jobs of its key. Its input
# functions are in common.smk.

if SWEEP.runs():

    rule lr_sweep_parent:
        input:
            manifest=DATA.manifest,
            memory=MEMORY_CHECK,
            splits=SPLIT_FILES,
        output:
            metrics=f"{R}/lr/sweep/parent/lr{{lr}}.json",
            model=temp(directory(f"{R}/lr/sweep/parent/lr{{lr}}")),
        params:
            tokens=SWEEP.parent_tokens,
            arch=config["parent"]["arch"],
            recipe=SWEEP.recipe(SWEEP_RECIPE, "parent"),
            seed=config["seed"],
            val_windows=config["evaluate"]["val_windows"],
        wildcard_constraints:
            lr="[0-9.e+-]+",
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/lr/sweep/parent/lr{{lr}}.log",
        benchmark:
            f"{R}/benchmarks/lr/sweep/parent/lr{{lr}}.tsv"
        resources:
            **SWEEP_PARENT_RESOURCES,
        threads: 16 if GPU_STUDY else config["threads_per_job"]  # on CPUs the sweep's runs fill the cores side by side
        priority: 10  # every later run of its key waits for the whole sweep: schedule it before them
        shell:
            f"{launcher('parent')} -m pvs.train --arm parent --tokens {{params.tokens}} --lr {{wildcards.lr}}"
            f" --eval-split dev --eval-out {{output.metrics}} --data {R}/data --out {{output.model}}"
            f" --ckpt {R}/ckpt/lr/parent/lr{{wildcards.lr}} --config {CONFIG} --threads {{threads}} > {{log}} 2>&1"

    rule lr_sweep_child:
        input:
            init=f"{R}/models/pruned/{{method}}/r{{ratio}}",
            manifest=DATA.manifest,
            memory=MEMORY_CHECK,
            splits=SPLIT_FILES,
        output:
            metrics=f"{R}/lr/sweep/{{arm}}/{{method}}/r{{ratio}}/lr{{lr}}.json",
            model=temp(directory(f"{R}/lr/sweep/{{arm}}/{{method}}/r{{ratio}}/lr{{lr}}")),
        params:
            tokens=SWEEP.tokens,
            recipe=lambda wildcards: SWEEP.recipe(SWEEP_RECIPE, child_key(wildcards)),
            seed=config["seed"],
            val_windows=config["evaluate"]["val_windows"],
        wildcard_constraints:
            arm="retrain|scratch",
            lr="[0-9.e+-]+",
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/lr/sweep/{{arm}}/{{method}}/r{{ratio}}/lr{{lr}}.log",
        benchmark:
            f"{R}/benchmarks/lr/sweep/{{arm}}/{{method}}/r{{ratio}}/lr{{lr}}.tsv"
        resources:
            **SWEEP_CHILD_RESOURCES,
        threads: config["threads_per_job"]
        priority: 10  # every later run of its key waits for the whole sweep: schedule it before them
        shell:
            f"{launcher('child')} -m pvs.train --arm {{wildcards.arm}} --tokens {{params.tokens}} --lr {{wildcards.lr}}"
            f" --seed {{params.seed}} --init {{input.init}} --eval-split dev --eval-out {{output.metrics}}"
            f" --data {R}/data --out {{output.model}} --config {CONFIG} --threads {{threads}}"
            f" --ckpt {R}/ckpt/lr/{{wildcards.arm}}/{{wildcards.method}}/r{{wildcards.ratio}}/lr{{wildcards.lr}}"
            f" > {{log}} 2>&1"

    rule lr_choose:
        input:
            lambda wildcards: [f"{R}/{run.metrics_path}" for run in SWEEP.runs(wildcards.key)],
        output:
            f"{R}/lr/chosen/{{key}}.json",
        wildcard_constraints:
            key="|".join(SWEEP.swept_keys).replace(".", r"\."),
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/lr/chosen/{{key}}.log",
        benchmark:
            f"{R}/benchmarks/lr/chosen/{{key}}.tsv"
        localrule: True
        shell:
            f"{PY} -m pvs.train.lr_choose pick --key {{wildcards.key}} --metrics {{input}} --out {{output}} > {{log}} 2>&1"


if SWEEP.active:

    rule lr_table:
        input:
            [f"{R}/{chosen_path(key)}" for key in SWEEP.swept_keys],
        output:
            chosen=f"{R}/{CHOSEN_JSON}",
            md=f"{R}/{SWEEP_MD}",
            csv=f"{R}/{SWEEP_CSV}",
        params:
            lrs={key: SWEEP.lr_param(key) for key in SWEEP.keys},
            sources={key: SWEEP.source(key) for key in SWEEP.keys},
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/lr/table.log",
        benchmark:
            f"{R}/benchmarks/lr/table.tsv"
        localrule: True
        shell:
            f"{PY} -m pvs.train.lr_choose table --config {CONFIG} --chosen {{input}} --out {R} > {{log}} 2>&1"



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

# Retraining P-R_N, scratch S_N, S_{P+N} and S_F: one trainer, the arm decides data and initialization.


rule setting3_budget:
    input:
        pruned=f"{R}/models/pruned/{{method}}/r{{ratio}}",
    output:
        f"{R}/compute/setting3/{{method}}/r{{ratio}}/N{{budget}}.json",
    params:
        parent_tokens=PARENT_TOKENS,
    log:
        f"{R}/logs/compute/setting3/{{method}}/r{{ratio}}/N{{budget}}.log",
    shell:
        f"{PY} -m pvs.compute --pruned {{input.pruned}} --parent-tokens {{params.parent_tokens}}"
        f" --budget {{wildcards.budget}} --out {{output}} > {{log}} 2>&1"


rule train_child:
    input:
        unpack(child_inputs),
        manifest=DATA.manifest,
        splits=SPLIT_FILES,
    output:
        directory(f"{R}/models/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}"),
    params:
        tokens=child_tokens_arg,
        recipe=result_recipe(config["train"]),
        seed=child_seed,
    log:
        f"{R}/logs/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}{{replica}}.tsv"
    resources:
        **CHILD_RESOURCES,
    threads: config["threads_per_job"]
    shell:
        f"{launcher('child')} -m pvs.train --arm {{wildcards.arm}} {{params.tokens}} --seed {{params.seed}} --init {{input.init}}"
        f" --data {R}/data --out {{output}} --config {CONFIG} --threads {{threads}}"
        f" --ckpt {R}/ckpt/{{wildcards.arm}}/{{wildcards.method}}/r{{wildcards.ratio}}/N{{wildcards.budget}}{{wildcards.replica}}"
        f" > {{log}} 2>&1"

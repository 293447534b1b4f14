# Retraining P-R_N, scratch S_N and S_{P+N}: one trainer, the arm decides data and initialization.


rule train_child:
    input:
        init=f"{R}/models/pruned/{{method}}/r{{ratio}}",
        manifest=DATA.manifest,
        splits=DATA.splits,
    output:
        directory(f"{R}/models/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}"),
    params:
        tokens=child_tokens,
        recipe=config["train"],
        seed=config["seed"],
    log:
        f"{R}/logs/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/{{method}}/r{{ratio}}/N{{budget}}.tsv"
    threads: config["threads_per_job"]
    shell:
        f"{PY} -m pvs.train --arm {{wildcards.arm}} --tokens {{params.tokens}} --init {{input.init}}"
        f" --data {R}/data --out {{output}} --config {CONFIG} --threads {{threads}}"
        f" --ckpt {R}/ckpt/{{wildcards.arm}}/{{wildcards.method}}/r{{wildcards.ratio}}/N{{wildcards.budget}}"
        f" > {{log}} 2>&1"

# The parent P: pretrained in the DAG on parent.tokens, or imported from an HF Llama checkpoint.

DATA = rules.prepare_data.output

if config["parent"]["source"] == "train":

    rule train_parent:
        input:
            manifest=DATA.manifest,
            splits=SPLIT_FILES,
        output:
            directory(f"{R}/models/parent"),
        params:
            tokens=PARENT_TOKENS,
            arch=config["parent"]["arch"],
            recipe=result_recipe(config["train"]),
            seed=config["seed"],
        log:
            f"{R}/logs/train/parent.log",
        benchmark:
            f"{R}/benchmarks/train/parent.tsv"
        resources:
            **PARENT_RESOURCES,
        threads: 16  # capped at --cores locally
        shell:
            f"{launcher('parent')} -m pvs.train --arm parent --tokens {{params.tokens}} --data {R}/data --out {{output}}"
            f" --ckpt {R}/ckpt/parent --config {CONFIG} --threads {{threads}} > {{log}} 2>&1"

else:

    rule import_parent:
        input:
            manifest=DATA.manifest,
        output:
            directory(f"{R}/models/parent"),
        params:
            source=config["parent"]["pretrained"],
        log:
            f"{R}/logs/train/parent_import.log",
        benchmark:
            f"{R}/benchmarks/train/parent_import.tsv"
        shell:
            f"{PY} -m pvs.train.parent --pretrained {{params.source}} --out {{output}} --cache {R}/downloads > {{log}} 2>&1"

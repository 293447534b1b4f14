# The pruning-vs-scratch study as one DAG: data -> parent -> prune -> retrain / scratch -> evaluate -> report.
# Logic lives in the Python package workflow/pvs; the rules only wire files together.
#   snakemake --cores 2                              # the default study (config.yaml)
#   snakemake --cores 2 --configfile configs/smoke.yaml
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default study; a study given with --configfile replaces it (omitted keys take the schema's
# defaults, workflow/schemas/config.schema.yaml), so no key of the default study leaks into another study.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
        LR_OUTPUTS,
    default_target: True
    localrule: True

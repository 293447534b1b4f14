"""The report stage: summary, the paper's tables, figures and findings from every evaluation JSON.

    python -m pvs.report --config CONFIG --evals EVAL.json ... --out results   # (pvs.report.build)

Modules: ``build`` (reads evaluations, writes every output), ``tables`` (setting comparisons),
``paper_table`` (the paper's main table), ``figures``, ``findings`` (each claim with a verdict).
"""

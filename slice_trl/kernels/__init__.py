"""Numerical kernels, torch only (functions on tensors): the gradient probe's arithmetic
(`gradients`; the probe itself, which knows the model, is `slice_trl.models.gradients`), PCGrad-c
surgery (`surgery`), LoRA-GA / LoRAM decompositions (`decompose`) and orthonormal subspaces
(`subspace`). Nothing here knows about PEFT, TRL or the continual loop (tests/test_layout.py)."""

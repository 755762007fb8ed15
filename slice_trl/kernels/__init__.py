"""Numerical kernels, torch only: the gradient probe (`gradients`), PCGrad-c surgery (`surgery`),
LoRA-GA / LoRAM decompositions (`decompose`) and orthonormal subspaces (`subspace`). Nothing here
knows about PEFT, TRL or the continual loop."""

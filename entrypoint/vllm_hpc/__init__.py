"""vllm-hpc: serve a model with vLLM on Slurm, on one GPU, one node or many nodes."""

__version__ = "0.1.0"

"""luce-bench: energy-efficiency benchmarking and DVFS sweeps for local LLM inference on NVIDIA GPUs."""

__version__ = "0.1.0"

"""Backend registry: name -> implementation, imported lazily so `--help` stays instant."""

from __future__ import annotations

from luce_bench.backends.base import Backend, BackendUnavailable, ModelSpec, StepResult, load_class

__all__ = [
    "REGISTRY",
    "Backend",
    "BackendUnavailable",
    "ModelSpec",
    "StepResult",
    "available",
    "create",
    "get",
    "known_backends",
    "unavailable_reason",
]

REGISTRY: dict[str, str] = {
    "megakernel": "luce_bench.backends.megakernel:MegakernelBackend",
    "llamacpp": "luce_bench.backends.llamacpp:LlamaCppBackend",
    "hf": "luce_bench.backends.hf:HFBackend",
    "hf-compiled": "luce_bench.backends.hf_compiled:HFCompiledBackend",
    "sim": "luce_bench.backends.sim:SimBackend",
}


def known_backends(skip: str = "") -> str:
    """The registered names for a message ("megakernel, llamacpp, … (sim with --fake-gpu)"), less `skip`."""
    return f"{', '.join(n for n in REGISTRY if n != skip)} (sim with --fake-gpu)"


def get(name: str) -> type[Backend]:
    """The backend class registered under `name`; unknown names raise a UserError listing the known ones."""
    from luce_bench.errors import UserError

    if name not in REGISTRY:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}")
    return load_class(REGISTRY[name])


def create(name: str, **kwargs: object) -> Backend:
    """A new, unloaded backend `name`; backends that ask for isolation run in a child process (`IsolatedBackend`)."""
    import os

    cls = get(name)
    if cls.isolate and os.environ.get("LUCE_BENCH_NO_ISOLATION", "") in ("", "0"):
        from luce_bench.backends.isolated import IsolatedBackend

        return IsolatedBackend(name, REGISTRY[name], **kwargs)
    return cls(**kwargs)


def unavailable_reason(name: str, simulated_gpu: bool = False) -> str | None:
    """Why backend `name` cannot run here (None if it can); unknown names raise a UserError.

    A simulated backend needs a simulated GPU (`simulated_gpu`, i.e. --fake-gpu).
    """
    try:
        cls = get(name)
    except ImportError as exc:  # a broken install of the backend's module
        return f"cannot import the {name} backend ({exc})"
    if cls.simulated and not simulated_gpu:
        return "simulated backend: runs only with --fake-gpu"
    return cls.unavailable_reason()


def available(simulated_gpu: bool = False) -> dict[str, str | None]:
    """{name: None if it can run here, else the reason why not}."""
    return {name: unavailable_reason(name, simulated_gpu) for name in REGISTRY}

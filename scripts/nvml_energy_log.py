#!/usr/bin/env python3
"""An independent energy reader: log a GPU's NVML energy counter with wall-clock times, beside a luce-bench run.

It shares no code with luce-bench (only nvidia-ml-py and the standard library), runs as its own process, and writes
`unix_s,energy_mj,power_mw` rows every `--period-s` until it is stopped (Ctrl-C, SIGTERM). Afterwards
`luce-bench report RUN_DIR --independent LOG.csv` compares every window's energy with this log's:

    python3 scripts/nvml_energy_log.py /tmp/energy.csv &
    luce-bench compare ...
    kill %1
    luce-bench report results/runs/<run> --independent /tmp/energy.csv

Read-only: it never changes the GPU's settings.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Log until stopped; 0 on a clean stop, 2 when there is no energy counter to read or no file to write."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="CSV file to write (unix_s,energy_mj,power_mw)")
    ap.add_argument("--gpu", type=int, default=0, help="GPU index (default 0)")
    ap.add_argument("--period-s", type=float, default=0.1, help="seconds between readings (default 0.1)")
    args = ap.parse_args(argv)
    if not 0.02 <= args.period_s <= 10:
        print("error: --period-s must be between 0.02 and 10", file=sys.stderr)
        return 2
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any NVML failure is one line
        return _no_counter(args.gpu, exc)
    try:
        return _log(pynvml, args)
    finally:
        pynvml.nvmlShutdown()


def _no_counter(gpu: int, exc: Exception) -> int:
    """One line for any NVML failure before logging starts; exit code 2."""
    print(f"error: no NVML energy counter on GPU {gpu}: {exc}", file=sys.stderr)
    return 2


def _log(pynvml, args: argparse.Namespace) -> int:
    """With NVML started: check the counter, open the file, write a row every period until a signal (0), else 2."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # noqa: BLE001
        return _no_counter(args.gpu, exc)
    try:
        f = open(args.out, "w", buffering=1)  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    with f:
        f.write("unix_s,energy_mj,power_mw\n")
        next_s = time.monotonic()
        while not stop:
            energy_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            unix_s = time.time()
            power_mw = pynvml.nvmlDeviceGetPowerUsage(handle)
            f.write(f"{unix_s:.4f},{energy_mj},{power_mw}\n")
            next_s += args.period_s
            time.sleep(max(0.0, next_s - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

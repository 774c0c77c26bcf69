"""``sedensenet train --devices N``: re-launch the same command under torchrun with N processes."""

from __future__ import annotations

import logging
import subprocess
import sys

log = logging.getLogger(__name__)


def torchrun_command(nproc: int, argv: list[str], nnodes: int = 1) -> list[str]:
    """The torchrun command line that runs ``sedensenet <argv>`` (without ``--devices``) in ``nproc`` processes."""
    rest = _strip_devices(argv)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", "-m", "sedensenet", *rest]  # fmt: skip


def _strip_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--devices":
            skip = True
            continue
        if arg.startswith("--devices="):
            continue
        out.append(arg)
    return out


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run training under torchrun on this machine and return its exit status."""
    cmd = torchrun_command(nproc, argv)
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)

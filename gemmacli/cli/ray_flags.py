"""`--ray [ADDRESS]` and its companions, shared by `extract`, `check` and `eval`.

The flags only say where and how wide; the run itself is gemmacli.jobs.ray_data's. With --ray, --jobs N is
the number of Ray actors (each loads the model once), so a command line moves from one machine to a
cluster by adding one flag. Ray is optional: without it, --ray exits 2 naming the pip command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gemmacli.cli.commands import positive_int
from gemmacli.errors import UsageError

if TYPE_CHECKING:
    from gemmacli.jobs.ray_data import RayOptions

LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|local|(ray://)?(\[[0-9a-fA-F:]+\]|[\w.-]+):\d+)$")


def add_ray_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
        help="run on Ray Data actors (pip install 'gemmacli[ray]'): HOST:PORT of a running cluster "
             "(`ray start --head`), ray://HOST:PORT, or auto; no ADDRESS starts a local Ray. --jobs N is "
             "then the number of actors (0: as many as the cluster's CPUs allow)")
    group.add_argument(
        "--ray-cpus", type=positive_int, default=None, metavar="N",
        help="with --ray: CPUs each actor reserves, and its onnxruntime threads (default: a local Ray "
             "shares this machine's CPUs among --jobs; a cluster: 1)")
    group.add_argument(
        "--ray-ship", choices=("auto", "always", "never"), default="auto",
        help="with --ray: send the model folder (once per node, verified against its manifest) and the "
             "input files through Ray's object store; auto: when the cluster has several nodes; never: "
             "every node sees this machine's paths (a shared file system)")


def ray_options(args: argparse.Namespace, actors: int) -> RayOptions | None:
    """The RayOptions of --ray (None without it); a missing Ray is exit 2 here, before any work."""
    address = getattr(args, "ray", None)
    if address is None:
        if getattr(args, "ray_cpus", None) is not None or getattr(args, "ray_ship", "auto") != "auto":
            raise UsageError("--ray-cpus and --ray-ship go with --ray")
        return None
    if not _ADDRESS.match(address):
        looks_like_input = Path(address).exists() or bool(set("*?[") & set(address))
        raise UsageError(
            f"--ray {address!r}: " + ("that is an input, not a cluster address" if looks_like_input
                                      else "not a Ray address (HOST:PORT, ray://HOST:PORT or auto)"),
            hint="put --ray after the inputs, or write --ray=local / --ray=HOST:PORT")
    from gemmacli.jobs.ray_data import RayOptions, require_ray

    require_ray()
    return RayOptions(address=None if address == LOCAL else address, actors=actors,
                      cpus_per_actor=args.ray_cpus, ship=args.ray_ship,
                      verbose=getattr(args, "verbose", 0) > 1)

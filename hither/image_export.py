"""Container images next to a bundle (``hither export --with-image``, ``hither import
--with-image``): ``FILE.<digest>.image.tar`` (``docker save`` / ``podman save`` archive)
or ``FILE.<digest>.sif`` (Apptainer), one per image digest the bundle's records name.

Images are files of their own, not bundle members: they are large, often shared by many
bundles, and the engine checks them when it loads them. What counts is the digest: a
re-run looks the image up by the recorded digest only (:mod:`hither.runtimes.recorded`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import RuntimeUnavailableError

__all__ = ["export_images", "import_images"]

_TIMEOUT = 3600


def _images(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        prov = rec.get("provenance")
        rt = prov.get("runtime") if isinstance(prov, dict) else None
        if isinstance(rt, dict) and rt.get("kind") in ("docker", "podman", "apptainer") \
                and isinstance(rt.get("digest"), str):
            out.setdefault(rt["digest"], rt)
    return out


def _cli(engine: str, *args: str) -> None:
    exe = shutil.which(engine)
    if exe is None:
        raise RuntimeUnavailableError(f"the {engine} command is not installed")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeUnavailableError(f"{engine} {args[0]} failed: {r.stderr.strip()}")


def export_images(records: Iterable[dict[str, Any]], bundle: Path) -> list[Path]:
    """Write the images the records ran in next to ``bundle``; returns the files written.

    Raises:
        RuntimeUnavailableError: an image is not present (the message names its digest).
    """
    from .runtimes.recorded import _docker_ref

    written = []
    for digest, rt in sorted(_images(records).items()):
        hexpart = digest.split(":", 1)[1][:16]
        if rt["kind"] == "apptainer":
            from .runtimes.apptainer import ApptainerRuntime

            image = str(rt.get("image"))
            if ApptainerRuntime(image).identity().get("digest") != digest:
                raise RuntimeUnavailableError(f"the SIF {image} is not the recorded image "
                                              f"{digest}")
            dest = bundle.with_name(f"{bundle.name}.{hexpart}.sif")
            shutil.copyfile(image, dest)
        else:
            ref = _docker_ref(rt)
            dest = bundle.with_name(f"{bundle.name}.{hexpart}.image.tar")
            _cli(str(rt["kind"]), "save", "-o", str(dest), ref)
        written.append(dest)
    return written


def import_images(bundle: Path, engine: str = "docker") -> list[str]:
    """Load the image archives exported next to ``bundle`` into ``engine``; returns the
    archives loaded (SIF files are used where they are)."""
    loaded = []
    for archive in sorted(bundle.parent.glob(f"{bundle.name}.*.image.tar")):
        _cli(engine, "load", "-i", str(archive))
        loaded.append(archive.name)
    return loaded

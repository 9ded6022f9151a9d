"""The package's PEP 517 build backend: the standard library only, so that
``pip install ./client/python`` works on a machine with no network.

Why not setuptools: pip builds in an isolated environment and installs the backend named in
``[build-system] requires`` into it from an index first; with setuptools that needs PyPI (or a
wheel cache), and ``--no-build-isolation`` needs setuptools *and* wheel in the target
environment, which a fresh ``python3 -m venv`` does not have. The package is pure Python with
no compiled parts, so a wheel is a zip of ``src/snowlease`` plus three metadata files
(PEP 427), which this module writes itself.

Data flow: pyproject.toml's ``[project]`` table (the one place name, version and the rest are
written) -> :func:`_metadata` -> the wheel's ``METADATA``; ``src/snowlease/**`` -> the wheel's
``snowlease/`` -> ``RECORD`` with each file's sha256. ``build_sdist`` packs the source tree.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "snowlease"
TAG = "py3-none-any"
# Reproducible archives: every entry gets the same time (1980-01-01, the zip format's earliest).
EPOCH = (1980, 1, 1, 0, 0, 0)


def _project() -> Dict[str, Any]:
    """pyproject.toml's ``[project]`` table."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+

        table: Dict[str, Any] = tomllib.loads(text)["project"]
        return table
    except ImportError:
        # Python 3.9 and 3.10: the [project] table's `key = "value"` lines (name, version,
        # description, readme, requires-python) are what a wheel needs; classifiers are left out.
        section = re.search(r"^\[project\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        if section is None:
            raise RuntimeError("pyproject.toml has no [project] table")
        return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]*)"\s*$', section.group(1), re.M))


def _metadata() -> Tuple[str, str, str]:
    """(name, version, METADATA text) for the core metadata 2.1 format."""
    p = _project()
    name, version = p["name"], p["version"]
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '>=3.9')}",
    ]
    license = p.get("license")
    if isinstance(license, dict) and "text" in license:
        lines.append(f"License: {license['text']}")
    lines += [f"Classifier: {c}" for c in p.get("classifiers", [])]
    lines.append("Description-Content-Type: text/markdown")
    readme = (ROOT / p.get("readme", "README.md")).read_text(encoding="utf-8")
    return name, version, "\n".join(lines) + "\n\n" + readme


def _package_files() -> List[Path]:
    """Every file of the package that ships: sources and py.typed, no byte-code."""
    src = ROOT / "src" / PACKAGE
    return sorted(
        f for f in src.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".typed")
    )


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _add(zf: zipfile.ZipFile, record: List[str], arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)
    record.append(f"{arcname},{_digest(data)},{len(data)}")


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Dict[str, str]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """PEP 517: write ``NAME-VERSION-py3-none-any.whl`` into ``wheel_directory``."""
    name, version, metadata = _metadata()
    dist_info = f"{name}-{version}.dist-info"
    filename = f"{name}-{version}-{TAG}.whl"
    record: List[str] = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for f in _package_files():
            arcname = f.relative_to(ROOT / "src").as_posix()
            _add(zf, record, arcname, f.read_bytes())
        _add(zf, record, f"{dist_info}/METADATA", metadata.encode())
        wheel = f"Wheel-Version: 1.0\nGenerator: snowlease _build\nRoot-Is-Purelib: true\nTag: {TAG}\n"
        _add(zf, record, f"{dist_info}/WHEEL", wheel.encode())
        record.append(f"{dist_info}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=EPOCH)
        info.external_attr = 0o644 << 16
        zf.writestr(info, "\n".join(record) + "\n")
    return filename


def build_sdist(sdist_directory: str, config_settings: Optional[Dict[str, str]] = None) -> str:
    """PEP 517: a source archive with what :func:`build_wheel` reads, plus ``PKG-INFO``."""
    name, version, metadata = _metadata()
    base = f"{name}-{version}"
    filename = f"{base}.tar.gz"
    files = [ROOT / "pyproject.toml", ROOT / "README.md", Path(__file__).resolve()]
    files += _package_files()
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f"{base}/{f.relative_to(ROOT).as_posix()}", recursive=False)
        data = metadata.encode()
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return filename


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, str]] = None) -> List[str]:
    """Nothing to install before building: the standard library is enough."""
    return []


def get_requires_for_build_sdist(config_settings: Optional[Dict[str, str]] = None) -> List[str]:
    return []

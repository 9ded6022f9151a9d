"""The package's own build backend (_build/backend.py): the wheel it writes is what pip
installs, so its file list and RECORD must be exact."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "_build"))
import backend  # type: ignore[import-not-found]  # noqa: E402  (found through sys.path above)


def test_the_wheel_holds_every_source_file_and_a_record_whose_hashes_match(tmp_path: Path) -> None:
    name = backend.build_wheel(str(tmp_path))
    assert name == "snowlease-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(tmp_path / name) as zf:
        names = set(zf.namelist())
        sources = {
            f.relative_to(ROOT / "src").as_posix()
            for f in (ROOT / "src" / "snowlease").rglob("*")
            if f.is_file() and "__pycache__" not in f.parts
        }
        assert sources <= names
        assert "snowlease/py.typed" in names
        assert not any("__pycache__" in n for n in names)
        record = zf.read("snowlease-0.1.0.dist-info/RECORD").decode().splitlines()
        listed = set()
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            listed.add(path)
            if path.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == "sha256=" + want, path
            assert int(size) == len(data), path
        assert listed == names
        metadata = zf.read("snowlease-0.1.0.dist-info/METADATA").decode()
        assert "Name: snowlease\n" in metadata and "Requires-Python: >=3.9\n" in metadata
        assert "Tag: py3-none-any" in zf.read("snowlease-0.1.0.dist-info/WHEEL").decode()


def test_the_source_archive_carries_what_the_wheel_is_built_from(tmp_path: Path) -> None:
    import tarfile

    name = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tar:
        names = set(tar.getnames())
    for needed in ("pyproject.toml", "README.md", "_build/backend.py", "PKG-INFO",
                   "src/snowlease/__init__.py", "src/snowlease/py.typed"):
        assert f"snowlease-0.1.0/{needed}" in names, needed


def test_building_needs_nothing_from_an_index() -> None:
    assert backend.get_requires_for_build_wheel() == []
    assert backend.get_requires_for_build_sdist() == []

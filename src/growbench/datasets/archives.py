"""Official dataset archives: where each is, its checksum, and a safe fetch, verify and extract.

The paper-scale datasets (CIFAR, ImageNet subsets, ModelNet40) are published as archives with
known checksums. ``fetch`` downloads one with a progress bar into ``<data root>/<dataset>/``,
resuming a partial download (``<file>.part``, an HTTP ``Range`` request), checks the checksum
before the file takes its final name, and extracts it refusing any member that would land outside
the target or is a link or device; ``verify`` checks what is there. The data root is the
``root`` argument, else ``$GROWBENCH_DATA``, else ``~/.cache/growbench``.

Verification is never switched off. ``CHECKSUMS`` maps an archive's file name to the checksums
accepted for it (the official one); tests that serve fixture archives written in the official
format add their fixture's checksum there, and point ``mirror`` at a ``file://`` folder or a
loopback server instead of the network.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from growbench.progress import bar

ENV_VAR = "GROWBENCH_DATA"
MIRROR_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20
DONE_MARKER = ".growbench-extracted"  # written last: an extraction cut short is redone


@dataclass(frozen=True)
class Archive:
    """One published file: its URL and the md5 the publisher (or torchvision) gives for it; None
    where none is published (its extracted files' ``Source.file_md5`` are checked instead)."""

    url: str
    md5: str | None
    extract: bool = True

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url).name


@dataclass(frozen=True)
class Source:
    """What ``growbench data fetch NAME`` gets for a dataset, and what it must contain after."""

    dataset: str
    archives: tuple[Archive, ...]
    expected: tuple[str, ...]  # paths (relative to the dataset folder) a complete copy has
    size: str  # download size, for the listing
    license: str  # one line: terms of use, for the listing
    manual: str = ""  # set when the data cannot be fetched: where to put it instead
    file_md5: dict[str, str] = field(default_factory=dict)  # extracted file -> md5, if published


SOURCES: dict[str, Source] = {}
CHECKSUMS: dict[str, set[str]] = {}  # archive file name -> accepted md5s (the test-only seam)


def add_source(source: Source) -> Source:
    """Register ``source`` and the official checksums of its archives and files."""
    SOURCES[source.dataset] = source
    for archive in source.archives:
        if archive.md5 is not None:
            CHECKSUMS.setdefault(archive.filename, set()).add(archive.md5)
    for name, md5 in source.file_md5.items():
        CHECKSUMS.setdefault(name, set()).add(md5)
    return source


class DataError(ValueError):
    """A download, checksum or archive problem, with a message that says what to do (a
    ValueError, so the command line reports it as one line like every user error)."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    if root:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "growbench"


def dataset_dir(dataset: str, root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / dataset


def source(dataset: str) -> Source:
    if dataset not in SOURCES:
        known = ", ".join(sorted(name for name, spec in SOURCES.items() if not spec.manual))
        raise DataError(
            f"no archive is known for {dataset!r}; `growbench data fetch` takes one of: "
            f"{known or 'none'} (a dataset, or a dataset at one of its sizes)"
        )
    return SOURCES[dataset]


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------- fetch
def fetch(
    dataset: str,
    root: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify and extract every archive of ``dataset``; return its folder. Archives
    already there with a good checksum are not downloaded again, and a finished extraction is
    not redone. ``mirror`` replaces the official location: the archive's file name is appended
    to it (``file:///some/folder`` or ``http://host/path``)."""
    spec = source(dataset)
    if spec.manual:
        raise DataError(f"{dataset} cannot be downloaded: {spec.manual}")
    if mirror is not None:
        check_mirror(mirror)
    folder = dataset_dir(dataset, root)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot make {folder} ({error.strerror or error}): the data root {data_root(root)} "
            f"must be a folder you can write; pass another --root or set {ENV_VAR}"
        ) from None
    try:
        for archive in spec.archives:
            path = folder / archive.filename
            if not (path.is_file() and _accepted(path, archive)):
                url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
                advice = (
                    f"Check that the mirror {mirror} holds {archive.filename}" if mirror else ""
                )
                download(url, path, progress, advice)
                check_md5(path, archive)
            if archive.extract:
                extract(path, folder)
    except BaseException:
        if made and not any(folder.iterdir()):
            folder.rmdir()  # a fetch that got nothing leaves no empty folder behind
        raise
    missing = missing_files(dataset, root)
    if missing:
        raise DataError(
            f"{dataset}: the archives were fetched but {', '.join(missing[:3])} are missing: "
            "the archive does not have the official layout"
        )
    wrong = wrong_checksums(dataset, root)
    if wrong:
        raise DataError(
            f"{dataset}: extracted files with the wrong checksum: {'; '.join(wrong[:3])}. The "
            f"archive is not the official one: delete {folder} and fetch again"
        )
    return folder


def check_mirror(mirror: str) -> None:
    """Refuse a mirror that is not an http(s) URL with a host or a file:// URL with a path."""
    try:
        parts = urllib.parse.urlsplit(mirror)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = urllib.parse.SplitResult("", "", "", "", "")
    where = parts.path if parts.scheme == "file" else parts.netloc
    if parts.scheme not in MIRROR_SCHEMES or not where:
        raise DataError(
            f"mirror {mirror!r} is not a URL to fetch from: give one that starts with http://, "
            "https:// or file:// (e.g. https://HOST/PATH or file:///FOLDER holding the archives)"
        )


def _accepted(path: Path, archive: Archive) -> bool:
    """Whether a downloaded archive passes its checksum (one without a published checksum is
    accepted here and judged by its extracted files)."""
    return archive.md5 is None or md5sum(path) in CHECKSUMS.get(archive.filename, set())


def download(url: str, path: Path, progress: bool = True, advice: str = "") -> None:
    """``url`` to ``path`` through ``path.part``, resuming what a cut-short download left there
    when the server honours a byte range (a server that does not sends everything again).
    ``advice`` ends the message of a download that fails (default: how to do without a
    network)."""
    partial = path.with_name(path.name + ".part")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the range starts at the end: the part is complete
            partial.replace(path)
            return
        failed = f"download of {url} failed: HTTP {error.code} {error.reason}"
        raise DataError(f"{failed}. {advice}" if advice else failed) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        advice = advice or (
            f"With no network here, fetch on a machine that has one and copy {path.parent} over, "
            "or pass --mirror"
        )
        raise DataError(f"download of {url} failed: {reason}. {advice}") from None
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        initial = have if resumed else 0
        with (
            _bar(progress, total, path.name, initial) as bar,
            partial.open("ab" if resumed else "wb") as out,
        ):
            while block := response.read(CHUNK):
                out.write(block)
                bar(len(block))
    partial.replace(path)


def check_md5(path: Path, archive: Archive) -> None:
    """Raise (and delete the file, so the next fetch starts clean) when its md5 is not one of
    those accepted for it."""
    if archive.md5 is None:
        return
    actual = md5sum(path)
    if actual not in CHECKSUMS.get(archive.filename, set()):
        path.unlink()
        raise DataError(
            f"{path.name}: checksum mismatch (md5 {actual}, expected {archive.md5}); the file "
            "was corrupted or truncated in transit and has been deleted: fetch again"
        )


@contextmanager
def _bar(enabled: bool, total: int | None, name: str, initial: int) -> Iterator:
    """A byte progress bar's ``update`` (a no-op when disabled)."""
    if not enabled:
        yield lambda _count: None
        return
    with bar(total=total, initial=initial, unit="B", unit_scale=True, desc=name) as shown:
        yield shown.update


# ------------------------------------------------------------------------------ extract
def extract(path: Path, target: Path) -> None:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip archive into ``target``, refusing absolute paths,
    members outside ``target``, links and special files; a marker records a finished
    extraction so it is not redone."""
    marker = target / f"{DONE_MARKER}.{path.name}"
    if marker.is_file() and marker.read_text() == md5sum(path):
        return
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    _check_member(path, target, info.filename, _zip_kind(info))
                archive.extractall(target)
        else:
            with tarfile.open(path) as archive:
                members = archive.getmembers()
                for member in members:
                    _check_member(path, target, member.name, _tar_kind(member))
                for member in members:
                    archive.extract(member, target, set_attrs=False, **_TAR_FILTER)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(
            f"{path.name} is truncated or corrupt ({error}): delete it and fetch again"
        ) from None
    marker.write_text(md5sum(path))


# Python's own "data" filter too where it exists (3.11.4+), on top of the checks above.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isfile():
        return "file"
    if member.isdir():
        return "dir"
    return "link" if member.issym() or member.islnk() else "special file"


def _zip_kind(info: zipfile.ZipInfo) -> str:
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    return "link" if is_link else ("dir" if info.is_dir() else "file")


def _check_member(archive: Path, target: Path, name: str, kind: str) -> None:
    where = f"{archive.name}: member {name!r}"
    if kind in ("link", "special file"):
        raise DataError(f"{where} is a {kind}; refusing to extract an archive with one")
    pure = PurePosixPath(name)
    resolved = (target / pure).resolve()
    if pure.is_absolute() or ".." in pure.parts or not resolved.is_relative_to(target.resolve()):
        raise DataError(f"{where} would be written outside {target}; refusing to extract")


# ------------------------------------------------------------------------------- verify
def missing_files(dataset: str, root: str | os.PathLike | None = None) -> list[str]:
    """The expected paths of ``dataset`` that are not in its folder."""
    folder = dataset_dir(dataset, root)
    return [name for name in source(dataset).expected if not (folder / name).exists()]


def wrong_checksums(dataset: str, root: str | os.PathLike | None = None) -> list[str]:
    """The extracted files of ``dataset`` whose md5 is not the published one."""
    folder = dataset_dir(dataset, root)
    wrong = []
    for name, md5 in source(dataset).file_md5.items():
        path = folder / name
        if path.is_file() and (actual := md5sum(path)) not in CHECKSUMS.get(name, {md5}):
            wrong.append(f"{name}: md5 {actual}, expected {md5}")
    return wrong


def verify(dataset: str, root: str | os.PathLike | None = None) -> list[str]:
    """What is wrong with the local copy of ``dataset`` (empty: nothing): each archive present
    with an accepted checksum (or extracted, then removed), the expected files there, and the
    published checksums of the extracted files."""
    spec = source(dataset)
    folder = dataset_dir(dataset, root)
    problems = []
    try:
        for archive in spec.archives:
            path = folder / archive.filename
            if path.is_file():
                if not _accepted(path, archive):
                    md5 = md5sum(path)
                    problems.append(f"{archive.filename}: md5 {md5}, expected {archive.md5}")
            elif not (folder / f"{DONE_MARKER}.{archive.filename}").is_file() and not spec.manual:
                problems.append(f"{archive.filename}: not downloaded")
        problems += [f"{name}: missing" for name in missing_files(dataset, root)]
        return problems + wrong_checksums(dataset, root)
    except OSError as error:
        raise DataError(
            f"cannot read {folder} ({error.strerror or error}); pass another --root or set "
            f"{ENV_VAR}"
        ) from None

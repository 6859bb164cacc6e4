"""A submitted job body made into a job file the service runs: parsed within bounds, validated
against the job schema (the CLI's messages, naming the field), every path resolved and kept
inside the submitting owner's places.

**Where a job may read and write.** Each owner has a prefix of their own, ``RESULTS/OWNER``
(:class:`Place`). A job reads only under the server's ``--data-root`` folders and its own
owner's prefix, and writes only under its own owner's prefix. Paths in a body:

* reads (``data``, and ``bed``/``zarr``/``pheno``/``covar`` of a GWAS job): relative ones are
  taken from the first data root; ``~/PATH`` names ``PATH`` in the owner's prefix (a dataset
  an earlier job of theirs ingested);
* writes (``output``, ``ingest.out``, the ``data`` a ``simulate:`` section creates): relative
  to the owner's prefix (``~/`` may be written too); ``output`` may be left out: the service
  gives each job ``RESULTS/OWNER/ID``.

A path that leaves its places, also through ``..`` or a symbolic link, is refused with the
same words whether or not it exists, so a body tells nothing of another owner's files. The
checks of :func:`prepare` (at submission) run again where the job runs (:func:`confirm`), on
the real paths just before the job starts; every input file is pinned by its identity there
and checked again before the result is kept (:func:`verify`), so a file replaced or linked
elsewhere while the job waited or ran fails the job instead of being read.

**Bounded parsing.** :func:`parse_body` refuses a body deeper than :data:`MAX_DEPTH`, with
more than :data:`MAX_NODES` values once YAML aliases are expanded (a "billion laughs" body
is a few hundred bytes), or more than :data:`MAX_ALIASES` aliases, before anything walks it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from daskmm.errors import DaskmmError
from daskmm.jobs.spec import JobError, validate

READ_FIELDS = ("data", "bed", "zarr", "pheno", "covar")
HOME = "~/"
MAX_DEPTH = 32
"""Nesting levels of mappings and lists a body may have."""
MAX_NODES = 10_000
"""Values (scalars, mappings, lists) a body may hold, aliases expanded."""
MAX_ALIASES = 100
"""YAML aliases (``*name``) a body may use."""
MAX_YAML_BYTES = 256 * 1024
"""A YAML body's size (PyYAML's pure-Python scanner reads about 1 MB a second: a job file is
a few hundred bytes, and a JSON body may be as large as ``--max-body``)."""
MAX_NAME = 200
"""Characters of a job's name (the job store's column)."""
MAX_PATH = 4096
"""Characters of a path in a job body (Linux's PATH_MAX)."""
MAX_WALK = 200_000
"""Files an input folder (a dataset, a Zarr store) may hold for the checks at run time."""


class JobBodyError(ValueError):
    """A job body the service refuses (HTTP 422), with a message naming the field."""


class InputChanged(DaskmmError):
    """An input the job was checked against was replaced or linked elsewhere before the job
    finished with it."""


# ---------------------------------------------------------------------- bounded parsing
class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts aliases and refuses deep nesting while composing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise JobBodyError(f"job: the body uses more than {MAX_ALIASES} YAML aliases; "
                                   "write the values out")
            return super().compose_node(parent, index)
        self._depth += 1
        self._nodes += 1
        if self._nodes > MAX_NODES:  # stops the scanner early: it reads as it composes
            raise JobBodyError(f"job: the body holds more than {MAX_NODES} values (YAML "
                               "aliases expanded); a job file is a small mapping of fields")
        if self._depth > MAX_DEPTH:
            raise JobBodyError(f"job: the body nests deeper than {MAX_DEPTH} levels; a job "
                               "file is a flat mapping of fields")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# Numbers as YAML 1.2 and JSON write them: no sexagesimal ``1:59:59`` (parsed in quadratic
# time), no dates, no 0b/0o/0x forms, at most 100 digits (Python refuses to convert longer
# integers); anything else is a string, which the schema then names.
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in
            ("int", "float", "timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]{1,100}$"), list("-+0123456789"))
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]{1,100}(?:\.[0-9]{0,100})?|\.[0-9]{1,100})"
               r"(?:[eE][-+]?[0-9]{1,4})?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _check_size(doc: object) -> None:
    """Refuse a value deeper than :data:`MAX_DEPTH` or with more than :data:`MAX_NODES`
    values once shared (aliased) parts are counted every time they appear; the count is
    memoised per object, so it costs the size of the parsed graph, not of its expansion."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values, depth)

    def walk(x: object, seen: tuple[int, ...]) -> tuple[int, int]:
        if isinstance(x, float) and not math.isfinite(x):
            raise JobBodyError("job: the body holds a number that is not finite (NaN or "
                               "infinity); give finite numbers")
        if not isinstance(x, (dict, list)):
            return 1, 0
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in seen or len(seen) >= MAX_DEPTH:
            raise JobBodyError(f"job: the body nests deeper than {MAX_DEPTH} levels (or "
                               "refers to itself); a job file is a flat mapping of fields")
        children = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        n, depth = 1, 0
        for c in children:
            cn, cd = walk(c, (*seen, key))
            n += cn
            depth = max(depth, cd + 1)
            if n > MAX_NODES:
                raise JobBodyError(f"job: the body holds more than {MAX_NODES} values (YAML "
                                   "aliases expanded); a job file is a small mapping of "
                                   "fields")
        sizes[key] = (n, depth)
        return n, depth

    walk(doc, ())


def parse_body(raw: bytes, content_type: str) -> object:
    """The parsed body (JSON, or YAML for any other content type), within the bounds above.

    Raises
    ------
    JobBodyError
        Not JSON/YAML, not UTF-8, or beyond a bound; the message says which.
    """
    ct = (content_type or "").split(";")[0].strip().lower()
    kind = "JSON" if ct == "application/json" else "YAML"
    if kind == "YAML" and len(raw) > MAX_YAML_BYTES:
        raise JobBodyError(f"job: a YAML body of {len(raw)} bytes; give at most "
                           f"{MAX_YAML_BYTES} (a job file is a few hundred), or send JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobBodyError(f"job: the body is not UTF-8 text; send the job file as UTF-8 "
                           f"{kind}") from None
    try:
        if ct in ("application/json", ""):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                if ct == "application/json":
                    raise
                doc = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a safe loader
        else:
            doc = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise JobBodyError(f"job: the body nests deeper than {MAX_DEPTH} levels; a job file "
                           "is a flat mapping of fields") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise JobBodyError(f"job: the body is not valid {kind}: "
                           f"{str(exc).splitlines()[0] if str(exc) else exc}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise JobBodyError(f"job: the body holds a value that cannot be read ({exc}); give "
                           "plain numbers and strings") from None
    _check_size(doc)
    return doc


def fingerprint(body: dict, state: list | None = None) -> str:
    """What makes two submissions the same job: the body as parsed (key order and YAML
    formatting do not count); with ``state`` (:func:`inputs`), the inputs as they are now
    (the same body after the data changed is another job, not the earlier result)."""
    text = json.dumps([body, state], sort_keys=True, default=str) if state is not None else \
        json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs(doc: dict) -> list:
    """The state of a prepared job's local inputs: ``[path, size, mtime_ns]`` of each file
    read field (the three PLINK files of ``bed``), and of a folder's manifest or the folder
    itself (not walked: that is :func:`confirm`'s, where the job runs); nothing for a path
    that does not exist or a URL."""
    out = []
    for field, value in _fields(doc)[1]:
        if "://" in value:
            continue
        for f in _input_files(field, value):
            for p in (f, os.path.join(f, "_manifest.json"), os.path.join(f, ".zgroup")):
                try:
                    st = os.stat(p)
                except (OSError, ValueError):
                    continue
                out.append([p, st.st_size, st.st_mtime_ns])
    return out


# ---------------------------------------------------------------------- places
OWNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED = "daskmm-service"


def valid_owner(name: str) -> bool:
    """An owner's name is a folder name of its own: 1-64 letters, digits, ``_``, ``.``,
    ``-``, not starting with ``.`` (never ``..`` or a hidden folder) nor with
    ``daskmm-service`` (the job store's files beside the owners' folders)."""
    return bool(OWNER_NAME.fullmatch(name)) and not name.lower().startswith(RESERVED)


@dataclass(frozen=True)
class Place:
    """Where one owner's jobs may read and write.

    ``home`` is the owner's prefix (``RESULTS/OWNER``, or the staging folder's ``OWNER`` when
    the results live at a URL); ``data_roots`` the server's data roots (local folders as
    real paths, or URL prefixes); ``home_readable`` whether jobs may read their own results
    (not when those are published to a URL).
    """

    home: str
    data_roots: tuple[str, ...]
    home_readable: bool = True

    @classmethod
    def of(cls, owner: str, results: str, data_roots: list[str] | tuple[str, ...],
           staging: str | None = None) -> Place:
        if not valid_owner(owner):
            raise JobBodyError(f"owner {owner!r} is not a valid owner name")
        base = os.path.realpath(staging if staging is not None else results)
        roots = tuple(r.rstrip("/") if "://" in r else os.path.realpath(r)
                      for r in (_local(r) for r in data_roots))
        return cls(os.path.join(base, owner), roots, staging is None)

    def reads(self) -> list[str]:
        return [*self.data_roots, *([self.home] if self.home_readable else [])]

    def to_dict(self) -> dict:
        return {"home": self.home, "data_roots": list(self.data_roots),
                "home_readable": self.home_readable}

    @classmethod
    def from_dict(cls, d: dict) -> Place:
        return cls(d["home"], tuple(d["data_roots"]), bool(d.get("home_readable", True)))


def _under(path: str, roots: list[str]) -> bool:
    """``path`` (made real: links and ``..`` resolved) is one of ``roots`` or lies below."""
    if "://" in path:  # a URL: no "." or ".." segments, and below a URL root
        if any(seg in (".", "..") for seg in path.split("://", 1)[1].split("/")):
            return False
        return any(path.startswith(r.rstrip("/") + "/") for r in roots if "://" in r)
    p = Path(os.path.realpath(path))
    return any(p == Path(r) or p.is_relative_to(r) for r in roots if "://" not in r)


def _local(value: str) -> str:
    """A ``file://`` URL is a local path: links in it are resolved and checked as a path's."""
    return value[len("file://"):] if value.startswith("file://") else value


def _resolve(value: str, base: str, home: str) -> str:
    value = _local(value)
    if "://" in value:
        return value
    if "://" in base:  # relative to a URL data root: joined as a URL path (checked after)
        return base.rstrip("/") + "/" + value
    if value == "~" or value.startswith(HOME):
        return os.path.normpath(os.path.join(home, value[2:]))
    if os.path.isabs(value):
        return os.path.normpath(value)
    return os.path.normpath(os.path.join(base, value))


def _fields(doc: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(writes, reads)``: the ``(field, value)`` paths a job document writes and reads."""
    writes: list[tuple[str, str]] = []
    if isinstance(doc.get("output"), str):
        writes.append(("output", doc["output"]))
    ingest = doc.get("ingest")
    if isinstance(ingest, dict) and isinstance(ingest.get("out"), str):
        writes.append(("ingest.out", ingest["out"]))
    simulated = isinstance(doc.get("simulate"), dict)
    if simulated and isinstance(doc.get("data"), str):
        writes.append(("data", doc["data"]))
    reads = [(f, doc[f]) for f in READ_FIELDS
             if isinstance(doc.get(f), str) and not (f == "data" and simulated)]
    return writes, reads


def _set(doc: dict, field: str, value: str) -> None:
    if field == "ingest.out":
        doc["ingest"]["out"] = value
    else:
        doc[field] = value


def _outside_read(field: str, value: str, place: Place) -> JobBodyError:
    roots = ", ".join(place.data_roots) or "none given"
    own = " and your own results (~/PATH)" if place.home_readable else ""
    return JobBodyError(f"job: {field} {value!r} is outside the data roots; a job reads only "
                        f"under the server's --data-root folders ({roots}){own}")


def _outside_write(field: str, value: str) -> JobBodyError:
    return JobBodyError(f"job: {field} {value!r} is outside your results folder; a job "
                        "writes only under its owner's folder of the server's --results "
                        "(relative paths and ~/PATH are taken from there)")


def prepare(body: object, owner: str, job_id: str, results: str,
            data_roots: list[str], staging: str | None = None) -> dict:
    """The job file for ``body``: paths absolute and checked, ``output`` set.

    ``staging``: with a results root that is a URL, the local folder jobs write into before
    their result is published there (:mod:`daskmm.service.results`); then ``results`` is not
    read from, and a job may not ingest or simulate (datasets need a shared folder).

    Raises
    ------
    JobBodyError
        With the CLI's schema message or the path that leaves its places.
    """
    if not isinstance(body, dict):
        raise JobBodyError(f"job: a job is a mapping of fields; got {type(body).__name__}")
    place = Place.of(owner, results, data_roots, staging)
    doc = copy.deepcopy(body)
    cluster = doc.get("cluster")
    if cluster is not None and (not isinstance(cluster, dict) or set(cluster) - {"mode"}):
        raise JobBodyError("job: cluster is the server's (its scheduler); a job may set only "
                           "cluster.mode (auto | in-process | gathered | distributed)")
    if staging is not None:
        for field in ("ingest", "simulate"):
            if field in doc:
                raise JobBodyError(f"job: {field} writes a dataset, which needs a shared "
                                   "folder; this server's results root is a URL: ingest or "
                                   "simulate with daskmm on the data root first")
        if "output" in doc:
            raise JobBodyError("job: output is the server's when results go to a URL (each "
                               "job's own folder, RESULTS/OWNER/ID); leave it out")
    doc.setdefault("output", job_id)
    try:
        validate(doc, "job")
    except JobError as exc:
        raise JobBodyError(str(exc)) from None
    if len(str(doc.get("name", ""))) > MAX_NAME:
        raise JobBodyError(f"job: name has {len(doc['name'])} characters; give at most "
                           f"{MAX_NAME}")
    writes, reads = _fields(doc)
    for field, value in writes + reads:
        if "\x00" in value or len(value) > MAX_PATH:
            raise JobBodyError(f"job: {field} is not a path (a NUL character, or more than "
                               f"{MAX_PATH} characters); give the file's path")
    read_base = place.data_roots[0] if place.data_roots else place.home
    for field, value in writes:
        path = _resolve(value, place.home, place.home)
        if "://" in path or not _under(path, [place.home]):
            raise _outside_write(field, value)
        if os.path.realpath(path) == place.home:
            raise JobBodyError(f"job: {field} {value!r} is your results folder itself; give "
                               "a folder inside it (or leave output out)")
        _set(doc, field, path)
    for field, value in reads:
        path = _resolve(value, read_base, place.home)
        if not _under(path, place.reads()):
            raise _outside_read(field, value, place)
        doc[field] = path
    return doc


# ---------------------------------------------------------------------- at run time
Pins = dict[str, tuple[int, int, int, int]]
"""Real path -> ``(device, inode, size, mtime_ns)`` of every input file, taken by
:func:`confirm`."""


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _input_files(field: str, path: str) -> list[str]:
    """The files a read field names: a PLINK prefix's three, else the path itself."""
    if field == "bed":
        p = path
        for ext in (".bed", ".bim", ".fam"):
            if p.endswith(ext):
                p = p[: -len(ext)]
        return [p + e for e in (".bed", ".bim", ".fam")]
    return [path]


def _not_a_file(field: str, value: str) -> JobBodyError:
    return JobBodyError(f"job: {field} {value!r} is or holds something that is not a regular "
                        "file (a pipe, socket or device); a job reads files and folders of "
                        "files")


def _pin_tree(field: str, value: str, real: str, roots: list[str], place: Place,
              pins: Pins) -> None:
    """Pin ``real`` (a file, or every file under a folder), each entry's real path checked
    to lie in ``roots``; links inside a folder that lead out of them are refused."""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return  # the job says it does not exist, in its own words
    except OSError as exc:
        raise JobBodyError(f"job: {field} {value!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(field, value)
        pins[real] = _identity(st)
        return
    seen: set[str] = set()
    stack = [real]
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            raise JobBodyError(f"job: {field} {value!r}: a folder inside cannot be read "
                               f"({exc.strerror})") from None
        for e in entries:
            r = os.path.realpath(e.path)
            if not _under(r, roots):
                inner = os.path.relpath(e.path, real)
                raise JobBodyError(f"job: {field} {value!r} holds {inner!r}, a link that leads "
                                   "outside the data roots and your own results; a job reads "
                                   "only there: remove the link or copy the file in")
            try:
                est = os.stat(r)
            except OSError:
                continue  # a dangling link: nothing to read there
            if stat.S_ISDIR(est.st_mode):
                stack.append(r)
            elif not stat.S_ISREG(est.st_mode):
                raise _not_a_file(field, value)
            else:
                pins[r] = _identity(est)
                if len(pins) > MAX_WALK:
                    raise JobBodyError(f"job: {field} {value!r} holds more than {MAX_WALK} "
                                       "files; merge them into fewer (a daskmm dataset has "
                                       "one a bucket)")


def confirm(doc: dict, place: Place) -> tuple[dict, Pins]:
    """Check a prepared job document again where and when the job runs: every path made
    real (links resolved now) and checked against the owner's places, folders walked (a link
    inside one leading out is refused), every input file pinned. Returns the document with
    the real paths, which the job then uses, and the pins for :func:`verify`.

    Raises
    ------
    JobBodyError
        A path that now leaves its places (e.g. replaced by a link while the job was queued).
    """
    doc = copy.deepcopy(doc)
    reads = [os.path.realpath(r) if "://" not in r else r for r in place.reads()]
    writes, inputs = _fields(doc)
    for field, value in writes:
        real = os.path.realpath(value)
        if not _under(real, [place.home]) or real == place.home:
            raise _outside_write(field, value)
        if os.path.islink(value):
            raise _outside_write(field, value)
        _set(doc, field, real)
    pins: Pins = {}
    for field, value in inputs:
        if "://" in value:
            if not _under(value, reads):
                raise _outside_read(field, value, place)
            continue
        reals = []
        for f in _input_files(field, value):
            real = os.path.realpath(f)
            if not _under(real, reads):
                raise _outside_read(field, value, place)
            _pin_tree(field, value, real, reads, place, pins)
            reals.append(real)
        if field == "bed":
            # the job reads PREFIX.bed/.bim/.fam of one real prefix: the three must lead to
            # the files of one prefix (a link for one of them alone would mix two data sets)
            stems = {r[: -len(ext)] if r.endswith(ext) else None
                     for r, ext in zip(reals, (".bed", ".bim", ".fam"))}
            if len(stems) != 1 or None in stems:
                raise JobBodyError(f"job: bed {value!r}: its .bed, .bim and .fam lead to files "
                                   "of different names or folders (links); give the prefix of "
                                   "the three files themselves")
            doc[field] = stems.pop()
        else:
            doc[field] = os.path.realpath(value)
    return doc, pins


def verify(pins: Pins) -> None:
    """Every pinned input is still the file it was (same real path, device, inode, size and
    modification time).

    Raises
    ------
    InputChanged
        Naming the first input that changed.
    """
    for path, ident in pins.items():
        try:
            now = os.stat(path)
            real = os.path.realpath(path)
        except OSError:
            raise InputChanged(f"the input {path!r} was removed while the job ran; the "
                               "result is discarded: submit the job again") from None
        if real != path or _identity(now) != ident:
            raise InputChanged(f"the input {path!r} was replaced or changed while the job ran; "
                               "the result is discarded: submit the job again once the input "
                               "is final") from None

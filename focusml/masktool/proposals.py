"""Answering proposals: yes / no / mixed on a `focusml discover` proposals file writes members' masks.

No HTTP here: the mask tool's server and the benchmark's simulated user both drive a `ProposalBook`.

    book = ProposalBook.open(DatasetTree(root), root / "proposals" / f"{run_id}.json")
    while (p := book.next()) is not None:
        book.answer(p.id, "yes")            # or "no", or "mixed" with members=[paths picked]

The file's format is `focusml.core.proposals` (`FORMAT`); it must lie inside the dataset root, out of
images/ and masks/, and is validated whole when opened (format string, grid, every member's path through
`DatasetTree`'s checks and image existence, every cell grid's shape), so a bad file fails at once with one
line naming the problem.

Rules:
- "yes" writes every member's mask: `cells_to_pixels(member cells, H, W)` at the image's own size, written
  atomically with `DatasetTree.write_mask`. "mixed" with `members` writes only those members; "mixed"
  without members and "no" write nothing.
- Never over a mask a person drew: a member whose mask file exists and was not written by this book (or was
  edited since the book wrote it: its bytes differ from what the book wrote) is left as it is and counted
  `kept_drawn`; the book gives up that image for good.
- An image several proposals were accepted on gets the union (OR) of their cells.
- Answering a proposal again replaces its answer exactly: what it wrote is taken back first (each image the
  book owns is rewritten as the union of the other accepted proposals' cells, or its mask file removed when
  none is left), then the new answer is applied.

State: `<file without .json>.answers.json` beside the proposals file, written atomically (temporary file,
fsync, rename) after the masks:
    {"format": "focusml-proposal-answers/1", "proposals_sha256": ..., "answers": {id: "yes"|"no"|"mixed"},
     "written": [member paths whose mask file this book wrote], "digests": {path: sha256 of those bytes},
     "by_proposal": {id: [paths that proposal's answer wrote]}, "picked": {id: [paths picked on "mixed"]}}
The proposals file's digest pins the answers to it: a file discovered again at the same path is refused
until the old state file is moved away (the masks it wrote then count as drawn).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusml import FocusmlError
from focusml.core.proposals import FORMAT, cells_to_pixels, text_to_cells
from focusml.masktool.paths import BrokenImage, DatasetTree, UnsafePath

ANSWERS = ("yes", "no", "mixed")
STATE_FORMAT = "focusml-proposal-answers/1"
MAX_FILE = 512 * 1024 * 1024  # bytes of a proposals or state file read at most


class BadProposals(FocusmlError):
    """A proposals file (or its answers file) that cannot be used: one line names the problem."""


@dataclass(frozen=True)
class Member:
    path: str  # '<split>/<class>/<file>' under ROOT/images
    cells: np.ndarray  # (h, w) bool


@dataclass(frozen=True)
class Proposal:
    id: str
    rank: int
    scope: str
    region: np.ndarray  # (h, w) bool
    size: float
    flip_rate: float | None
    members: tuple[Member, ...]

    def member(self, path: str) -> Member:
        for m in self.members:
            if m.path == path:
                return m
        raise BadProposals(f"{path!r} is not a member of proposal {self.id}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise BadProposals(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE:
        raise BadProposals(f"the {what} {path} is over {MAX_FILE >> 20} MiB")
    return data


def _number(value, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number from 0 to 1{' or null' if optional else ''}, got {value!r}")
    return float(value)


def _grid(rows, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        cells = text_to_cells(rows)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if cells.shape != shape:
        raise ValueError(f"{what} is {cells.shape[0]}×{cells.shape[1]} cells, "
                         f"the file's grid is {shape[0]}×{shape[1]}")
    return cells


def parse(tree: DatasetTree, data: dict) -> tuple[dict, list[Proposal]]:
    """Validate a proposals file's JSON: (header, proposals sorted by rank); ValueError or UnsafePath naming
    the problem."""
    if not isinstance(data, dict):
        raise ValueError("the file must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r} (a file `focusml discover` writes)")
    grid = data.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and not isinstance(g, bool)
                                                               and 1 <= g <= 4096 for g in grid)):
        raise ValueError(f"grid must be [h, w], two whole numbers from 1 to 4096, got {grid!r}")
    shape = (grid[0], grid[1])
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must be a list of strings")
    run_id = data.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise ValueError("run_id must be a string")
    items = data.get("proposals")
    if not isinstance(items, list):
        raise ValueError("proposals must be a list")
    proposals, seen = [], set()
    for k, p in enumerate(items):
        where = f"proposal #{k + 1}"
        if not isinstance(p, dict):
            raise ValueError(f"{where} is not an object")
        pid = p.get("id")
        if not isinstance(pid, str) or not 1 <= len(pid) <= 100 or not pid.isprintable():
            raise ValueError(f"{where}: id must be a printable string of 1 to 100 characters, got {pid!r}")
        if pid in seen:
            raise ValueError(f"proposal id {pid!r} appears twice")
        seen.add(pid)
        where = f"proposal {pid}"
        rank = p.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise ValueError(f"{where}: rank must be a whole number, got {rank!r}")
        scope = p.get("scope")
        if not isinstance(scope, str):
            raise ValueError(f"{where}: scope must be a string, got {scope!r}")
        region = _grid(p.get("region"), shape, f"{where}: region")
        size = _number(p.get("size"), f"{where}: size")
        flip = _number(p.get("flip_rate"), f"{where}: flip_rate", optional=True)
        raw_members = p.get("members")
        if not isinstance(raw_members, list) or not raw_members:
            raise ValueError(f"{where}: members must be a non-empty list")
        members, paths = [], set()
        for j, m in enumerate(raw_members):
            mwhere = f"{where}, member #{j + 1}"
            if not isinstance(m, dict) or not isinstance(m.get("path"), str):
                raise ValueError(f"{mwhere} must be an object with a string path")
            rel = m["path"]
            try:
                tree.image_file(rel)
            except UnsafePath as e:
                raise UnsafePath(f"{mwhere}: {e}") from None
            except FileNotFoundError:
                raise ValueError(f"{mwhere}: no image {rel} under {tree.root / 'images'} (proposals of another "
                                 "dataset?)") from None
            if rel in paths:
                raise ValueError(f"{mwhere}: {rel} is listed twice")
            paths.add(rel)
            members.append(Member(rel, _grid(m.get("cells"), shape, f"{mwhere} ({rel}): cells")))
        proposals.append(Proposal(pid, rank, scope, region, size, flip, tuple(members)))
    proposals.sort(key=lambda q: (q.rank, q.id))
    return {"run_id": run_id, "grid": list(shape), "classes": classes}, proposals


class ProposalBook:
    """A proposals file, its answers and the masks they wrote; thread-safe (one lock per book)."""

    def __init__(self, tree: DatasetTree, path: Path, header: dict, proposals: list[Proposal], digest: str):
        self.tree, self.path, self.header, self.proposals = tree, path, header, proposals
        self.state_path = path.with_name(path.name[:-len(".json")] + ".answers.json")
        self._by_id = {p.id: p for p in proposals}
        self._digest = digest
        self._lock = threading.Lock()
        self.answers: dict[str, str] = {}
        self.written: dict[str, str] = {}  # path → sha256 of the mask bytes the book wrote
        self.by_proposal: dict[str, list[str]] = {}
        self.picked: dict[str, list[str]] = {}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, tree: DatasetTree, path) -> ProposalBook:
        """Read and validate the proposals file at `path` (inside the dataset root) and its answers, if any."""
        given = Path(path)
        real = Path(os.path.realpath(given))
        if tree.root not in real.parents:
            raise BadProposals(f"the proposals file {given} is not inside the dataset root {tree.root}; "
                               "`focusml discover` writes it to ROOT/proposals/")
        top = real.relative_to(tree.root).parts[0]
        if top in ("images", "masks"):
            raise BadProposals(f"the proposals file {given} is in ROOT/{top}/; keep it out of images/ and masks/ "
                               "(ROOT/proposals/ is its place)")
        if real.suffix != ".json" or real.name.endswith(".answers.json"):
            raise BadProposals(f"the proposals file {given} must be a .json file other than an .answers.json")
        if not real.is_file():
            raise BadProposals(f"no proposals file {given}")
        raw = _read(real, "proposals file")
        try:
            header, proposals = parse(tree, json.loads(raw, parse_constant=_no_constant))
        except (ValueError, RecursionError, UnsafePath) as e:
            reason = str(e) if not isinstance(e, RecursionError) else "nested too deeply"
            raise BadProposals(f"proposals file {given}: {reason}") from None
        book = cls(tree, real, header, proposals, _sha(raw))
        book._load_state()
        return book

    def _load_state(self) -> None:
        sp = self.state_path
        if sp.is_symlink():
            raise BadProposals(f"the answers file {sp} is a symbolic link; replace it with a file or remove it")
        if not sp.exists():
            return
        fix = f"move {sp} away to start over (the masks it wrote then count as drawn)"
        try:
            s = json.loads(_read(sp, "answers file"), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise BadProposals(f"the answers file {sp} is not JSON; {fix}") from None
        if not isinstance(s, dict) or s.get("format") != STATE_FORMAT:
            raise BadProposals(f"the answers file {sp} is not a {STATE_FORMAT} file; {fix}")
        if s.get("proposals_sha256") != self._digest:
            raise BadProposals(f"{self.path.name} changed since the answers in {sp.name} were given "
                               f"(discovered again?); {fix}")
        try:
            answers, digests = dict(s["answers"]), dict(s["digests"])
            by_proposal, picked = dict(s["by_proposal"]), dict(s.get("picked", {}))
            if set(s["written"]) != set(digests):
                raise ValueError("written and digests disagree")
            for pid, a in answers.items():
                if pid not in self._by_id or a not in ANSWERS:
                    raise ValueError(f"answer {a!r} to proposal {pid!r}")
            for table in (by_proposal, picked):
                for pid, paths in table.items():
                    prop = self._by_id.get(pid)
                    if prop is None or not isinstance(paths, list):
                        raise ValueError(f"entry for proposal {pid!r}")
                    for rel in paths:
                        prop.member(rel)
            if any(rel not in digests for paths in by_proposal.values() for rel in paths):
                raise ValueError("a proposal's written mask is not in written")
            if not all(isinstance(v, str) for v in digests.values()):
                raise ValueError("digests must be strings")
        except (KeyError, TypeError, ValueError, FocusmlError) as e:
            raise BadProposals(f"the answers file {sp} is inconsistent ({e}); {fix}") from None
        self.answers, self.written, self.by_proposal, self.picked = answers, digests, by_proposal, picked

    # -- reading ----------------------------------------------------------------------------
    def proposal(self, proposal_id: str) -> Proposal:
        """The proposal of that id; KeyError when the file has none."""
        return self._by_id[proposal_id]

    def next(self) -> Proposal | None:
        """The first unanswered proposal by rank, None when all are answered."""
        return next((p for p in self.proposals if p.id not in self.answers), None)

    def summary(self) -> dict:
        a = list(self.answers.values())
        return {"answers": len(a), "yes": a.count("yes"), "no": a.count("no"), "mixed": a.count("mixed"),
                "annotated": len(self.written), "proposals": len(self.proposals)}

    def member_state(self, rel: str) -> str:
        """'drawn' (a mask a person drew: never overwritten), 'book' (written by this book) or 'none'."""
        data = self.tree.backup(rel)
        if data is None:
            return "none"
        return "book" if self.written.get(rel) == _sha(data) else "drawn"

    # -- answering --------------------------------------------------------------------------
    def answer(self, proposal_id: str, answer: str, members: list[str] | None = None) -> dict:
        """Record `answer` ("yes", "no", "mixed") to a proposal and write the masks it implies.

        `members`: with "mixed" only, the member paths picked as shortcut (their masks are written).
        Returns {"id", "answer", "written": masks written, "kept_drawn": members skipped because a person drew
        their mask, "removed": masks taken back or rewritten from a previous answer to this proposal,
        "skipped": members whose image cannot be read}.
        """
        if answer not in ANSWERS:
            raise BadProposals(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        try:
            prop = self._by_id[proposal_id]
        except KeyError:
            raise BadProposals(f"no proposal {proposal_id!r} in {self.path.name}") from None
        if members is not None and answer != "mixed":
            raise BadProposals(f"members are picked with the answer \"mixed\", not {answer!r}")
        picked = list(dict.fromkeys(members or []))
        for rel in picked:
            prop.member(rel)
        targets = [m.path for m in prop.members] if answer == "yes" else picked if answer == "mixed" else []
        with self._lock:
            old = self.by_proposal.get(prop.id, [])
            for rel in dict.fromkeys(old + targets):  # refuse before the first write (a link in masks/)
                self.tree.check_writable(rel)
            counts = {"id": prop.id, "answer": answer, "written": 0, "kept_drawn": 0, "removed": 0, "skipped": 0}
            backup: dict[str, bytes | None] = {}
            snapshot = (dict(self.written), {k: list(v) for k, v in self.by_proposal.items()}, dict(self.answers),
                        dict(self.picked))
            try:
                self.by_proposal.pop(prop.id, None)
                for rel in old:  # take back what this proposal's last answer wrote
                    if rel in targets:
                        continue  # rewritten below with this answer's cells
                    if self._rewrite(rel, backup) is not None:
                        counts["removed"] += 1
                done = []
                for rel in targets:
                    result = self._rewrite(rel, backup, extra=prop.member(rel).cells)
                    if result in counts:
                        counts[result] += 1
                    if result == "written":
                        done.append(rel)
                if done:
                    self.by_proposal[prop.id] = done
                self.answers[prop.id] = answer
                if answer == "mixed":
                    self.picked[prop.id] = picked
                else:
                    self.picked.pop(prop.id, None)
                self._save_state()
            except BaseException:
                for rel, data in backup.items():  # all or nothing: put the masks back
                    try:
                        self.tree.restore(rel, data)
                    except (OSError, FocusmlError):
                        pass
                self.written, self.by_proposal, self.answers, self.picked = snapshot
                raise
        return counts

    def _owned_cells(self, rel: str) -> list[np.ndarray]:
        return [self._by_id[pid].member(rel).cells for pid, paths in self.by_proposal.items() if rel in paths]

    def _rewrite(self, rel: str, backup: dict, extra: np.ndarray | None = None) -> str | None:
        """Make rel's mask the union of the accepted proposals' cells (plus `extra`); never over a drawn mask.

        Returns "written", "kept_drawn", "skipped" (unreadable image), or None when nothing changed.
        """
        current = self.tree.backup(rel)
        if current is not None and self.written.get(rel) != _sha(current):
            if rel in self.written:  # a person edited what the book wrote: theirs now
                self._release(rel)
            return "kept_drawn" if extra is not None else None
        cells = self._owned_cells(rel) + ([extra] if extra is not None else [])
        try:
            w, h = self.tree.image_size(rel)
        except (BrokenImage, FileNotFoundError):
            return "skipped" if extra is not None else None
        mask = np.zeros((h, w), dtype=bool)
        for c in cells:
            mask |= cells_to_pixels(c, h, w)
        backup.setdefault(rel, current)
        if not mask.any():  # nothing left to mask (or a member with no cell set): no mask file
            self.written.pop(rel, None)
            if current is None:
                return None
            self.tree.restore(rel, None)
            return "removed"
        self.tree.write_mask(rel, mask.astype(np.uint8))
        self.written[rel] = _sha(self.tree.backup(rel) or b"")
        return "written" if extra is not None else "removed"

    def _release(self, rel: str) -> None:
        self.written.pop(rel, None)
        for pid in list(self.by_proposal):
            paths = [p for p in self.by_proposal[pid] if p != rel]
            if paths:
                self.by_proposal[pid] = paths
            else:
                del self.by_proposal[pid]

    def _save_state(self) -> None:
        state = {"format": STATE_FORMAT, "proposals": self.path.name, "proposals_sha256": self._digest,
                 "answers": self.answers, "written": sorted(self.written), "digests": self.written,
                 "by_proposal": self.by_proposal, "picked": self.picked}
        atomic_write_file(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def atomic_write_file(path: Path, data: bytes) -> None:
    """Write `path` atomically (exclusive temporary file beside it, fsync, rename); never through a link."""
    if path.is_symlink():
        raise UnsafePath(f"{path} is a symbolic link; the mask tool never writes through links")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["ANSWERS", "BadProposals", "Member", "Proposal", "ProposalBook", "parse"]

"""`abreast logs [RUN] --all [-f]`: every task's log in one stream, each line under its
task's name (`backend  | ...`), as `docker compose logs` shows services.

Without `-f`: the latest attempt of each task that ran, task after task. With `-f`:
what is there, then the lines as they are written, in the order they are read, each
task followed on into its next attempts (announced on stderr, as `logs TASK -f` does),
until the run is no longer running. A line is shown once it is whole (or its attempt
ended), so two tasks' halves never share one; keys a direct-mode task printed are
masked as in `abreast logs`.
"""

from __future__ import annotations

import codecs
import os
import time
from dataclasses import dataclass, field, replace
from typing import BinaryIO, TextIO

from abreast.coord.journal import AttemptRow, Journal
from abreast.executor.logs import KeyMasker, open_regular
from abreast.observe import rundata
from abreast.observe.output import reader_gone
from abreast.observe.status import run_state

POLL_S = 0.2  # a viewer following files: nothing to be woken by
CHUNK = 65536


@dataclass
class _Stream:
    """One task's log, as far as it has been read."""

    task_id: str
    prefix: str
    masker: KeyMasker
    attempt: AttemptRow | None = None
    file: BinaryIO | None = None
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    partial: str = ""  # the start of a line not yet ended
    waiting: bool = False  # for the attempt's log to appear

    def lines(self, text: str, out: TextIO, *, final: bool = False) -> None:
        """Write the whole lines of `self.partial + text` under the task's name; with
        `final`, the rest too (the attempt ended without a last newline)."""
        text = self.partial + self.masker.feed(text)
        if final:
            text += self.masker.flush()
        *whole, self.partial = text.split("\n")
        if final and self.partial:
            whole.append(self.partial)
            self.partial = ""
        if whole:
            out.write("".join(f"{self.prefix}{line}\n" for line in whole))
            out.flush()

    def read(self, out: TextIO) -> bool:
        """Write what the open log has gained; whether there was anything."""
        if self.file is None:
            return False
        got = False
        while chunk := self.file.read(CHUNK):
            got = True
            self.lines(self.decoder.decode(chunk), out)
            if reader_gone(out):
                break
        return got

    def close(self, out: TextIO) -> None:
        """The attempt ended: its last bytes and any unended line, then the file shut."""
        if self.file is not None:
            self.read(out)
            self.file.close()
            self.file = None
        self.lines(self.decoder.decode(b"", final=True), out, final=True)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def open(self, attempt: AttemptRow, note: TextIO) -> None:
        """Start reading `attempt`'s log, once it is there (an attempt is journaled before
        its process makes its log)."""
        self.attempt = attempt
        self.waiting = not attempt.log or not os.path.exists(attempt.log)
        if self.waiting or not attempt.log:
            return
        try:
            self.file = os.fdopen(open_regular(attempt.log), "rb")
        except OSError as e:
            note.write(f"-- {self.task_id}: its log is not a file abreast reads ({e.strerror})\n")
            note.flush()


def _latest(journal: Journal, run_id: str) -> dict[str, AttemptRow]:
    latest: dict[str, AttemptRow] = {}
    for a in journal.attempts(run_id):
        if a.task_id not in latest or a.attempt > latest[a.task_id].attempt:
            latest[a.task_id] = a
    # Where their logs are now (a project moved since the run has them under its journal).
    return {
        t: a if (log := rundata.log_of(journal, a)) == a.log else replace(a, log=log)
        for t, a in latest.items()
    }


def show_all_logs(journal: Journal, run_id: str, out: TextIO, follow: bool, note: TextIO) -> None:
    tasks = [t.task_id for t in journal.tasks(run_id)]
    width = max([len(t) for t in tasks] + [1])
    fingerprints = rundata.leased_fingerprints(journal, run_id)  # grows as keys are leased
    streams = {t: _Stream(t, f"{t:<{width}} | ", KeyMasker(fingerprints)) for t in tasks}
    if not follow:
        latest = _latest(journal, run_id)
        for t in tasks:
            if t in latest:
                streams[t].open(latest[t], note)
                streams[t].close(out)
            if reader_gone(out):
                return
        return
    while True:
        run = journal.run(run_id)
        running = run is not None and run_state(run) == "running"
        fingerprints.update(rundata.leased_fingerprints(journal, run_id))
        for t, a in _latest(journal, run_id).items():
            s = streams.get(t)
            if s is None:
                continue
            if s.attempt is not None and a.attempt > s.attempt.attempt:
                s.close(out)
                ended = next(
                    (x for x in journal.attempts(run_id, t) if x.attempt == s.attempt.attempt),
                    s.attempt,
                )
                why = f" ({rundata.headline(ended.reason)})" if ended.reason else ""
                note.write(f"-- {t}: attempt {ended.attempt} ended{why}; attempt {a.attempt}\n")
                note.flush()
                s.open(a, note)
            elif s.attempt is None or s.waiting:
                s.open(a, note)
            s.read(out)
            if a.ended_at is not None and s.file is not None:
                s.close(out)  # ended (journaled after its process ended): all of it is there
            if reader_gone(out):
                return
        if not running:
            for s in streams.values():
                s.close(out)
            return
        time.sleep(POLL_S)

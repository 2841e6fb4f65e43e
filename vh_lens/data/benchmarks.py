"""Readers of benchmark files in their published formats, into sample sets.

Nothing is downloaded: each reader takes a local annotation file (and an image folder where
the format keeps images apart) and returns a :class:`~vh_lens.data.SampleSet` (a read-only
sequence of :class:`Sample`; ``list(...)`` gives a list). Every reader takes ``limit=`` (the
most samples to return, counted after filtering and after dropping samples whose image is
bad) and ``on_missing="error" | "skip"`` (what to do with a sample whose image is absent or
unreadable: raise one :class:`~vh_lens.data.MissingImagesError`, a ``FileNotFoundError``,
naming the first few, or drop them, log how many and count them in ``n_skipped``). The image
checks are those of every reader (``vh_lens.data._images``); PointQA counting reads the file
with the LookTwice-QA parser of :mod:`vh_lens.data.pointqa`.

Conventions shared by all readers, relied on by :mod:`vh_lens.evaluation.answers`:

- Multiple choice: ``Sample.choices`` holds the options in order and ``Sample.answer`` the
  gold option's letter (``"A"`` for the first option); ``metadata["task"] ==
  "multiple_choice"``.
- Yes/no (POPE): ``Sample.answer`` is ``"yes"`` or ``"no"``; ``metadata["task"] == "yes_no"``.
- Counting (PointQA): ``Sample.answer`` is the count as a string; ``metadata["task"] ==
  "count"`` and ``metadata["answer_range"] == (1, 7)``.
- ``metadata["benchmark"]`` names the source and ``metadata["id"]`` the item's id there.
- ``Sample.answer`` is ``None`` where the file has no gold answer (e.g. MMBench test split).

The readers live in :mod:`vh_lens.data.mmbench`, :mod:`vh_lens.data.pope`,
:mod:`vh_lens.data.seed_bench`, :mod:`vh_lens.data.qbench` and
:mod:`vh_lens.data.pointqa_counting` (what they share in :mod:`vh_lens.data.benchmark_records`);
this module re-exports them.
"""

from __future__ import annotations

from vh_lens.data._images import OnMissing
from vh_lens.data.mmbench import load_mmbench
from vh_lens.data.pointqa_counting import PointQAQuestion, load_pointqa_counting
from vh_lens.data.pope import load_pope
from vh_lens.data.qbench import load_qbench
from vh_lens.data.seed_bench import load_seed_bench

__all__ = [
    "OnMissing",
    "PointQAQuestion",
    "load_mmbench",
    "load_pointqa_counting",
    "load_pope",
    "load_qbench",
    "load_seed_bench",
]

"""Reading a model's answers: prompt formats and answer parsing (``answers``), benchmark
accuracy by scoring candidates or generating (``scoring``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "vh_lens.evaluation.scoring",
    "EvalConfig": "vh_lens.evaluation.scoring",
    "EvalResult": "vh_lens.evaluation.scoring",
    "Prediction": "vh_lens.evaluation.scoring",
    "format_question": "vh_lens.evaluation.answers",
    "parse_answer": "vh_lens.evaluation.answers",
    "is_correct": "vh_lens.evaluation.answers",
    "candidate_strings": "vh_lens.evaluation.answers",
    "answer_token_ids": "vh_lens.evaluation.candidates",
    "candidate_token_ids": "vh_lens.evaluation.candidates",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.evaluation.answers import candidate_strings, format_question, is_correct, parse_answer
    from vh_lens.evaluation.candidates import answer_token_ids, candidate_token_ids
    from vh_lens.evaluation.scoring import EvalConfig, EvalResult, Prediction, evaluate

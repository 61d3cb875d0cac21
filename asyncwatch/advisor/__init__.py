"""The advisor: measures executors, concurrency limits, batches, queues, gates and the
loop's load, and turns them into worker-count, limit and batch-size changes.

Its public face: the ``Advisor`` the Watch builds, the ``Recommendation`` it returns, and
the ``Concurrency`` and ``Gate`` objects behind ``asyncwatch.concurrency()`` and
``asyncwatch.gate()``. The probes load when the Watch starts; the models (``_*_model``, ``_fit``,
``_recommendation``) when the advice is first evaluated (``advise()``, or the sampler thread
every ``advisor_interval_s``), psutil at the sampler's first sample.

Inside: ``_advisor`` gathers the figures (probes, sampler thread, ``advise()``); the models
decide, as pure functions: ``_pool_model`` (executors' ``max_workers``), ``_limit_model``
(concurrency limits), ``_batch_model`` (batch sizes), ``_loop_model`` (processes), on the
shared ``_recommendation`` and the fits in ``_fit``.
"""

from typing import TYPE_CHECKING, Any

from ._advisor import Advisor
from ._gates import Gate
from ._limits import Concurrency

if TYPE_CHECKING:
    from ._recommendation import Recommendation


def __getattr__(name: str) -> Any:
    # the models (and Recommendation, their result) load when the advice is first evaluated
    if name == "Recommendation":
        from ._recommendation import Recommendation

        return Recommendation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Advisor", "Concurrency", "Gate", "Recommendation"]
